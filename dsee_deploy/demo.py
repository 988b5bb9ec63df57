"""`make demo`: the main job, end to end, on the embedded default model (the packaged all-MiniLM-L6-v2).

    python -m dsee_deploy.demo                        # the sample sentences shipped with the package
    python -m dsee_deploy.demo --data ../shared/data/sst2   # any GLUE-style folder: train.tsv, dev.tsv[, test.tsv]

Runs dsee-tune, then prunes half of the attention heads and FFN neurons and re-tunes (distilling from the
unpruned model), reports what was pruned, loads both checkpoints merged, checks merged against unmerged outputs,
classifies a few new sentences, exports the pruned model to a validated ONNX engine, and benchmarks the pruned
engines (fp32, int8) against the dense one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SAMPLES = Path(__file__).parent / "samples"
NEW_SENTENCES = [
    "a gripping, beautifully acted story",
    "dull and far too long",
    "i loved every minute of it",
    "the jokes fall flat and the plot goes nowhere",
]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", help="A GLUE-style folder with train.tsv and dev.tsv (test.tsv is reported if present)."
    )
    p.add_argument(
        "--output", default="demo-runs", help="Where the demo writes (its own folder, replaced each run)."
    )
    a = p.parse_args(argv)

    from .cli import run_cli
    from .cli.tune import tune

    out = Path(a.output) / "tune"
    if a.data:
        data = Path(a.data)
        if not (data / "train.tsv").is_file() or not (data / "dev.tsv").is_file():
            print(f"error: --data '{data}' needs train.tsv and dev.tsv (GLUE layout)", file=sys.stderr)
            return 2
        args = ["--train", str(data / "train.tsv"), "--eval", str(data / "dev.tsv")]
        args += ["--max-train-samples", "4000", "--max-eval-samples", "1000", "--max-length", "64"]
        if (data / "test.tsv").is_file():
            args += ["--test", str(data / "test.tsv")]
        epochs = "1"
        source = f"{data} (first 4,000 training sentences, 1 epoch)"
    else:
        args = ["--train", str(SAMPLES / "train.tsv"), "--eval", str(SAMPLES / "dev.tsv")]
        args += ["--batch-size", "16", "--max-length", "32"]
        epochs = "3"
        source = "the 360 sample sentences shipped with dsee-deploy (288 train, 72 dev)"

    step(f"1. dsee-tune: DSEE (r=16 low-rank + 16 sparse entries on Q and V) on {source}")
    command = ["--output", str(out), "--overwrite", "--epochs", epochs, *args]
    print("$ dsee-tune " + " ".join(command), flush=True)
    started = time.perf_counter()
    code = run_cli(lambda: tune(command))
    if code:
        return code
    metrics = json.loads((out / "metrics.json").read_text())
    print(
        f"trained {metrics['trainable_parameters']:,} of {metrics['total_parameters']:,} parameters "
        f"({metrics['trainable_percent']:.2f} %) in {metrics['train_wall_time_s']:.0f} s "
        f"({metrics['train_step_time_s']:.2f} s/step); dev accuracy {100 * metrics['eval_accuracy']:.1f} %"
        + (f"; test accuracy {100 * metrics['test_accuracy']:.1f} %" if "test_accuracy" in metrics else "")
    )

    pruned = Path(a.output) / "pruned"
    step(
        "2. prune 50 % of the heads and 50 % of the FFN neurons (taylor scores, global), re-tune with distillation"
    )
    command = [
        "--resume",
        str(out),
        "--output",
        str(pruned),
        "--overwrite",
        "--epochs",
        "0",
        "--prune-heads",
        "0.5",
        "--prune-ffn",
        "0.5",
        "--retune-epochs",
        epochs,
        "--distill",
        *args,
    ]
    print("$ dsee-tune " + " ".join(command), flush=True)
    code = run_cli(lambda: tune(command))
    if code:
        return code
    from .cli.prune import main as prune

    print(f"$ dsee-prune {pruned} --report", flush=True)
    if code := prune([str(pruned), "--report"]):
        return code

    step(
        "3. load_merged: the update merged into the weights, a plain (and for the pruned one, smaller) model"
    )
    import torch

    from . import load_dsee, load_merged

    for name, ckpt in (("unpruned", out), ("pruned", pruned)):
        merged, tokenizer = load_merged(ckpt)
        unmerged, _, _ = load_dsee(ckpt)
        batch = tokenizer(NEW_SENTENCES, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = merged(**batch).logits
            diff = (logits - unmerged(**batch).logits).abs().max().item()
        params = sum(p.numel() for p in merged.parameters())
        print(
            f"{name}: {type(merged).__name__}, {params:,} parameters; merged vs unmerged logits: max abs "
            f"difference {diff:.2e}"
        )

    step("4. the pruned model on sentences it never saw")
    probs = logits.softmax(-1)
    for text, row in zip(NEW_SENTENCES, probs, strict=True):
        label = merged.config.id2label[int(row.argmax())]
        name = {"0": "negative", "1": "positive"}.get(label, label)
        print(f"  {name:>8} ({row.max():.2f})  {text}")

    engine = Path(a.output) / "engine"
    step("5. dsee-export: the pruned checkpoint as an ONNX Runtime engine, validated against PyTorch")
    from .cli.export import main as export

    print(f"$ dsee-export {pruned} --output {engine} --overwrite", flush=True)
    code = export([str(pruned), "--output", str(engine), "--overwrite"])
    if code:
        return code
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(engine / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
    onnx_logits = session.run(None, feeds)[0]
    same = int((onnx_logits.argmax(-1) == logits.argmax(-1).numpy()).sum())
    print(
        f"ONNX Runtime on the {len(NEW_SENTENCES)} sentences: same labels as PyTorch for {same}, max logit "
        f"difference {np.abs(onnx_logits - logits.numpy()).max():.1e}"
    )
    step("6. dsee-bench: the pruned engines against the dense (unpruned) one, fp32 and int8, on this machine")
    engines = Path(a.output) / "engines"
    exports = {
        "dense": [str(out)],
        "dense-int8": [str(out), "--quantize", "int8"],
        "pruned-int8": [str(pruned), "--quantize", "int8"],
    }
    for name, args_ in exports.items():
        print(f"$ dsee-export {' '.join(args_)} --output {engines / name} --overwrite", flush=True)
        if code := export([*args_, "--output", str(engines / name), "--overwrite"]):
            return code
    from .cli.bench import main as bench

    eval_data = str((Path(a.data) / "dev.tsv") if a.data else SAMPLES / "dev.tsv")
    command = [
        "--baseline", f"dense={engines / 'dense'}", "--baseline", f"dense-int8={engines / 'dense-int8'}",
        "--engine", f"pruned={engine}", "--engine", f"pruned-int8={engines / 'pruned-int8'}",
        "--batch-sizes", "1", "--seq-lens", "64", "--rounds", "5",
        "--eval-data", eval_data, "--output", str(Path(a.output) / "bench"), "--overwrite",
    ]  # fmt: skip
    print("$ dsee-bench " + " ".join(command), flush=True)
    if code := bench(command):
        return code
    print(
        f"\ndemo finished in {time.perf_counter() - started:.0f} s; checkpoints in {out}/ and {pruned}/, engines in "
        f"{engine}/ and {engines}/, benchmark in {Path(a.output) / 'bench'}/ (the full one: dsee-bench --suite "
        f"benchmarks/suites/bert-base-geometry.toml)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
