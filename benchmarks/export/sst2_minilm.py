"""dsee-export on the MiniLM SST-2 checkpoints of the tuning and pruning benchmarks, fp32 and int8, each with
--validate-data on SST-2's test split: ONNX predictions against PyTorch's, and int8 accuracy against fp32.

    python benchmarks/export/sst2_minilm.py [--runs runs] [--data ../shared/data/sst2/test.tsv]

Expects the checkpoints that benchmarks/tuning/sst2_minilm.py and benchmarks/pruning/sst2_minilm.py write
(runs/bench-tune/{dsee,full}, runs/bench-prune/{u50,s50}); writes sst2_minilm.{json,md} here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKPOINTS = {
    "full fine-tuning (dense)": "bench-tune/full",
    "DSEE, unpruned": "bench-tune/dsee",
    "DSEE, 50 % unstructured (u50)": "bench-prune/u50",
    "DSEE, 50 % heads + FFN (s50)": "bench-prune/s50",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs")
    p.add_argument("--data", default=str(HERE.parents[2] / "shared" / "data" / "sst2" / "test.tsv"))
    args = p.parse_args()
    import dsee_deploy as dd

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, rel in CHECKPOINTS.items():
            ckpt = Path(args.runs) / rel
            for precision in ("fp32", "int8"):
                out = Path(tmp) / f"{rel.replace('/', '-')}-{precision}"
                quantize = "int8" if precision == "int8" else None
                config = dd.ExportConfig(validate_data=args.data, quantize=quantize)
                call = f"dd.export({str(ckpt)!r}, ENGINE, ExportConfig(validate_data={args.data!r}, quantize={quantize!r}))"
                print(">>>", call, flush=True)
                gate = "passed"
                try:
                    manifest = dd.export(ckpt, out, config)
                except dd.ExportFailed as failed:  # the int8 metric gate (1 point): recorded as measured
                    manifest, gate, out = failed.manifest, "failed", failed.path
                m = manifest.to_dict()
                results = m["validate_data"]["results"]
                rows.append(
                    {
                        "checkpoint": name,
                        "path": str(ckpt),
                        "precision": precision,
                        "command": call,
                        "pytorch_accuracy": results["pytorch"]["metric"],
                        "engine_accuracy": results[f"onnx {precision}"]["metric"],
                        "agreement_with_pytorch": results[f"onnx {precision}"]["agreement_with_pytorch"],
                        "fp32_accuracy": results["onnx fp32"]["metric"],
                        "drop_vs_fp32": m["validate_data"].get("drop", 0.0),
                        "gate": gate,
                        "fused": m["optimization"]["fused"],
                        "parameters": m["parameters"].get("onnx") or rows[-1]["parameters"],
                        "model_mb": (out / "model.onnx").stat().st_size / 1e6,
                        "export_seconds": round(m["export_seconds"], 1) if m["export_seconds"] else None,
                    }
                )
    (HERE / "sst2_minilm.json").write_text(json.dumps({"data": args.data, "rows": rows}, indent=2) + "\n")
    table = markdown(rows)
    (HERE / "sst2_minilm.md").write_text(table)
    print(table)
    return 0


def markdown(rows: list[dict]) -> str:
    lines = [
        "| checkpoint | engine | accuracy | PyTorch | agreement with PyTorch | vs fp32 | parameters | model.onnx | export |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        delta = "" if r["precision"] == "fp32" else f"{0.0 - r['drop_vs_fp32']:+.2f} pt"
        if r.get("gate") == "failed":
            delta += " (fails the 1-point gate: exit 1)"
        lines.append(
            f"| {r['checkpoint']} | {r['precision']} | {r['engine_accuracy']:.2f} % | {r['pytorch_accuracy']:.2f} % "
            f"| {r['agreement_with_pytorch']} | {delta} | {r['parameters']:,} "
            f"| {r['model_mb']:.1f} MB | {r['export_seconds'] or '-'} s |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
