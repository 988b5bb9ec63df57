"""dsee-tune: tune a pre-trained transformer with DSEE (low-rank + sparse update) and save a checkpoint."""

from __future__ import annotations

import argparse
import sys

from . import run_cli
from .flags import add_fields, from_args


def build_parser() -> argparse.ArgumentParser:
    # Configs are imported here, not at the top: without the 'tune' extra, main() names the extra to install.
    from ..models import DEFAULT_MODEL
    from ..pruning.config import PruneConfig
    from ..tuning.config import DSEEConfig
    from ..tuning.options import TuneConfig

    p = argparse.ArgumentParser(
        prog="dsee-tune",
        description="Tune a pre-trained transformer with DSEE (low-rank + sparse update) and save a checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = p.add_argument_group("inputs and output")
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
        help="Continue from a dsee-tune / dsee-prune checkpoint (its model, DSEE config, task, pruning), or from a "
        "PEFT LoRA adapter directory (as DSEE: --num-sparse entries are added to each update, 0 keeps it a LoRA).",
    )
    io.add_argument("--base-model", help="With --resume: the base model, where the recorded one moved.")
    io.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    add_fields(p, TuneConfig)
    add_fields(p, PruneConfig, title="pruning (DSEE §2)")
    # DSEE's seed is the run's --seed: one seed reproduces a run.
    add_fields(p, DSEEConfig, skip=("seed",), title="DSEE")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: tune(argv))


def tune(argv: list[str] | None = None) -> int:
    from ..errors import require_extra

    require_extra("tune", "torch", "transformers", "datasets", "safetensors")
    from ..pipeline.tune import tune as tune_verb
    from ..pruning.config import PruneConfig
    from ..tuning.config import DSEEConfig
    from ..tuning.options import TuneConfig

    args = build_parser().parse_args(argv)
    config = from_args(TuneConfig, args)
    ckpt = tune_verb(
        args.train,
        args.output,
        eval=args.eval,
        test=args.test,
        model=args.model,
        resume=args.resume,
        base_model=args.base_model,
        config=config,
        dsee=from_args(DSEEConfig, args, skip=("seed",), seed=config.seed),
        prune=from_args(PruneConfig, args),
        overwrite=args.overwrite,
    )
    from ..distributed import is_main

    if not is_main():  # torchrun / accelerate launch: the main process reports the one checkpoint
        return 0
    shown = []
    for key, value in ckpt.scores().items():
        split, name = key.split("_", 1)
        majority = ckpt.metrics.get(f"{split}_majority_{name}")
        shown.append(
            f"{split} {name} {value:.4f}"
            + (f" (majority class {majority:.4f})" if majority is not None else "")
        )
    print(
        f"saved {ckpt.path}: {', '.join(shown) or 'no evaluation data given'}; "
        f"{ckpt.steps} steps in {ckpt.train_seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
