"""How often exported layouts meet their speed targets (issue 41, item 2): each checkpoint pruned to each target
with `dsee-prune --target-speedup T`, exported with `dsee-export` (which measures the engine against a dense one
of its geometry), and the measured speed-up set against the target: met ("at least"), and how far above.

    python benchmarks/latency/targets.py run --checkpoint minilm=RUNS/sst2 --checkpoint bert-base=RUNS/bert \
        --targets 2 3 5 --work /work/speed/round2 --round "aim by the model's own error" --record targets.json
    python benchmarks/latency/targets.py collect --checkpoint ... --work /work/speed --round ... --record ...
    python benchmarks/latency/targets.py report targets.json          # writes targets.md beside it

`run` prunes and exports (both at 1 thread, `--importance wabs`: speed depends on the layout alone, and wabs
needs no data); `collect` reads layouts pruned and exported before (WORK/NAME-Tx and WORK/engines/NAME-Tx).
Each round is recorded under its name with the machine it ran on. Acceptance: every measured speed-up at or
above its target and at most 10 % above it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def layout(work: Path, name: str, target: float) -> tuple[Path, Path]:
    tag = f"{name}-{target:g}x"
    return work / tag, work / "engines" / tag


def one(name: str, checkpoint: str, target: float, work: Path, threads: int) -> dict:
    pruned, engine = layout(work, name, target)
    env = {"HF_HUB_OFFLINE": "1"}
    prune = [str(BIN / "dsee-prune"), checkpoint, "--target-speedup", f"{target:g}", "--importance", "wabs"]
    prune += ["--latency-threads", str(threads), "--output", str(pruned), "--overwrite"]
    export = [str(BIN / "dsee-export"), str(pruned), "--output", str(engine), "--threads", str(threads)]
    lines = []
    for cmd in (prune, export + ["--overwrite"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env={**_environ(), **env})
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        lines += [line for line in (done.stdout + done.stderr).splitlines() if "speed" in line]
    return {**read(name, target, work), "printed": lines}


def _environ() -> dict:
    import os

    return dict(os.environ)


def read(name: str, target: float, work: Path) -> dict:
    pruned, engine = layout(work, name, target)
    record = json.loads((pruned / "pruning.json").read_text())["target"]
    speedup = json.loads((engine / "manifest.json").read_text())["speedup"]
    fp32 = next(e for k, e in speedup["engines"].items() if k.endswith(record["latency_model"]["precision"]))
    return {
        "model": name,
        "target": target,
        "aimed": record.get("aimed_speedup"),
        "checked_engines": record.get("checked_engines", 0),
        "predicted": record["predicted_speedup"],
        "measured": fp32["measured"],
        "measured_range": fp32["range"],
        "dense_ms": fp32["dense_ms"],
        "ms": fp32["ms"],
        "passes": speedup["passes"],
        "confirmed_within": speedup["confirmed_within"],
        "threads": speedup["threads"],
        "precision": record["latency_model"]["precision"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for command in ("run", "collect"):
        c = sub.add_parser(command)
        c.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH")
        c.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0, 5.0])
        c.add_argument("--work", type=Path, required=True)
        c.add_argument("--round", required=True, help="What this round measures (its name in the record).")
        c.add_argument("--threads", type=int, default=1)
        c.add_argument("--record", default="targets.json", help="JSON record (relative: beside this script).")
    r = sub.add_parser("report")
    r.add_argument("record")
    a = p.parse_args()
    if a.command == "report":
        return report(Path(a.record) if Path(a.record).is_absolute() else HERE / a.record)
    from dsee_deploy.speed.machine import machine, versions

    rows = []
    for spec in a.checkpoint:
        name, _, path = spec.partition("=")
        for target in a.targets:
            row = (
                one(name, path, target, a.work, a.threads)
                if a.command == "run"
                else read(name, target, a.work)
            )
            print(json.dumps({k: v for k, v in row.items() if k != "printed"}), flush=True)
            rows.append(row)
    path = Path(a.record) if Path(a.record).is_absolute() else HERE / a.record
    results = json.loads(path.read_text()) if path.is_file() else {"rounds": {}}
    results["rounds"][a.round] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), **versions()},
        "layouts": rows,
    }
    path.write_text(json.dumps(results, indent=1))
    return 0


def report(path: Path) -> int:
    results = json.loads(path.read_text())
    lines = ["# Speed targets against measured engines (issue 41, item 2)", ""]
    for name, rnd in results["rounds"].items():
        m = rnd["machine"]
        rows = rnd["layouts"]
        met = sum(r["measured"] >= r["target"] for r in rows)
        within = sum(r["target"] <= r["measured"] <= 1.1 * r["target"] for r in rows)
        lines += [
            f"## {name}",
            "",
            f"{rnd['date']}, {m['processor']} ({', '.join(m['cpu_flags'])}), {m['cpu_count']} cores, onnxruntime "
            f"{m['onnxruntime']}. Met: {met} of {len(rows)}; met and at most 10 % above: {within} of {len(rows)}.",
            "",
            "| model | precision | target | aimed (engines checked) | predicted | measured (range over passes) | "
            "measured / target | dense -> engine |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            lo, hi = r["measured_range"]
            lines.append(
                f"| {r['model']} | {r['precision']} | {r['target']:g}x | {r['aimed']:.2f}x ({r['checked_engines']}) | "
                f"{r['predicted']:.2f}x | {r['measured']:.2f}x ({lo:.2f}-{hi:.2f}) | "
                f"{r['measured'] / r['target']:.3f} | {r['dense_ms']:.1f} -> {r['ms']:.1f} ms |"
            )
        lines.append("")
    path.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
