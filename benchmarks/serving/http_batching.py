"""dsee-serve on the MiniLM engine: what micro-batching buys at concurrency 32, and what HTTP adds to one request.

    python benchmarks/serving/http_batching.py [--engine engines/sst2-s] [--data ../shared/data/sst2/dev.tsv]

1. Throughput: dsee-serve as a real process with --max-batch-size 32 and with --max-batch-size 1 (both
   --max-wait-ms 5), each sent the same bounded load: --requests requests of one SST-2 text each, from
   --concurrency keep-alive clients. The two settings are interleaved over --rounds rounds (1, 32, then 32, 1,
   ...), each run after a warm-up; the ratio is of the medians.
2. Latency: one client, one request at a time, through HTTP to dsee-serve (--max-batch-size 32 --max-wait-ms 5)
   and straight to Engine.predict in this process, alternating; the overhead is the median of the paired
   differences (and the difference of the medians).
Writes http_batching.json and http_batching.md here. The load client (dsee_deploy.serve.load) runs in this
process and shares the machine's cores with the server: that is part of what is measured. Other processes are
not: each run starts once the machine is idle, the CPU they take during it is recorded, and a run in which they
took more than 5 % is done again (up to --attempts times; the least disturbed one is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from dsee_deploy.serve import Engine, ServeOptions  # noqa: E402
from dsee_deploy.serve.load import Connection, run_load  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default=str(ROOT / "engines" / "sst2-s"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"))
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="ORT intra-op threads of the server.")
    p.add_argument("--latency-requests", type=int, default=400)
    p.add_argument("--attempts", type=int, default=3, help="Tries per run while other processes take CPU.")
    p.add_argument("--out", default=str(HERE / "http_batching"))
    a = p.parse_args()
    if not (Path(a.engine) / "manifest.json").is_file():
        print(
            f"no engine at '{a.engine}': export one with dsee-export (docs/commands/dsee-export.md)",
            file=sys.stderr,
        )
        return 2
    if not Path(a.data).is_file():
        print(f"'{a.data}' not found: pass --data with a .tsv whose first column is text", file=sys.stderr)
        return 2
    texts = read_texts(Path(a.data))
    machine = machine_info(a.threads)
    engine = Engine.load(a.engine, threads=a.threads)
    # dsee-serve's own setting: ORT threads that spin only briefly between runs
    quiet = Engine.load(a.engine, threads=a.threads, spin_us=ServeOptions().spin_us)
    reference_before = engine_reference(engine, texts)

    runs = []
    for r in range(a.rounds):
        for batch in (1, 32) if r % 2 == 0 else (32, 1):
            offset = (r * 2 + (batch == 32)) * 997  # other texts in every run, same mix of lengths
            requests = [
                ("/v1/predict", json.dumps({"inputs": [texts[(offset + i) % len(texts)]]}).encode())
                for i in range(a.requests)
            ]
            best = None
            for attempt in range(a.attempts):  # a run that shared the machine is done again
                wait_until_quiet()
                with served(a.engine, a.threads, batch) as (port, server):
                    run_load("127.0.0.1", port, requests[:300], a.concurrency)  # warm-up
                    before, cpu = scrape(port), CpuMeter(server.pid)
                    replies, wall = run_load("127.0.0.1", port, requests, a.concurrency)
                    foreign = cpu.foreign_share()
                    after = scrape(port)
                run = summarise(batch, r, replies, wall, before, after) | {"foreign_cpu": foreign}
                run["attempt"] = attempt
                print(json.dumps(run), flush=True)
                if best is None or foreign < best["foreign_cpu"]:
                    best = run
                if foreign < QUIET:
                    break
            runs.append(best)

    latency = None
    for attempt in range(a.attempts):
        wait_until_quiet()
        with served(a.engine, a.threads, 32) as (port, server):
            cpu = CpuMeter(server.pid)
            measured = single_request_latency(port, engine, quiet, texts, a.latency_requests)
            measured |= {"foreign_cpu": cpu.foreign_share(), "attempt": attempt}
        print(json.dumps(measured), flush=True)
        if latency is None or measured["foreign_cpu"] < latency["foreign_cpu"]:
            latency = measured
        if measured["foreign_cpu"] < QUIET:
            break
    reference_after = engine_reference(engine, texts)

    throughput = {
        b: statistics.median(x["requests_per_s"] for x in runs if x["max_batch_size"] == b) for b in (1, 32)
    }
    per_round = [
        next(x for x in runs if x["round"] == r and x["max_batch_size"] == 32)["requests_per_s"]
        / next(x for x in runs if x["round"] == r and x["max_batch_size"] == 1)["requests_per_s"]
        for r in range(a.rounds)
    ]
    result = {
        "what": "dsee-serve, one SST-2 text per request, keep-alive clients in the same machine",
        "engine": _shown(a.engine),
        "data": _shown(a.data),
        "requests_per_run": a.requests,
        "concurrency": a.concurrency,
        "max_wait_ms": 5,
        "machine": machine,
        "engine_reference_ms": {"before": reference_before, "after": reference_after},
        "runs": runs,
        "throughput_requests_per_s": {str(k): v for k, v in throughput.items()},
        "batching_speedup": throughput[32] / throughput[1],
        "batching_speedup_per_round": per_round,
        "latency": latency,
    }
    Path(a.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(a.out + ".md").write_text(report(result))
    print(report(result))
    return 0


def _shown(path: str) -> str:
    """A path as the report shows it: relative to the repository where it can be."""
    return os.path.relpath(Path(path).resolve(), ROOT)


def read_texts(path: Path) -> list[str]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row[0].strip() for row in rows[1:] if row and row[0].strip()]


def machine_info(threads: int) -> dict:
    import fastapi
    import onnxruntime
    import tokenizers
    import uvicorn

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "server_threads": threads,
        "load_average_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "tokenizers": tokenizers.__version__,
        "fastapi": fastapi.__version__,
        "uvicorn": uvicorn.__version__,
    }


def engine_reference(engine: Engine, texts: list[str]) -> dict:
    """Engine.predict alone, before and after: a machine that got busier in between shows here."""
    batch = texts[:32]
    for _ in range(3):
        engine.predict(batch)
    single, full = [], []
    for i in range(40):
        t = time.perf_counter()
        engine.predict([texts[i]])
        single.append(time.perf_counter() - t)
    for _ in range(10):
        t = time.perf_counter()
        engine.predict(batch)
        full.append(time.perf_counter() - t)
    return {
        "one_text_p50": statistics.median(single) * 1e3,
        "batch_of_32_p50": statistics.median(full) * 1e3,
        "load_average": os.getloadavg()[0],
    }


@contextlib.contextmanager
def served(engine: str, threads: int, max_batch_size: int):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "dsee_deploy.cli.serve",
        engine,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    cmd += ["--threads", str(threads), "--max-batch-size", str(max_batch_size), "--max-wait-ms", "5"]
    process = subprocess.Popen(cmd)
    try:
        for _ in range(600):
            with contextlib.suppress(OSError), Connection("127.0.0.1", port) as c:
                if c.request("/readyz").status == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError(f"dsee-serve exited with {process.returncode}")
            time.sleep(0.1)
        yield port, process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


# A run is taken as undisturbed when other processes used less than this share of the machine's CPU during it.
QUIET = 0.05
_HZ = os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time that processes other than this one and the server used since creation, as a share of all
    cores over the wall time (Linux /proc): another job on the machine shows here."""

    def __init__(self, server_pid: int):
        self.pids = [os.getpid(), server_pid]
        self.start = (time.perf_counter(), _busy_jiffies(), self._own())

    def _own(self) -> int:
        total = 0
        for pid in self.pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total

    def foreign_share(self) -> float:
        wall, busy, own = self.start
        wall = time.perf_counter() - wall
        foreign = (_busy_jiffies() - busy) - (self._own() - own)
        return max(0.0, foreign / _HZ / (wall * os.cpu_count()))


