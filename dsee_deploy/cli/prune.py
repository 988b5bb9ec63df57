"""dsee-prune: prune a DSEE checkpoint (heads, FFN neurons, unstructured), or report what was pruned."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import DSEEError, require_extra
from . import run_cli

SCOPES = ("global", "layer")
IMPORTANCE = ("abs", "wabs", "taylor")


def add_prune_arguments(p: argparse.ArgumentParser) -> None:
    """The pruning options, shared by dsee-prune and dsee-tune."""
    g = p.add_argument_group("pruning (DSEE §2)")
    g.add_argument(
        "--prune-heads", type=float, default=0.0, help="Fraction of all attention heads to remove."
    )
    g.add_argument("--prune-ffn", type=float, default=0.0, help="Fraction of all FFN neurons to remove.")
    g.add_argument("--prune-unstructured", type=float, default=0.0, help="Fraction of weights to zero.")
    g.add_argument(
        "--importance",
        choices=IMPORTANCE,
        default="",
        help="Scores: abs (|update|), wabs (|W + update|), taylor (|dL/dgate|, structured only). "
        "Default: taylor for heads/FFN, wabs for unstructured.",
    )
    g.add_argument(
        "--prune-scope",
        choices=SCOPES,
        default="global",
        help="global: one ranking across layers (layers end up different); layer: same ratio per layer.",
    )
    g.add_argument(
        "--prune-modules",
        default="query,key,value,attn_out,ffn_in,ffn_out",
        help="Projections unstructured pruning applies to.",
    )
    g.add_argument(
        "--min-heads", type=int, default=0, help="Heads every layer keeps at least (0: may lose all)."
    )
    g.add_argument("--min-ffn", type=int, default=0, help="FFN neurons every layer keeps at least.")
    g.add_argument(
        "--taylor-samples", type=int, default=512, help="Training examples scored for taylor importance."
    )
    g.add_argument(
        "--flops-seq-len", type=int, default=128, help="Sequence length of the FLOPs in pruning.json."
    )


def prune_config_from(args):
    from ..pruning import PruneConfig

    return PruneConfig(
        heads=args.prune_heads,
        ffn=args.prune_ffn,
        unstructured=args.prune_unstructured,
        importance=args.importance,
        scope=args.prune_scope,
        unstructured_modules=tuple(t for t in args.prune_modules.split(",") if t),
        min_heads=args.min_heads,
        min_ffn=args.min_ffn,
        taylor_samples=args.taylor_samples,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dsee-prune",
        description="Prune a DSEE checkpoint (then re-tune it with dsee-tune --resume), or --report what was pruned.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="A dsee-tune checkpoint directory.")
    p.add_argument("--output", help="Where to write the pruned checkpoint.")
    p.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    p.add_argument(
        "--report", action="store_true", help="Print what was pruned, parameters and FLOPs, and exit."
    )
    p.add_argument(
        "--train", help="Data for taylor importance (default: the data the checkpoint was tuned on)."
    )
    p.add_argument("--batch-size", type=int, default=32, help="Batch size for taylor importance.")
    p.add_argument("--base-model", help="Base model, where the checkpoint's recorded one moved.")
    add_prune_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: prune(argv))


def prune(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ckpt = Path(args.checkpoint)
    if args.report:
        return report(ckpt)
    require_extra("tune", "torch", "transformers", "datasets", "safetensors")
    from ..checkpoint import check_output_dir, prepare_output_dir, read_pruning, save_checkpoint
    from ..data import Task, encode, read_table
    from ..pruning import format_report, load_masks, prune_model
    from ..tuning import DSEEConfig

    config = prune_config_from(args)
    if not config.any:
        raise DSEEError(
            "nothing to prune: pass --prune-heads, --prune-ffn or --prune-unstructured (or --report)"
        )
    if not args.output:
        raise DSEEError("pass --output for the pruned checkpoint (the input checkpoint is never modified)")
    check_output_dir(args.output, args.overwrite)
    from ..checkpoint import MASKS_FILE, load_dsee

    model, tokenizer, info = load_dsee(ckpt, args.base_model)
    previous = read_pruning(ckpt)
    task = Task(**info["task"])
    batches = None
    if config.structured and config.structured_importance() == "taylor":
        source = args.train or info.get("data", {}).get("train")
        if not source or not Path(source).exists():
            raise DSEEError(
                "taylor importance needs training data and the checkpoint's recorded data was not found: pass "
                "--train, or --importance wabs"
            )
        from ..training import importance_batches

        raw = read_table(source, "--train")
        ds = encode(raw.select(range(min(config.taylor_samples, len(raw)))), tokenizer, task, source)
        batches = importance_batches(ds, tokenizer, task.kind, config.taylor_samples, args.batch_size)
    record, masks = prune_model(model, config, batches, previous, seq_len=args.flops_seq_len)
    if previous and previous["unstructured"] and (ckpt / MASKS_FILE).is_file():
        masks = {**load_masks(ckpt / MASKS_FILE), **masks}
    out = prepare_output_dir(args.output, args.overwrite)
    extra = {k: info[k] for k in ("data",) if k in info}
    save_checkpoint(
        out,
        model,
        tokenizer,
        DSEEConfig.from_dict(info["dsee"]),
        task,
        info["base_model"],
        {"pruned_from": str(ckpt)},
        pruning=record,
        masks=masks,
        extra=extra,
    )
    print(format_report(record))
    print(f"saved {out}: re-tune it with dsee-tune --resume {out} --train ... --output ...")
    return 0


def report(ckpt: Path) -> int:
    from ..checkpoint import read_checkpoint_info, read_pruning
    from ..pruning.prune import format_report

    read_checkpoint_info(ckpt)
    record = read_pruning(ckpt)
    if record is None:
        raise DSEEError(
            f"checkpoint '{ckpt}' is not pruned (no pruning.json): prune it with dsee-prune first"
        )
    print(format_report(record))
    metrics_path = ckpt / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        before = metrics.get("before_pruning", {})
        shown = []
        for key in ("eval_accuracy", "test_accuracy", "eval_pearson", "test_pearson", "eval_perplexity"):
            if key in metrics:
                was = f"{before[key]:.4f} before pruning, " if key in before else ""
                shown.append(f"{key.replace('_', ' ')}: {was}{metrics[key]:.4f} now")
        if shown:
            print("; ".join(shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
