"""dsee-prune: prune a DSEE checkpoint (heads, FFN neurons, unstructured), or report what was pruned."""

from __future__ import annotations

import argparse
import sys

from . import run_cli
from .flags import add_fields, from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dsee-prune",
        description="Prune a DSEE checkpoint (then re-tune it with dsee-tune --resume), or --report what was pruned.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="A dsee-tune checkpoint directory, or a PEFT LoRA adapter directory.")
    p.add_argument("--output", help="Where to write the pruned checkpoint.")
    p.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    p.add_argument(
        "--report", action="store_true", help="Print what was pruned, parameters and FLOPs, and exit."
    )
    p.add_argument(
        "--train", help="Data for taylor importance (default: the data the checkpoint was tuned on)."
    )
    p.add_argument("--batch-size", type=int, default=32, help="Batch size for taylor importance.")
    p.add_argument(
        "--base-model",
        help="Base model, where the checkpoint's recorded one moved (a PEFT adapter's, offline).",
    )
    # Imported here, not at the top: without the 'tune' extra, prune() names the extra to install.
    from ..pruning.config import PruneConfig

    add_fields(p, PruneConfig, title="pruning (DSEE §2)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: prune(argv))


def prune(argv: list[str] | None = None) -> int:
    from ..errors import DSEEError, require_extra

    require_extra("tune", "torch", "transformers", "datasets", "safetensors")
    from ..pipeline.prune import pruning_report
    from ..pruning.config import PruneConfig

    args = build_parser().parse_args(argv)
    if args.report:
        print(pruning_report(args.checkpoint))
        return 0
    from ..pipeline.prune import prune as prune_verb
    from ..pruning.prune import format_report

    config = from_args(PruneConfig, args)
    if config.any and not args.output:
        raise DSEEError("pass --output for the pruned checkpoint (the input checkpoint is never modified)")
    pruned = prune_verb(
        args.checkpoint,
        config,
        args.output or "",
        train=args.train,
        batch_size=args.batch_size,
        base_model=args.base_model,
        overwrite=args.overwrite,
    )
    print(format_report(pruned.pruning))
    print(f"saved {pruned.path}: re-tune it with dsee-tune --resume {pruned.path} --train ... --output ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
