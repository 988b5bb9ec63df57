"""DSEE pruning on SST-2 with the packaged all-MiniLM-L6-v2: accuracy, parameters, FLOPs and wall time.

    python benchmarks/pruning/sst2_minilm.py [--from runs/bench-tune/dsee] [--data ../shared/data/sst2]

Starts from the unpruned DSEE checkpoint of benchmarks/tuning/sst2_minilm.py (same budget: the first 20,000
sentences of train.tsv, max length 64), prunes it and re-tunes A, B and S for 2 epochs:
  u50   unstructured 50 % over every linear layer of the encoder, global, wabs scores
  s50   50 % of all heads and 50 % of all FFN neurons, global (non-uniform), taylor scores, distillation
Accuracy on test.tsv (the GLUE validation set); writes sst2_minilm.json and sst2_minilm.md here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# (PruneConfig fields, distill): what each variant prunes, and whether the re-tune distils from the unpruned model.
VARIANTS = {
    "u50": ({"unstructured": 0.5, "importance": "wabs"}, False),
    "s50": ({"heads": 0.5, "ffn": 0.5, "importance": "taylor"}, True),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="start", default=str(ROOT / "runs" / "bench-tune" / "dsee"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench-prune"))
    p.add_argument("--only", choices=sorted(VARIANTS))
    a = p.parse_args()
    data, start = Path(a.data), Path(a.start)
    if not (data / "train.tsv").is_file():
        print(f"SST-2 not found under '{data}': pass --data", file=sys.stderr)
        return 2
    if not (start / "dsee_config.json").is_file():
        print(f"no DSEE checkpoint at '{start}': run benchmarks/tuning/sst2_minilm.py first", file=sys.stderr)
        return 2
    import dsee_deploy as dd

    out_json = HERE / "sst2_minilm.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    unpruned = json.loads((start / "metrics.json").read_text())
    results["unpruned"] = {
        "checkpoint": str(start),
        "test_accuracy": unpruned["test_accuracy"],
        "eval_accuracy": unpruned["eval_accuracy"],
    }
    files = {"eval": str(data / "dev.tsv"), "test": str(data / "test.tsv")}
    for name, (fields, distill) in VARIANTS.items():
        if a.only and name != a.only:
            continue
        out = Path(a.runs) / name
        config = dd.TuneConfig(
            max_train_samples=20000, epochs=0, retune_epochs=2, batch_size=32, distill=distill
        )
        prune = dd.PruneConfig(**fields)
        dd.tune(
            str(data / "train.tsv"), out, **files, resume=start, config=config, prune=prune, overwrite=True
        )
        command = f"dd.tune(..., resume={str(start)!r}, config={config}, prune={prune})"
        metrics = json.loads((out / "metrics.json").read_text())
        record = json.loads((out / "pruning.json").read_text())
        results[name] = {
            "command": command,
            "test_accuracy": metrics["test_accuracy"],
            "eval_accuracy": metrics["eval_accuracy"],
            "test_accuracy_before_pruning": metrics["before_pruning"].get("test_accuracy"),
            "test_accuracy_after_pruning_before_retuning": metrics.get("after_pruning", {}).get(
                "test_accuracy"
            ),
            "delta_vs_unpruned_points": 100 * (metrics["test_accuracy"] - unpruned["test_accuracy"]),
            "encoder_params_dense": record["parameters"]["encoder_dense"],
            "encoder_params_pruned": record["parameters"]["encoder_pruned"],
            "encoder_params_nonzero": record["parameters"]["encoder_nonzero"],
            "encoder_flops_ratio_seq128": record["flops"]["encoder_ratio"],
            "heads_per_layer": [len(e["kept_heads"]) for e in record["layers"]],
            "ffn_per_layer": [len(e["kept_ffn"]) for e in record["layers"]],
            "retune_steps": metrics["train_steps"],
            "retune_wall_time_s": metrics["train_wall_time_s"],
        }
        out_json.write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        "| variant | test acc | vs unpruned | encoder params (non-zero) | encoder FLOPs @128 | heads / layer | "
        "FFN / layer | re-tune time |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
        f"| unpruned DSEE | {100 * results['unpruned']['test_accuracy']:.2f} % | | | 100 % | 12 x 6 | 1536 x 6 | |",
    ]
    for name in VARIANTS:
        if name in results:
            r = results[name]
            rows.append(
                f"| {name} | {100 * r['test_accuracy']:.2f} % | {r['delta_vs_unpruned_points']:+.2f} pt | "
                f"{r['encoder_params_nonzero'] / r['encoder_params_dense']:.1%} | {r['encoder_flops_ratio_seq128']:.1%} | "
                f"{r['heads_per_layer']} | {r['ffn_per_layer']} | {r['retune_wall_time_s'] / 60:.1f} min |"
            )
    (HERE / "sst2_minilm.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
