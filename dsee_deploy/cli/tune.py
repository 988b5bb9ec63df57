"""dsee-tune: tune a pre-trained transformer with DSEE (low-rank + sparse update) and save a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import DSEEError, require_extra
from . import run_cli


def build_parser() -> argparse.ArgumentParser:
    from ..architectures import TARGETS
    from ..models import DEFAULT_MODEL

    SPARSE_INITS = ("grebsmo", "magnitude", "random")  # as in tuning.config, which imports torch

    p = argparse.ArgumentParser(
        prog="dsee-tune",
        description="Tune a pre-trained transformer with DSEE (low-rank + sparse update) and save a checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = p.add_argument_group("data and model")
    io.add_argument(
        "--model", default=DEFAULT_MODEL, help="Base model: a directory, a hub id, or the packaged default."
    )
    io.add_argument(
        "--train", required=True, help="Training data: .tsv/.csv/.jsonl/.json (.txt for causal-lm)."
    )
    io.add_argument("--eval", help="Evaluation data, used every epoch to pick the best checkpoint.")
    io.add_argument(
        "--test", help="Held-out data evaluated once at the end (reported, never used to select)."
    )
    io.add_argument("--output", required=True, help="Checkpoint directory to write.")
    io.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    io.add_argument(
        "--task",
        choices=("auto", "classification", "regression", "causal-lm"),
        default="auto",
        help="auto: causal-lm for .txt, regression for non-integer labels, classification otherwise.",
    )
    io.add_argument("--text-column", help="Text column (default: GLUE names such as sentence, sentence1).")
    io.add_argument("--text-pair-column", help="Second text column for sentence pairs.")
    io.add_argument("--label-column", help="Label column (default: label, Quality or score).")
    io.add_argument("--max-length", type=int, default=128, help="Maximum tokens per example.")
    io.add_argument("--max-train-samples", type=int, help="Use only the first N training examples.")
    io.add_argument("--max-eval-samples", type=int, help="Use only the first N evaluation examples.")

    tr = p.add_argument_group("training")
    tr.add_argument("--epochs", type=float, default=2.0)
    tr.add_argument("--max-steps", type=int, default=-1, help="Stop after N steps (overrides --epochs).")
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument(
        "--lr", type=float, help="Peak learning rate (default 1e-3 for DSEE, 5e-5 with --full-finetune)."
    )
    tr.add_argument("--warmup-ratio", type=float, default=0.06)
    tr.add_argument("--weight-decay", type=float, default=0.0)
    tr.add_argument(
        "--metric", default="", help="Metric that picks the best checkpoint (default: the task's)."
    )
    tr.add_argument("--seed", type=int, default=42)
    tr.add_argument(
        "--full-finetune",
        action="store_true",
        help="Train every weight instead (the baseline DSEE is compared with); writes a plain transformers model.",
    )

    ds = p.add_argument_group("DSEE")
    ds.add_argument("--rank", type=int, default=16, help="Rank r of the low-rank update.")
    ds.add_argument("--alpha", type=float, default=32.0, help="Scale numerator (update scaled by alpha / r).")
    ds.add_argument("--num-sparse", type=int, default=16, help="Sparse entries N per targeted matrix.")
    ds.add_argument(
        "--sparse-init", choices=SPARSE_INITS, default="grebsmo", help="How the sparse support is chosen."
    )
    ds.add_argument(
        "--target-modules", default="query,value", help=f"Comma-separated, from: {', '.join(TARGETS)}."
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: tune(argv))


def tune(argv: list[str] | None = None) -> int:
    require_extra("tune", "torch", "transformers", "datasets", "safetensors", "sklearn", "scipy")
    args = build_parser().parse_args(argv)

    from ..checkpoint import METRICS_FILE, check_output_dir, prepare_output_dir, save_checkpoint
    from ..data import Task, encode, infer_kind, label_names_of, read_table, resolve_columns
    from ..models import base_weights_sha256, load_config, load_model, load_tokenizer, resolve_model
    from ..training import METRICS, TrainOptions, add_perplexity, build_trainer, finish
    from ..tuning import DSEEConfig, count_parameters, inject_dsee, train_head

    started = time.perf_counter()
    dsee = DSEEConfig(
        rank=args.rank,
        alpha=args.alpha,
        num_sparse=args.num_sparse,
        sparse_init=args.sparse_init,
        target_modules=tuple(t.strip() for t in args.target_modules.split(",") if t.strip()),
        seed=args.seed,
    )
    opts = TrainOptions(
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr or (5e-5 if args.full_finetune else 1e-3),
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        seed=args.seed,
        metric=args.metric,
    )
    if args.max_length < 8:
        raise DSEEError(f"--max-length {args.max_length} is too short: pass at least 8")
    # Check everything cheap before anything slow: the output, the model's architecture, the data files.
    check_output_dir(args.output, args.overwrite)
    model_path = resolve_model(args.model)
    load_config(model_path)
    from ..architectures import get_spec

    kind = args.task
    if kind == "auto" and Path(args.train).suffix.lower() == ".txt":
        kind = "causal-lm"
    train_raw = read_table(args.train, "--train", "train")
    eval_raw = read_table(args.eval, "--eval", "validation") if args.eval else None
    test_raw = read_table(args.test, "--test", "test") if args.test else None
    if args.max_train_samples:
        train_raw = train_raw.select(range(min(args.max_train_samples, len(train_raw))))
    if eval_raw is not None and args.max_eval_samples:
        eval_raw = eval_raw.select(range(min(args.max_eval_samples, len(eval_raw))))

    if kind == "causal-lm":
        task = Task(kind=kind, text_column=args.text_column, max_length=args.max_length)
    else:
        text, pair, label = resolve_columns(
            train_raw, args.train, args.text_column, args.text_pair_column, args.label_column
        )
        kind = infer_kind(train_raw, label) if kind == "auto" else kind
        names = label_names_of(train_raw, label) if kind == "classification" else []
        task = Task(kind, text, pair, label, names, args.max_length)
    config = load_config(model_path, task)
    spec = get_spec(config.model_type)
    for target in dsee.target_modules:
        spec.site(target)  # unknown target names fail before the model loads

    tokenizer = load_tokenizer(model_path)
    model, loading = load_model(model_path, config, task)
    # A local base is recorded by absolute path so that the checkpoint loads from any working directory.
    base_ref = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    base = {"name_or_path": base_ref, "sha256": base_weights_sha256(model, loading["missing_keys"])}
    if not args.full_finetune:
        inject_dsee(model, dsee, spec)
        train_head(model, loading["missing_keys"])
    trainable, total = count_parameters(model)
    kind_name = "full fine-tuning" if args.full_finetune else "DSEE"
    print(
        f"{kind_name}: {config.model_type} from {args.model}, {task.kind}"
        f"{f' with labels {task.label_names}' if task.label_names else ''}; "
        f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f} %)",
        file=sys.stderr,
    )

    train_ds = encode(train_raw, tokenizer, task, args.train)
    eval_ds = encode(eval_raw, tokenizer, task, args.eval) if eval_raw is not None else None
    test_ds = encode(test_raw, tokenizer, task, args.test) if test_raw is not None else None

    out = prepare_output_dir(args.output, args.overwrite)
    work = out / "trainer"
    trainer = build_trainer(model, tokenizer, train_ds, eval_ds, task.kind, opts, work)
    result = trainer.train()
    metrics = {
        "method": "full" if args.full_finetune else "dsee",
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": 100 * trainable / total,
        "train_examples": len(train_ds),
        "train_steps": result.global_step,
        "train_wall_time_s": result.metrics["train_runtime"],
        "train_step_time_s": result.metrics["train_runtime"] / max(result.global_step, 1),
        "learning_rate": opts.lr,
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "max_length": task.max_length,
    }
    for prefix, ds in (("eval", eval_ds), ("test", test_ds)):
        if ds is not None:
            scores = trainer.evaluate(ds, metric_key_prefix=prefix)
            metrics.update(add_perplexity(scores) if task.kind == "causal-lm" else scores)
    finish(work)
    model.eval()
    if args.full_finetune:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    else:
        save_checkpoint(out, model, tokenizer, dsee, task, base, metrics)
    metrics["total_wall_time_s"] = time.perf_counter() - started
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    shown = [
        f"{split} {name} {metrics[f'{split}_{name}']:.4f}"
        for split in ("eval", "test")
        for name in METRICS[task.kind]
        if f"{split}_{name}" in metrics
    ]
    print(
        f"saved {out}: {', '.join(shown) or 'no evaluation data given'}; {result.global_step} steps in "
        f"{metrics['train_wall_time_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
