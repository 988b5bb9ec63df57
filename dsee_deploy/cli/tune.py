"""dsee-tune: tune a pre-trained transformer with DSEE (low-rank + sparse update) and save a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import DSEEError, require_extra
from . import run_cli
from .prune import add_prune_arguments, prune_config_from


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
    io.add_argument(
        "--resume",
        help="Continue from a dsee-tune / dsee-prune checkpoint (its model, DSEE config, pruning).",
    )
    io.add_argument("--base-model", help="With --resume: the base model, where the recorded one moved.")
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

    add_prune_arguments(p)
    rt = p.add_argument_group("re-tuning after pruning")
    rt.add_argument("--retune-epochs", type=float, help="Epochs of tuning after pruning (default: --epochs).")
    rt.add_argument(
        "--distill", action="store_true", help="Re-tune with distillation from the unpruned model."
    )
    rt.add_argument("--distill-alpha", type=float, default=0.5, help="Weight of the distillation loss.")
    rt.add_argument(
        "--distill-temperature", type=float, default=2.0, help="Softmax temperature for distillation."
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
    from ..checkpoint import check_output_dir
    from ..training import TrainOptions

    started = time.perf_counter()
    prune_config = prune_config_from(args)
    if args.distill and not prune_config.any:
        raise DSEEError("--distill recovers accuracy after pruning: pass a --prune-* ratio with it")
    if args.full_finetune and (prune_config.any or args.resume):
        raise DSEEError(
            "--full-finetune trains the dense baseline: it does not combine with pruning or --resume"
        )
    if args.max_length < 8:
        raise DSEEError(f"--max-length {args.max_length} is too short: pass at least 8")
    # Check everything cheap before anything slow: options, the output, the model's architecture, the data.
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
    check_output_dir(args.output, args.overwrite)
    run = _resume(args) if args.resume else _start(args)
    return _train_prune_save(args, run, opts, prune_config, started)


@dataclass
class Run:
    """What a tuning run carries from step to step."""

    model: Any
    tokenizer: Any
    task: Any  # data.Task
    dsee: Any  # tuning.DSEEConfig
    base: dict  # base model reference and sha256
    pruning: dict | None  # pruning.json record, when pruned
    masks: dict | None  # unstructured masks, when pruned that way
    encode_all: Callable  # tokenizer -> (train, eval, test) datasets
    source: str  # where the model came from, for the summary line
    trainer: Any = None  # the last Trainer, which also evaluates


def _datasets(args, task_kind: str | None, fixed_task=None):
    from ..data import Task, encode, infer_kind, label_names_of, read_table, resolve_columns

    kind = task_kind or args.task
    if kind == "auto" and Path(args.train).suffix.lower() == ".txt":
        kind = "causal-lm"
    train_raw = read_table(args.train, "--train", "train")
    eval_raw = read_table(args.eval, "--eval", "validation") if args.eval else None
    test_raw = read_table(args.test, "--test", "test") if args.test else None
    if args.max_train_samples:
        train_raw = train_raw.select(range(min(args.max_train_samples, len(train_raw))))
    if eval_raw is not None and args.max_eval_samples:
        eval_raw = eval_raw.select(range(min(args.max_eval_samples, len(eval_raw))))
    if fixed_task is not None:
        task = fixed_task
    elif kind == "causal-lm":
        task = Task(kind=kind, text_column=args.text_column, max_length=args.max_length)
    else:
        text, pair, label = resolve_columns(
            train_raw, args.train, args.text_column, args.text_pair_column, args.label_column
        )
        kind = infer_kind(train_raw, label) if kind == "auto" else kind
        names = label_names_of(train_raw, label) if kind == "classification" else []
        task = Task(kind, text, pair, label, names, args.max_length)
    return task, lambda tok: tuple(
        encode(raw, tok, task, src) if raw is not None else None
        for raw, src in ((train_raw, args.train), (eval_raw, args.eval), (test_raw, args.test))
    )


def _start(args) -> Run:
    from ..architectures import get_spec
    from ..models import base_weights_sha256, load_config, load_model, load_tokenizer, resolve_model
    from ..tuning import DSEEConfig, inject_dsee, train_head

    dsee = DSEEConfig(
        rank=args.rank,
        alpha=args.alpha,
        num_sparse=args.num_sparse,
        sparse_init=args.sparse_init,
        target_modules=tuple(t.strip() for t in args.target_modules.split(",") if t.strip()),
        seed=args.seed,
    )
    model_path = resolve_model(args.model)
    spec = get_spec(load_config(model_path).model_type)
    for target in dsee.target_modules:
        spec.site(target)  # unknown target names fail before the model loads
    task, encode_all = _datasets(args, None)
    config = load_config(model_path, task)
    tokenizer = load_tokenizer(model_path)
    model, loading = load_model(model_path, config, task)
    # A local base is recorded by absolute path so that the checkpoint loads from any working directory.
    base_ref = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    base = {"name_or_path": base_ref, "sha256": base_weights_sha256(model, loading["missing_keys"])}
    if not args.full_finetune:
        inject_dsee(model, dsee, spec)
        train_head(model, loading["missing_keys"])
    return Run(
        model=model,
        tokenizer=tokenizer,
        task=task,
        dsee=dsee,
        base=base,
        pruning=None,
        masks=None,
        encode_all=encode_all,
        source=args.model,
    )


def _resume(args) -> Run:
    from ..checkpoint import MASKS_FILE, load_dsee
    from ..data import Task
    from ..pruning import load_masks
    from ..tuning import DSEEConfig

    model, tokenizer, info = load_dsee(args.resume, args.base_model)
    task = Task(**info["task"])
    trainable = set(info["trainable"])
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    task, encode_all = _datasets(args, task.kind, fixed_task=task)
    masks = load_masks(Path(args.resume) / MASKS_FILE) if (Path(args.resume) / MASKS_FILE).is_file() else None
    return Run(
        model=model,
        tokenizer=tokenizer,
        task=task,
        dsee=DSEEConfig.from_dict(info["dsee"]),
        base=info["base_model"],
        pruning=info["pruning"],
        masks=masks,
        encode_all=encode_all,
        source=args.resume,
    )


def _train_prune_save(args, run: Run, opts, prune_config, started: float) -> int:
    import copy

    from ..checkpoint import METRICS_FILE, prepare_output_dir, save_checkpoint
    from ..pruning import format_report, prune_model
    from ..training import METRICS, add_perplexity, build_trainer, finish, importance_batches
    from ..tuning import count_parameters

    model, task = run.model, run.task
    trainable, total = count_parameters(model)
    print(
        f"{'full fine-tuning' if args.full_finetune else 'DSEE'}: {model.config.model_type} from {run.source}, "
        f"{task.kind}{f' with labels {task.label_names}' if task.label_names else ''}; "
        f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f} %)",
        file=sys.stderr,
    )
    train_ds, eval_ds, test_ds = run.encode_all(run.tokenizer)
    out = prepare_output_dir(args.output, args.overwrite)
    work = out / "trainer"
    metrics: dict = {"method": "full" if args.full_finetune else "dsee"}
    steps = wall = 0.0

    def train_round(epochs: float, teacher=None) -> None:
        nonlocal steps, wall
        round_opts = replace(opts, epochs=epochs)
        trainer = build_trainer(
            model,
            run.tokenizer,
            train_ds,
            eval_ds,
            task.kind,
            round_opts,
            work,
            teacher,
            args.distill_alpha,
            args.distill_temperature,
        )
        result = trainer.train()
        steps += result.global_step
        wall += result.metrics["train_runtime"]
        run.trainer = trainer

    def evaluate(prefix: str, ds) -> dict:
        if run.trainer is None:  # nothing trained (e.g. --epochs 0 and no re-tuning): evaluate as it is
            run.trainer = build_trainer(model, run.tokenizer, train_ds, eval_ds, task.kind, opts, work)
        scores = run.trainer.evaluate(ds, metric_key_prefix=prefix)
        return add_perplexity(scores) if task.kind == "causal-lm" else scores

    if opts.epochs > 0:  # --epochs 0: straight to pruning (e.g. with --resume of a tuned checkpoint)
        train_round(opts.epochs)
    if prune_config.any:
        if eval_ds is not None:
            metrics["before_pruning"] = {
                k: v for k, v in evaluate("eval", eval_ds).items() if k.startswith("eval_")
            }
            if test_ds is not None:
                metrics["before_pruning"].update(evaluate("test", test_ds))
        teacher = copy.deepcopy(model) if args.distill else None
        batches = None
        if prune_config.structured and prune_config.structured_importance() == "taylor":
            batches = importance_batches(
                train_ds, run.tokenizer, task.kind, prune_config.taylor_samples, opts.batch_size
            )
        run.pruning, new_masks = prune_model(
            model, prune_config, batches, run.pruning, seq_len=args.flops_seq_len
        )
        run.masks = {**(run.masks or {}), **new_masks} or None
        print(format_report(run.pruning), file=sys.stderr)
        if test_ds is not None:  # what re-tuning has to recover
            metrics["after_pruning"] = {
                k: v for k, v in evaluate("test", test_ds).items() if k.startswith("test_")
            }
        retune = args.retune_epochs if args.retune_epochs is not None else opts.epochs
        if retune > 0:
            train_round(retune, teacher)
        metrics["pruning"] = {
            "flops_ratio": run.pruning["flops"]["encoder_ratio"],
            **run.pruning["parameters"],
        }
    trainable, total = count_parameters(model)
    metrics.update(
        {
            "trainable_parameters": trainable,
            "total_parameters": total,
            "trainable_percent": 100 * trainable / total,
            "train_examples": len(train_ds),
            "train_steps": int(steps),
            "train_wall_time_s": wall,
            "train_step_time_s": wall / max(steps, 1),
            "learning_rate": opts.lr,
            "epochs": opts.epochs,
            "batch_size": opts.batch_size,
            "max_length": task.max_length,
        }
    )
    for prefix, ds in (("eval", eval_ds), ("test", test_ds)):
        if ds is not None:
            metrics.update(evaluate(prefix, ds))
    finish(work)
    model.eval()
    metrics["total_wall_time_s"] = time.perf_counter() - started
    if args.full_finetune:
        model.save_pretrained(out)
        run.tokenizer.save_pretrained(out)
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    else:  # save_checkpoint writes metrics.json with the rest
        data = {
            k: str(Path(v).resolve())
            for k, v in (("train", args.train), ("eval", args.eval))
            if v and Path(v).exists()
        }
        save_checkpoint(
            out,
            model,
            run.tokenizer,
            run.dsee,
            task,
            run.base,
            metrics,
            pruning=run.pruning,
            masks=run.masks,
            extra={"data": data},
        )
    shown = [
        f"{split} {name} {metrics[f'{split}_{name}']:.4f}"
        for split in ("eval", "test")
        for name in METRICS[task.kind]
        if f"{split}_{name}" in metrics
    ]
    print(
        f"saved {out}: {', '.join(shown) or 'no evaluation data given'}; {int(steps)} steps in {wall:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
