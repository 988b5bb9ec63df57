"""Options of dsee-serve: dataclass fields with their help text, checked on creation.

The CLI builds its flags from these fields, and the HTTP app and the Ray deployment take them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass
class ServeOptions:
    """How one server (or one Ray replica) batches and what it accepts."""

    max_batch_size: int = field(default=32, metadata={"help": "Most inputs in one engine run."})
    max_wait_ms: float = field(
        default=5.0,
        metadata={
            "help": "Longest a batch waits for more inputs once the engine is free (no wait for a lone client)."
        },
    )
    max_inputs: int = field(default=64, metadata={"help": "Most inputs in one request (413 above)."})
    max_chars: int = field(default=2000, metadata={"help": "Most characters in one text (413 above)."})
    # Within one ORT run the threads meet every few microseconds, so a short spin keeps them hot; between runs
    # a long spin would take the cores the event loop and the clients need. Measured on engines/sst2-s (2 cores):
    # one text 0.97-1.24 ms at 100 us, 1.20-1.25 ms with ORT's default spin, 1.67-2.27 ms with none.
    spin_us: int = field(
        default=100,
        metadata={"help": "How long idle ONNX Runtime threads busy-wait for work, in microseconds."},
    )

    body_timeout_s: float = field(
        default=10.0,
        metadata={
            "flag": "--body-timeout",
            "help": "Longest a client may take to send its request body (408 after): slow clients do not hold "
            "connections.",
        },
    )
    max_connections: int = field(
        default=512,
        metadata={
            "help": "Most requests in progress at once (being read, run or answered); beyond it new ones are "
            "answered 503. Connections that have not sent a whole request head do not count: see "
            "--header-timeout and --max-idle-connections."
        },
    )
    header_timeout_s: float = field(
        default=10.0,
        metadata={
            "flag": "--header-timeout",
            "help": "Longest a connection may take to send a whole request head, from its opening or the end of "
            "its previous response (408 and closed after): half-sent heads do not hold connections.",
        },
    )
    max_header_bytes: int = field(
        default=32 * 1024,
        metadata={"help": "Most bytes in a request head, request line and headers (431 and closed above)."},
    )
    max_idle_connections: int = field(
        default=1024,
        metadata={
            "help": "Most connections waiting for a request head (new, idle or slow) at once; beyond it the "
            "one waiting longest is closed for the new one."
        },
    )

    graceful_timeout_s: float = field(
        default=30.0,
        metadata={"flag": "--graceful-timeout", "help": "Seconds to finish requests in flight on SIGTERM."},
    )
    verify: bool = field(
        default=True,
        metadata={"help": "Check every engine file against the sha256 in its manifest before serving."},
    )

    def __post_init__(self):
        for name in ("body_timeout_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} = {getattr(self, name)}: pass a positive number of seconds")
        for name in (
            "max_batch_size",
            "max_inputs",
            "max_chars",
            "max_connections",
            "max_header_bytes",
            "max_idle_connections",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)}: pass 1 or more")
        if self.spin_us < 0:
            raise ConfigError(f"spin_us = {self.spin_us}: pass 0 or more")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms = {self.max_wait_ms}: pass 0 or more")


@dataclass
class ScaleOptions:
    """Replicas of the engine on Ray Serve: a fixed number, or autoscaling between two bounds."""

    replicas: int | None = field(
        default=None, metadata={"help": "Fixed number of replicas (default 1 unless autoscaling)."}
    )
    min_replicas: int | None = field(default=None, metadata={"help": "Autoscaling: fewest replicas."})
    max_replicas: int | None = field(default=None, metadata={"help": "Autoscaling: most replicas."})
    target_requests: int | None = field(
        default=None,
        metadata={
            "help": "Autoscaling: requests in flight per replica to aim at (default: the max batch size)."
        },
    )
    replica_cpus: float = field(default=1.0, metadata={"help": "CPUs Ray reserves for each replica."})

    def __post_init__(self):
        if self.autoscaling:
            if self.replicas is not None:
                raise ConfigError(
                    "replicas is a fixed count and min/max replicas autoscale: pass --replicas, or "
                    "--min-replicas and --max-replicas, not both"
                )
            if self.bounds[0] < 0 or self.bounds[1] < max(self.bounds[0], 1):
                raise ConfigError(
                    f"min_replicas = {self.min_replicas}, max_replicas = {self.max_replicas}: pass "
                    f"0 <= min <= max, max >= 1"
                )
        elif self.replicas is not None and self.replicas < 1:
            raise ConfigError(f"replicas = {self.replicas}: pass 1 or more")
        if self.replica_cpus <= 0:
            raise ConfigError(f"replica_cpus = {self.replica_cpus}: pass a positive number")

    @property
    def bounds(self) -> tuple[int, int]:
        """(min, max) replicas when autoscaling; an unset bound defaults to 1, or to the other bound."""
        low = 1 if self.min_replicas is None else self.min_replicas
        return low, max(low, 1) if self.max_replicas is None else self.max_replicas

    def describe(self) -> str:
        if self.autoscaling:
            low, high = self.bounds
            return f"{low} to {high} replicas (autoscaling)"
        return f"{self.replicas or 1} replica(s)"

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None
