"""dsee-export: a DSEE checkpoint (or a plain transformers model directory) to a validated engine: ONNX for
ONNX Runtime (fused, optionally int8 or fp16), a TensorRT plan, or a Triton model repository entry."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..export.config import ExportConfig
from . import run_cli
from .flags import add_fields, from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dsee-export",
        description="Merge, shrink and export a DSEE checkpoint (or a plain transformers model) to an engine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "checkpoint",
        help="A dsee-tune / dsee-prune checkpoint, a PEFT LoRA adapter directory, or a transformers model directory.",
    )
    p.add_argument(
        "--output",
        required=True,
        help="Directory for the engine, tokenizer, config and manifest.json; for --format triton, the model "
        "repository (the model goes to OUTPUT/NAME).",
    )
    p.add_argument("--overwrite", action="store_true", help="Replace the output if it exists.")
    p.add_argument(
        "--base-model",
        help="Base model, where the checkpoint's recorded one moved (a PEFT adapter's, offline).",
    )
    add_fields(p, ExportConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: export(argv))


def export(argv: list[str] | None = None) -> int:
    from ..export.formats import FORMATS
    from ..export.summary import summarize
    from ..pipeline.export import export as export_verb

    args = build_parser().parse_args(argv)
    config = from_args(ExportConfig, args)
    manifest = export_verb(
        args.checkpoint, args.output, config, base_model=args.base_model, overwrite=args.overwrite
    )
    print(
        summarize(manifest, FORMATS[config.format].target(Path(args.output), config, Path(args.checkpoint)))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
