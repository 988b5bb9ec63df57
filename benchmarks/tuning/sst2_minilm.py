"""DSEE against full fine-tuning on SST-2 with the packaged all-MiniLM-L6-v2, same data and steps.

    python benchmarks/tuning/sst2_minilm.py [--data ../shared/data/sst2] [--runs runs/bench-tune]

Budget (issue 2): the first 20,000 sentences of train.tsv, 2 epochs, batch 32, max length 64; model selection
on dev.tsv, accuracy reported on test.tsv (the GLUE validation set). Writes results.json and results.md here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def write_markdown(results: dict) -> None:
    rows = [
        "| method | trainable params | % of total | test acc (872) | dev acc | steps | wall time (shared machine) | step time "
        "(idle machine) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("dsee", "full"):
        if name in results:
            r = results[name]
            rows.append(
                f"| {name} | {r['trainable_parameters']:,} | {r['trainable_percent']:.2f} % | "
                f"{100 * r['test_accuracy']:.2f} % | {100 * r['eval_accuracy']:.2f} % | {r['train_steps']} | "
                f"{r['train_wall_time_s'] / 60:.1f} min | {r.get('clean_step_time_s', float('nan')):.3f} s |"
            )
    (HERE / "sst2_minilm.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench-tune"))
    p.add_argument("--max-train-samples", type=int, default=20000)
    p.add_argument(
        "--only", choices=("dsee", "full"), help="Run one variant (results of the other are kept)."
    )
    p.add_argument(
        "--step-time",
        action="store_true",
        help="Only time 60 training steps of each method back to back (run on an idle machine).",
    )
    a = p.parse_args()
    data = Path(a.data)
    if not (data / "train.tsv").is_file():
        print(
            f"SST-2 not found under '{data}': pass --data with train.tsv, dev.tsv and test.tsv",
            file=sys.stderr,
        )
        return 2

    import torch

    import dsee_deploy as dd

    files = {"eval": str(data / "dev.tsv"), "test": str(data / "test.tsv")}
    budget = {"max_train_samples": a.max_train_samples, "epochs": 2, "batch_size": 32, "max_length": 64}
    variants = {"dsee": {}, "full": {"full_finetune": True}}
    out_json = HERE / "sst2_minilm.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    if a.step_time:
        # Same data and batch, 60 steps each, no evaluation: step time without other load on the machine.
        timing = {"max_train_samples": 1920, "max_steps": 60, "batch_size": 32, "max_length": 64}
        for name, extra in variants.items():
            out = Path(a.runs) / f"steptime-{name}"
            ckpt = dd.tune(
                str(data / "train.tsv"), out, config=dd.TuneConfig(**timing, **extra), overwrite=True
            )
            results.setdefault(name, {})["clean_step_time_s"] = ckpt.metrics["train_step_time_s"]
        results["step_time_ratio_full_over_dsee"] = (
            results["full"]["clean_step_time_s"] / results["dsee"]["clean_step_time_s"]
        )
        out_json.write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results)
        return 0
    for name, extra in variants.items():
        if a.only and name != a.only:
            continue
        out = Path(a.runs) / name
        config = dd.TuneConfig(**budget, **extra)
        ckpt = dd.tune(str(data / "train.tsv"), out, **files, config=config, overwrite=True)
        call = f"dd.tune({str(data / 'train.tsv')!r}, {str(out)!r}, eval=..., test=..., config={config})"
        results[name] = {**results.get(name, {}), "command": call, **ckpt.metrics}
    results["machine"] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    out_json.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
