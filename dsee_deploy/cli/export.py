"""dsee-export: a DSEE checkpoint (or a plain transformers model directory) to a validated ONNX engine.

This version writes ONNX for CPU (model.onnx), validated against PyTorch, with a manifest. Graph optimization,
int8, TensorRT and Triton are not in it yet.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

from ..errors import DSEEError, require_extra
from . import run_cli

FORMATS = ("onnx",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dsee-export",
        description="Merge, shrink and export a DSEE checkpoint (or a plain transformers model) to ONNX.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "checkpoint", help="A dsee-tune / dsee-prune checkpoint, or a transformers model directory."
    )
    p.add_argument(
        "--output", required=True, help="Directory for model.onnx, tokenizer, config and manifest.json."
    )
    p.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    p.add_argument("--format", default="onnx", help=f"Engine format; this version: {', '.join(FORMATS)}.")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17).")
    p.add_argument(
        "--atol", type=float, default=1e-4, help="Largest absolute difference accepted in validation."
    )
    p.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Apply ONNX Runtime's transformer fusions (validated afterwards like the plain graph).",
    )
    p.add_argument(
        "--no-validate", action="store_true", help="Skip the check against PyTorch (not recommended)."
    )
    p.add_argument("--base-model", help="Base model, where the checkpoint's recorded one moved.")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: export(argv))


def export(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.format not in FORMATS:
        raise DSEEError(
            f"--format '{args.format}' is not supported by this version: use {', '.join(FORMATS)}"
        )
    if args.opset < 17:
        raise DSEEError(f"--opset {args.opset} is too old: pass 17 or newer")
    require_extra("export", "onnx", "optimum.exporters.onnx")
    require_extra("tune", "torch", "transformers", "safetensors")
    from ..checkpoint import CONFIG_FILE, check_output_dir, prepare_output_dir, read_pruning
    from ..export import ValidationError, export_onnx, validate_onnx

    src = Path(args.checkpoint)
    if not (src / "config.json").is_file():
        raise DSEEError(
            f"'{src}' is neither a dsee-tune checkpoint nor a transformers model directory (no config.json)"
        )
    check_output_dir(args.output, args.overwrite)
    started = time.perf_counter()
    model, tokenizer, kind, pruning = _load(src, args.base_model, (src / CONFIG_FILE).is_file(), read_pruning)
    out = prepare_output_dir(args.output, args.overwrite)
    path = export_onnx(model, tokenizer, kind, out, args.opset)
    fusion = _optimize(path, model, pruning) if args.optimize else None
    validation = {"skipped": True}
    if not args.no_validate:
        try:
            validation = validate_onnx(model, path, args.atol)
        except ValidationError as exc:
            (out / "manifest.json").write_text(
                json.dumps({"validation": {"passed": False, "error": str(exc)}}, indent=2)
            )
            print(f"error: {exc}", file=sys.stderr)
            return 1
    manifest = _manifest(
        src, model, kind, pruning, path, validation, args.opset, time.perf_counter() - started
    )
    manifest["optimization"] = fusion or {"applied": False}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    worst = max((c["max_abs_diff"] for c in validation.get("checks", [])), default=float("nan"))
    if fusion:
        print(
            f"fused: {', '.join(f'{op} {n}' for op, n in fusion['fused'].items()) or 'nothing'}; {fusion['note']}"
        )
    print(
        f"saved {path}: {manifest['parameters']['onnx']:,} parameters in the graph "
        f"({manifest['parameters']['torch']:,} in the PyTorch model); validation "
        f"{'skipped' if validation.get('skipped') else f'passed, max |diff| {worst:.2e} <= {args.atol:.0e}'}; "
        f"{manifest['export_seconds']:.1f} s"
    )
    return 0


def _optimize(path: Path, model, pruning) -> dict:
    """Fuse the graph and say whether Attention fused in every layer that still has heads."""
    from ..architectures import get_spec
    from ..export.optimize import optimize_for_cpu

    spec = get_spec(model.config.model_type)
    fused = optimize_for_cpu(path, spec.ort_model_type)
    n_layers = len(spec.blocks(model))
    with_heads = sum(1 for e in pruning["layers"] if e["kept_heads"]) if pruning else n_layers
    attention = fused.get("Attention", 0) + fused.get("MultiHeadAttention", 0)
    if attention == with_heads:
        note = f"Attention fused in all {with_heads} layers that keep heads"
    else:
        note = (
            f"Attention fused in {attention} of the {with_heads} layers that keep heads: ONNX Runtime's "
            f"{spec.ort_model_type} fusion did not match the others' subgraph; they run unfused (correct, slower)"
        )
    return {
        "applied": True,
        "ort_model_type": spec.ort_model_type,
        "fused": fused,
        "layers_with_heads": with_heads,
        "note": note,
    }


def _load(src: Path, base_model, is_dsee: bool, read_pruning):
    from ..models import load_tokenizer

    if is_dsee:
        from ..checkpoint import load_merged, read_checkpoint_info

        info = read_checkpoint_info(src)
        model, tokenizer = load_merged(src, base_model)
        return model, tokenizer, info["task"]["kind"], read_pruning(src)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from ..architectures import get_spec

    config = AutoConfig.from_pretrained(src)
    get_spec(config.model_type)
    heads = " ".join(config.architectures or [])
    if "ForSequenceClassification" in heads:
        cls, kind = AutoModelForSequenceClassification, "classification"
    elif "LMHead" in heads or "ForCausalLM" in heads:
        cls, kind = AutoModelForCausalLM, "causal-lm"
    else:
        raise DSEEError(
            f"'{src}' holds a {heads or 'bare'} model: this version exports sequence classification and causal LM "
            f"heads; fine-tune it first (dsee-tune --full-finetune for a dense baseline)"
        )
    try:
        model = cls.from_pretrained(src, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise DSEEError(
            f"could not load '{src}' ({str(exc).splitlines()[0]}): it needs model.safetensors"
        ) from exc
    return model.eval(), load_tokenizer(str(src)), kind, None


def _manifest(src, model, kind, pruning, path: Path, validation, opset, seconds) -> dict:
    import onnx
    import onnxruntime
    import torch

    from ..architectures import get_spec
    from ..export import onnx_parameter_count
    from ..pruning import encoder_flops

    graph = onnx.load(str(path), load_external_data=False).graph
    spec = get_spec(model.config.model_type)
    n_heads, hidden = spec.num_heads(model.config), spec.hidden_size(model.config)
    if pruning:
        layers = [
            {
                "heads": len(e["kept_heads"]),
                "kept_heads": e["kept_heads"],
                "ffn": len(e["kept_ffn"]),
                "sparsity": e.get("sparsity", {}),
            }
            for e in pruning["layers"]
        ]
        flops = pruning["flops"]
    else:
        width = (
            model.config.to_dict().get("intermediate_size")
            or model.config.to_dict().get("hidden_dim")
            or (model.config.to_dict().get("n_inner") or 4 * hidden)
        )
        n_layers = len(spec.blocks(model))
        layers = [{"heads": n_heads, "ffn": width, "sparsity": {}} for _ in range(n_layers)]
        dense = encoder_flops(hidden, hidden // n_heads, [n_heads] * n_layers, [width] * n_layers, 128)
        flops = {"seq_len": 128, "encoder_dense": dense, "encoder_pruned": dense, "encoder_ratio": 1.0}
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.parent.iterdir())
        if p.is_file()
    }
    return {
        "format_version": 1,
        "source": str(src),
        "task": kind,
        "architecture": model.config.model_type,
        "engine": "model.onnx",
        "opset": opset,
        "inputs": [i.name for i in graph.input],
        "outputs": [o.name for o in graph.output],
        "layers": layers,
        "parameters": {
            "torch": sum(p.numel() for p in model.parameters()),
            "onnx": onnx_parameter_count(path),
        },
        "flops": flops,
        "validation": validation,
        "export_seconds": seconds,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "files": files,
    }


if __name__ == "__main__":
    sys.exit(main())
