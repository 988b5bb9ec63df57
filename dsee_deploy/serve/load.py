"""A small HTTP/1.1 client for measuring dsee-serve: bounded load at a fixed concurrency, and single requests.

Raw keep-alive connections (asyncio streams, or a blocking socket), so that the client spends ~50 us of CPU
per request: on a 2-core machine a heavier client (httpx, requests) would take the CPU it is measuring.
It speaks just enough HTTP for dsee-serve's answers (Content-Length bodies) and is meant for loopback tests.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    body: bytes
    seconds: float  # from sending the request to reading the whole answer


def encode_request(host: str, path: str, body: bytes | None = None) -> bytes:
    method = "GET" if body is None else "POST"
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (body or b"")


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, content length, whether the server closes the connection) of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    headers = {k.strip().lower(): v.strip().lower() for k, v in headers.items()}
    if "content-length" not in headers:
        raise ValueError("the answer has no Content-Length: this client reads only sized bodies")
    return status, int(headers["content-length"]), headers.get("connection") == "close"


async def send_all(
    host: str,
    port: int,
    requests: Sequence[tuple[str, bytes | None]],
    concurrency: int,
    timeout: float = 60.0,
) -> tuple[list[Reply], float]:
    """Send every (path, body) in `requests` over `concurrency` keep-alive connections, each taking the next
    request as soon as it has its answer. Returns the replies in request order and the wall time."""
    wire = [encode_request(host, path, body) for path, body in requests]
    replies: list[Reply | None] = [None] * len(wire)
    next_index = iter(range(len(wire)))

    async def client() -> None:
        reader = writer = None
        try:
            for i in next_index:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                started = time.perf_counter()
                writer.write(wire[i])
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                status, length, close = _parse_head(head)
                body = await asyncio.wait_for(reader.readexactly(length), timeout)
                replies[i] = Reply(status, body, time.perf_counter() - started)
                if close:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(concurrency, len(wire)))))
    return replies, time.perf_counter() - started


def run_load(
    host: str,
    port: int,
    requests: Sequence[tuple[str, bytes | None]],
    concurrency: int,
    timeout: float = 60.0,
) -> tuple[list[Reply], float]:
    """send_all from synchronous code."""
    return asyncio.run(send_all(host, port, requests, concurrency, timeout))


class Connection:
    """One blocking keep-alive connection, for timing single requests."""

    def __init__(self, host: str, port: int, timeout: float = 30.0):
        self.host = host
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def request(self, path: str, body: bytes | None = None) -> Reply:
        started = time.perf_counter()
        self.sock.sendall(encode_request(self.host, path, body))
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status, length, _ = _parse_head(head)
        while len(self.buffer) < length:
            self._read()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(status, body, time.perf_counter() - started)

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
