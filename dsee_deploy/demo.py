"""`make demo`: the main job, end to end, on the embedded default model (the packaged all-MiniLM-L6-v2).

    python -m dsee_deploy.demo                        # the sample sentences shipped with the package
    python -m dsee_deploy.demo --data ../shared/data/sst2   # any GLUE-style folder: train.tsv, dev.tsv[, test.tsv]

Calls the library's verbs as a user's script would (dsee_deploy.tune, .export, .bench): tunes with DSEE, then
prunes half of the attention heads and FFN neurons and re-tunes (distilling from the unpruned model), reports
what was pruned, loads both checkpoints merged, checks merged against unmerged outputs, exports the pruned model
to a validated ONNX engine, classifies a few new sentences with it, and benchmarks the pruned engines (fp32,
int8) against the dense one.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import dsee_deploy as dd

from . import SAMPLES
from .errors import DSEEError
from .export.summary import summarize
from .serve import Engine

NEW_SENTENCES = [
    "a gripping, beautifully acted story",
    "dull and far too long",
    "i loved every minute of it",
    "the jokes fall flat and the plot goes nowhere",
]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def shown(config) -> str:
    """A config as it would be written: only the fields that differ from the defaults."""
    changed = [
        f"{f.name}={getattr(config, f.name)!r}"
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != type(config).__dataclass_fields__[f.name].default
        and (f.default_factory is dataclasses.MISSING or getattr(config, f.name) != f.default_factory())
    ]
    return f"{type(config).__name__}({', '.join(changed)})"


def main(argv: list[str] | None = None) -> int:
    try:
        return demo(argv)
    except DSEEError as exc:  # bad input, as the CLIs print it
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)


def demo(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", help="A GLUE-style folder with train.tsv and dev.tsv (test.tsv is reported if present)."
    )
    p.add_argument(
        "--output", default="demo-runs", help="Where the demo writes (its own folder, replaced each run)."
    )
    a = p.parse_args(argv)
    root = Path(a.output)
    train, files, config, source = _training_data(a.data)
    started = time.perf_counter()
    tuned = _tune(root, train, files, config, source)
    pruned = _prune(root, train, files, config, tuned)
    merged, logits = _load_merged(tuned, pruned)

    engine_dir = root / "engine"
    step("4. dd.export: the pruned checkpoint as an ONNX Runtime engine, validated against PyTorch")
    print(f">>> dd.export({str(pruned.path)!r}, {str(engine_dir)!r}, overwrite=True)", flush=True)
    print(summarize(dd.export(pruned.path, engine_dir, overwrite=True), engine_dir))

    _classify(engine_dir, merged, logits)
    engines = _bench(root, tuned, pruned, engine_dir, a.data)
    print(
        f"\ndemo finished in {time.perf_counter() - started:.0f} s; checkpoints in {tuned.path}/ and "
        f"{pruned.path}/, engines in {engine_dir}/ and {engines}/, benchmark in {root / 'bench'}/ (the full one: "
        f"dsee-bench --suite benchmarks/suites/bert-base-geometry.toml)"
    )
    return 0


def _training_data(data_dir: str | None):
    """(training file, {"eval": dev file[, "test": test file]}, TuneConfig, a line saying what it is): the
    GLUE-style folder `data_dir`, else the sample sentences shipped with the package."""
    if not data_dir:
        train, files = str(SAMPLES / "train.tsv"), {"eval": str(SAMPLES / "dev.tsv")}
        config = dd.TuneConfig(batch_size=16, max_length=32, epochs=3)
        return train, files, config, "the 360 sample sentences shipped with dsee-deploy (288 train, 72 dev)"
    data = Path(data_dir)
    if not (data / "train.tsv").is_file() or not (data / "dev.tsv").is_file():
        raise DSEEError(f"--data '{data}' needs train.tsv and dev.tsv (GLUE layout)")
    train, files = str(data / "train.tsv"), {"eval": str(data / "dev.tsv")}
    if (data / "test.tsv").is_file():
        files["test"] = str(data / "test.tsv")
    config = dd.TuneConfig(max_train_samples=4000, max_eval_samples=1000, max_length=64, epochs=1)
    return train, files, config, f"{data} (first 4,000 training sentences, 1 epoch)"


def _tune(root: Path, train: str, files: dict, config, source: str):
    """Step 1: tune with DSEE; the tuned checkpoint."""
    step(f"1. dd.tune: DSEE (r=16 low-rank + 16 sparse entries on Q and V) on {source}")
    print(f">>> dd.tune({train!r}, {str(root / 'tune')!r}, eval=..., config={shown(config)})", flush=True)
    tuned = dd.tune(train, root / "tune", **files, config=config, dsee=dd.DSEEConfig(), overwrite=True)
    m = tuned.metrics
    print(
        f"trained {m['trainable_parameters']:,} of {m['total_parameters']:,} parameters "
        f"({m['trainable_percent']:.2f} %) in {m['train_wall_time_s']:.0f} s "
        f"({m['train_step_time_s']:.2f} s/step); dev accuracy {100 * m['eval_accuracy']:.1f} %"
        + (f"; test accuracy {100 * m['test_accuracy']:.1f} %" if "test_accuracy" in m else "")
    )
    return tuned


def _prune(root: Path, train: str, files: dict, config, tuned):
    """Step 2: prune half the heads and FFN neurons of `tuned` and re-tune; the pruned checkpoint."""
    from .pipeline.prune import pruning_report  # the 'tune' extra (it imports torch)

    step(
        "2. prune 50 % of the heads and 50 % of the FFN neurons (taylor scores, global), re-tune with distillation"
    )
    prune_config = dd.PruneConfig(heads=0.5, ffn=0.5)
    retune = dataclasses.replace(config, epochs=0, retune_epochs=config.epochs, distill=True)
    print(
        f">>> dd.tune(..., resume={str(tuned.path)!r}, config={shown(retune)}, prune={shown(prune_config)})",
        flush=True,
    )
    pruned = dd.tune(
        train, root / "pruned", **files, resume=tuned.path, config=retune, prune=prune_config, overwrite=True
    )
    print(pruning_report(pruned.path))
    return pruned


def _load_merged(tuned, pruned):
    """Step 3: both checkpoints merged, each checked against its unmerged model on NEW_SENTENCES; the pruned
    merged model and its logits (len(NEW_SENTENCES), labels)."""
    import torch  # the 'tune' extra

    step(
        "3. load_merged: the update merged into the weights, a plain (and for the pruned one, smaller) model"
    )
    for name, ckpt in (("unpruned", tuned.path), ("pruned", pruned.path)):
        merged, tokenizer = dd.load_merged(ckpt)
        unmerged, _, _ = dd.load_dsee(ckpt)
        batch = tokenizer(NEW_SENTENCES, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = merged(**batch).logits
            diff = (logits - unmerged(**batch).logits).abs().max().item()
        params = sum(p.numel() for p in merged.parameters())
        print(
            f"{name}: {type(merged).__name__}, {params:,} parameters; merged vs unmerged logits: max abs "
            f"difference {diff:.2e}"
        )
    return merged, logits


def _classify(engine_dir: Path, merged, logits) -> None:
    """Step 5: the engine on NEW_SENTENCES, its labels against PyTorch's (`logits` of the `merged` model)."""
    step("5. the engine (dsee_deploy.serve.Engine, what dsee-serve runs) on sentences it never saw")
    engine = Engine.load(engine_dir)
    same = 0
    for text, answer, row in zip(NEW_SENTENCES, engine.predict(NEW_SENTENCES), logits, strict=True):
        name = {"0": "negative", "1": "positive"}.get(answer["label"], answer["label"])
        same += answer["label"] == merged.config.id2label[int(row.argmax())]
        print(f"  {name:>8} ({answer['score']:.2f})  {text}")
    print(f"the same labels as PyTorch for {same} of {len(NEW_SENTENCES)}")