def _busy_jiffies() -> int:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def wait_until_quiet(limit_s: float = 600) -> None:
    """Wait (up to limit_s) for a second in which other processes use under QUIET of the CPU."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        busy = _busy_jiffies()
        time.sleep(1.0)
        if (_busy_jiffies() - busy) / _HZ / os.cpu_count() < QUIET:
            return
    print(f"the machine stayed busy for {limit_s:.0f} s: measuring anyway", file=sys.stderr)


def scrape(port: int) -> dict[str, float]:
    with Connection("127.0.0.1", port) as c:
        text = c.request("/metrics").body.decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("dsee_batch_size_sum", "dsee_batch_size_count")):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(batch: int, r: int, replies, wall: float, before: dict, after: dict) -> dict:
    seconds = [x.seconds for x in replies]
    runs = after["dsee_batch_size_count"] - before["dsee_batch_size_count"]
    inputs = after["dsee_batch_size_sum"] - before["dsee_batch_size_sum"]
    return {
        "max_batch_size": batch,
        "round": r,
        "requests": len(replies),
        "errors": sum(x.status != 200 for x in replies),
        "wall_s": wall,
        "requests_per_s": len(replies) / wall,
        "latency_ms": {
            q: percentile(seconds, v) * 1e3 for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
        "mean_batch": inputs / runs if runs else 0.0,
        "load_average": os.getloadavg()[0],
    }


def single_request_latency(port: int, engine: Engine, quiet: Engine, texts: list[str], n: int) -> dict:
    """One request at a time: Engine.predict (ORT's default spin, and the short spin of dsee-serve) and HTTP,
    in rotating order."""
    times: dict[str, list[float]] = {"direct": [], "direct_short_spin": [], "http": []}
    with Connection("127.0.0.1", port) as c:

        def call(path: str, text: str, body: bytes) -> float:
            if path == "http":
                reply = c.request("/v1/predict", body)
                assert reply.status == 200, reply.body
                return reply.seconds
            t = time.perf_counter()
            (engine if path == "direct" else quiet).predict([text])
            return time.perf_counter() - t

        paths = list(times)
        for i in range(50 + n):  # the first 50 warm up every path
            text = texts[(i * 7) % len(texts)]
            body = json.dumps({"inputs": [text]}).encode()
            for k in range(3):
                path = paths[(i + k) % 3]
                seconds = call(path, text, body)
                if i >= 50:
                    times[path].append(seconds)
    p50 = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    diffs = [h - d for h, d in zip(times["http"], times["direct"], strict=True)]
    return {
        "requests": n,
        "engine_predict_p50_ms": p50["direct"],
        "engine_predict_short_spin_p50_ms": p50["direct_short_spin"],
        "http_p50_ms": p50["http"],
        "http_p99_ms": percentile(times["http"], 0.99) * 1e3,
        "overhead_p50_ms": p50["http"] - p50["direct"],
        "overhead_paired_median_ms": statistics.median(diffs) * 1e3,
    }


def report(r: dict) -> str:
    m, lat = r["machine"], r["latency"]
    lines = [
        "# dsee-serve: micro-batching and HTTP overhead",
        "",
        f"Engine `{r['engine']}`, one text per request from `{r['data']}`; {r['requests_per_run']} requests per run "
        f"at concurrency {r['concurrency']}, `--max-wait-ms {r['max_wait_ms']}`, server `--threads "
        f"{m['server_threads']}`. Machine: {m['cpu']}, {m['cores']} cores (load client, server and ORT share "
        f"them); Python {m['python']}, onnxruntime {m['onnxruntime']}, tokenizers {m['tokenizers']}, "
        f"fastapi {m['fastapi']}, uvicorn {m['uvicorn']}.",
        "",
        "| run | --max-batch-size | requests/s | p50 ms | p99 ms | inputs per engine run | errors | CPU used by other processes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for x in r["runs"]:
        lines.append(
            f"| {x['round']} | {x['max_batch_size']} | {x['requests_per_s']:.0f} | {x['latency_ms']['p50']:.1f} | "
            f"{x['latency_ms']['p99']:.1f} | {x['mean_batch']:.1f} | {x['errors']} | {x['foreign_cpu']:.1%} |"
        )
    per_round = ", ".join(f"{v:.2f}x" for v in r["batching_speedup_per_round"])
    before, after = r["engine_reference_ms"]["before"], r["engine_reference_ms"]["after"]
    engine_alone = statistics.median([before["one_text_p50"], after["one_text_p50"]])
    engine_batched = statistics.median([before["batch_of_32_p50"], after["batch_of_32_p50"]]) / 32
    lines += [
        "",
        f"**Micro-batching: {r['batching_speedup']:.2f}x** the throughput of `--max-batch-size 1` "
        f"(medians: {r['throughput_requests_per_s']['32']:.0f} against {r['throughput_requests_per_s']['1']:.0f} "
        f"requests/s; per round {per_round}).",
        "",
        f"**HTTP overhead of one request: {lat['overhead_paired_median_ms']:.2f} ms** (median of paired "
        f"differences; {lat['http_p50_ms']:.2f} ms p50 through HTTP against {lat['engine_predict_p50_ms']:.2f} ms "
        f"p50 for `Engine.predict`, {lat['requests']} requests each, alternating; difference of the medians "
        f"{lat['overhead_p50_ms']:.2f} ms; `Engine.predict` loaded as dsee-serve loads it, `spin_us=100`: "
        f"{lat['engine_predict_short_spin_p50_ms']:.2f} ms; other processes took {lat['foreign_cpu']:.1%} of "
        f"the CPU meanwhile).",
        "",
        f"Engine alone before / after (a busier machine shows here): one text {before['one_text_p50']:.2f} / "
        f"{after['one_text_p50']:.2f} ms, 32 texts {before['batch_of_32_p50']:.1f} / "
        f"{after['batch_of_32_p50']:.1f} ms; load average {m['load_average_at_start']:.2f} at the start.",
        "",
        f"What bounds the gain: in a batch of 32 a text costs the engine {engine_batched:.2f} ms, alone "
        f"{engine_alone:.2f} ms ({engine_alone / engine_batched:.2f}x). On this CPU the encoder's work grows with "
        f"the tokens even at batch 1 (ORT's two threads already keep both cores busy on one short text), so "
        f"batching saves what a run costs beyond its tokens and the per-request hand-offs, not the compute; "
        f"at {r['throughput_requests_per_s']['32']:.0f} requests/s the batched server uses the two cores fully.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