def _bench(root: Path, tuned, pruned, engine_dir: Path, data_dir: str | None) -> Path:
    """Step 6: the pruned engines against the dense one, fp32 and int8; the folder of the engines it exported."""
    step("6. dd.bench: the pruned engines against the dense (unpruned) one, fp32 and int8, on this machine")
    engines = root / "engines"
    exports = {
        "dense": (tuned.path, dd.ExportConfig()),
        "dense-int8": (tuned.path, dd.ExportConfig(quantize="int8")),
        "pruned-int8": (pruned.path, dd.ExportConfig(quantize="int8")),
    }
    for name, (ckpt, export_config) in exports.items():
        print(
            f">>> dd.export({str(ckpt)!r}, {str(engines / name)!r}, {shown(export_config)}, overwrite=True)"
        )
        dd.export(ckpt, engines / name, export_config, overwrite=True)
    eval_data = str((Path(data_dir) / "dev.tsv") if data_dir else SAMPLES / "dev.tsv")
    bench_config = dd.BenchConfig(batch_sizes=[1], seq_lens=[64], rounds=5, eval_data=eval_data)
    baselines = [f"dense={engines / 'dense'}", f"dense-int8={engines / 'dense-int8'}"]
    variants = [f"pruned={engine_dir}", f"pruned-int8={engines / 'pruned-int8'}"]
    print(
        f">>> dd.bench({variants}, {baselines}, {shown(bench_config)}, output={str(root / 'bench')!r})",
        flush=True,
    )
    results = dd.bench(variants, baselines, bench_config, output=root / "bench", overwrite=True)
    print((root / "bench" / "report.md").read_text())
    print(
        f"pruned-int8 is {results.speedup('pruned-int8', 'dense'):.2f}x the dense fp32 engine "
        f"({results.speedup('pruned-int8', 'dense-int8'):.2f}x dense int8) at batch 1, sequence 64"
    )
    return engines


if __name__ == "__main__":
    sys.exit(main())
