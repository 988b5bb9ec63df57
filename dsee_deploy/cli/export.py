"""dsee-export: a DSEE checkpoint (or a plain transformers model directory) to a validated engine: ONNX for
ONNX Runtime (fused, optionally int8 or fp16), a TensorRT plan, or a Triton model repository entry."""

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

FORMATS = ("onnx", "tensorrt", "triton")
TASKS = ("auto", "feature-extraction")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dsee-export",
        description="Merge, shrink and export a DSEE checkpoint (or a plain transformers model) to an engine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "checkpoint", help="A dsee-tune / dsee-prune checkpoint, or a transformers model directory."
    )
    p.add_argument(
        "--output",
        required=True,
        help="Directory for the engine, tokenizer, config and manifest.json; for --format triton, the model "
        "repository (the model goes to OUTPUT/NAME).",
    )
    p.add_argument("--overwrite", action="store_true", help="Replace the output if it exists.")
    p.add_argument("--format", default="onnx", help=f"Engine format: {', '.join(FORMATS)}.")
    p.add_argument(
        "--task",
        default="auto",
        help="'auto': the checkpoint's own task (a bare encoder gives feature extraction); 'feature-extraction': "
        "outputs last_hidden_state and a pooled sentence_embedding.",
    )
    p.add_argument(
        "--pooling",
        choices=("auto", "mean", "cls"),
        default="auto",
        help="Sentence embedding pooling; 'auto' reads a sentence-transformers config, else mean.",
    )
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise the sentence embedding (default: as a sentence-transformers config says, else no).",
    )
    p.add_argument("--quantize", choices=("int8",), help="Dynamic int8 for CPU, applied to the fused graph.")
    p.add_argument("--fp16", action="store_true", help="fp16 weights and compute, for GPU targets.")
    p.add_argument(
        "--validate-data",
        help="A labelled file (.tsv/.csv/.jsonl) of the checkpoint's task: report the task metric and prediction "
        "agreement of PyTorch and each engine.",
    )
    p.add_argument(
        "--max-metric-drop",
        type=float,
        default=1.0,
        help="With --validate-data: fail if int8/fp16 loses more than this many points against fp32.",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17).")
    p.add_argument(
        "--atol", type=float, default=1e-4, help="Largest absolute difference accepted for the fp32 graph."
    )
    p.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Apply ONNX Runtime's transformer fusions (not for --format tensorrt, which fuses on its own).",
    )
    p.add_argument(
        "--skip-layernorm",
        choices=("auto", "fuse", "unfuse"),
        default="auto",
        help="Residual Add + LayerNorm as ONNX Runtime's SkipLayerNormalization ('fuse') or apart ('unfuse', "
        "faster on CPU, where that kernel is scalar); 'auto': fuse for --fp16 (GPU), unfuse otherwise.",
    )
    p.add_argument(
        "--no-validate", action="store_true", help="Skip the check against PyTorch (not recommended)."
    )
    p.add_argument("--base-model", help="Base model, where the checkpoint's recorded one moved.")
    trt = p.add_argument_group("TensorRT (--format tensorrt): one optimization profile for all inputs")
    trt.add_argument("--min-shape", default="1x1", help="Smallest BATCHxSEQ the engine accepts.")
    trt.add_argument("--opt-shape", default="8x128", help="BATCHxSEQ TensorRT tunes its kernels for.")
    trt.add_argument("--max-shape", default="32x512", help="Largest BATCHxSEQ the engine accepts.")
    triton = p.add_argument_group("Triton (--format triton)")
    triton.add_argument(
        "--name", help="Model name in the repository (default: the checkpoint's directory name)."
    )
    triton.add_argument("--max-batch-size", type=int, default=32, help="Triton's max_batch_size.")
    triton.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=500,
        help="Dynamic batching: longest wait for a fuller batch.",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: export(argv))


def export(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shapes = _check_arguments(args)
    require_extra("export", "onnx", "optimum.exporters.onnx")
    require_extra("tune", "torch", "transformers", "safetensors")
    from ..checkpoint import check_output_dir, prepare_output_dir

    src = Path(args.checkpoint)
    if not (src / "config.json").is_file():
        raise DSEEError(
            f"'{src}' is neither a dsee-tune checkpoint nor a transformers model directory (no config.json)"
        )
    target = (
        Path(args.output) / (args.name or src.resolve().name)
        if args.format == "triton"
        else Path(args.output)
    )
    check_output_dir(target, args.overwrite)
    inside = target.resolve()
    if inside == src.resolve() or src.resolve() in inside.parents or inside in src.resolve().parents:
        raise DSEEError(
            f"--output '{target}' is, holds or lies inside the checkpoint '{src}': export to another directory"
        )
    if args.validate_data and not Path(args.validate_data).is_file():
        raise DSEEError(f"--validate-data file '{args.validate_data}' does not exist: check the path")
    started = time.perf_counter()
    loaded = _load(src, args)
    kind = _kind(loaded["task"])
    if args.validate_data and kind not in ("classification", "regression"):
        raise DSEEError(
            f"--validate-data measures classification and regression; this export is {kind}: drop it"
        )
    out = prepare_output_dir(target, args.overwrite)
    try:
        manifest = _export(args, src, loaded, out, shapes)
    except _Failed as failed:
        (out / "manifest.json").write_text(json.dumps(failed.manifest, indent=2) + "\n")
        print(f"error: {failed}", file=sys.stderr)
        return 1
    manifest["export_seconds"] = time.perf_counter() - started
    manifest["files"] = _hashes(out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _summary(manifest, out, args)
    return 0


class _Failed(Exception):
    """Validation failed: the message is printed, the partial manifest saved for inspection."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


def _check_arguments(args) -> dict:
    if args.format not in FORMATS:
        raise DSEEError(f"--format '{args.format}' is not supported: use {', '.join(FORMATS)}")
    if args.task not in TASKS:
        raise DSEEError(f"--task '{args.task}' is not supported: use {', '.join(TASKS)}")
    if args.opset < 17:
        raise DSEEError(f"--opset {args.opset} is too old: pass 17 or newer")
    if args.quantize and args.fp16:
        raise DSEEError("--quantize int8 and --fp16 exclude each other: pick int8 for CPU or fp16 for GPU")
    from ..export.tensorrt import check_profile, parse_shape, require_tensorrt

    shapes = {
        flag: parse_shape(flag, getattr(args, flag[2:].replace("-", "_")))
        for flag in ("--min-shape", "--opt-shape", "--max-shape")
    }
    if args.format == "tensorrt":
        if args.quantize:
            raise DSEEError(
                "--format tensorrt with --quantize int8 needs Q/DQ nodes from calibration, which this version "
                "does not make: use --fp16 for TensorRT, or --format onnx --quantize int8 for CPU"
            )
        check_profile(shapes)
        require_tensorrt()
    return shapes


def _load(src: Path, args) -> dict:
    """The model as tuned (merged, shrunk, in fp32), its tokenizer, task and pruning record."""
    from ..checkpoint import CONFIG_FILE, load_merged, read_checkpoint_info, read_pruning
    from ..data import Task
    from ..export.pooling import pooling_of, sentence_encoder

    base_dir = None
    if (src / CONFIG_FILE).is_file():
        info = read_checkpoint_info(src)
        model, tokenizer = load_merged(src, args.base_model)
        task, pruning = Task(**info["task"]), read_pruning(src)
        base_dir = _local_dir(args.base_model or info["base_model"]["name_or_path"])
    else:
        model, tokenizer, task = _load_plain(src, args.task)
        pruning, base_dir = None, src
    if args.task == "feature-extraction" or _kind(task) == "feature-extraction":
        pooling, normalize = pooling_of(base_dir)
        pooling = pooling if args.pooling == "auto" else args.pooling
        normalize = normalize if args.normalize is None else args.normalize
        model = sentence_encoder(model.base_model, pooling, normalize)
        task = {"kind": "feature-extraction", "pooling": pooling, "normalize": normalize}
    return {"model": model, "tokenizer": tokenizer, "task": task, "pruning": pruning}


def _local_dir(name_or_path: str) -> Path | None:
    """The base model's directory, where it is local (its sentence-transformers config sets the pooling)."""
    from ..models import resolve_model

    try:
        path = Path(resolve_model(name_or_path))
    except DSEEError:
        return None
    return path if path.is_dir() else None


def _load_plain(src: Path, task: str):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    from ..architectures import get_spec
    from ..data import Task
    from ..models import load_tokenizer

    config = AutoConfig.from_pretrained(src)
    get_spec(config.model_type)
    heads = " ".join(config.architectures or [])
    if task == "feature-extraction":
        cls, kind = AutoModel, "feature-extraction"
    elif "ForSequenceClassification" in heads:
        cls = AutoModelForSequenceClassification
        kind = "regression" if config.num_labels == 1 else "classification"
    elif "LMHead" in heads or "ForCausalLM" in heads:
        cls, kind = AutoModelForCausalLM, "causal-lm"
    else:  # a bare encoder (BertModel, ...): what it is good for is embeddings
        cls, kind = AutoModel, "feature-extraction"
    try:
        model = cls.from_pretrained(src, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise DSEEError(
            f"could not load '{src}' ({str(exc).splitlines()[0]}): it needs model.safetensors"
        ) from exc
    if kind in ("classification", "regression"):
        names = [config.id2label[i] for i in range(config.num_labels)] if kind == "classification" else []
        if names == [
            f"LABEL_{i}" for i in range(len(names))
        ]:  # transformers' defaults: the data says 0, 1, ...
            names = [str(i) for i in range(len(names))]
        task = Task(kind=kind, label_names=[str(n) for n in names])
    else:
        # Feature extraction is described by a dict ({"kind", "pooling", "normalize"}), which _load completes.
        task = Task(kind="causal-lm") if kind == "causal-lm" else {"kind": "feature-extraction"}
    return model.eval(), load_tokenizer(str(src)), task


def _kind(task) -> str:
    return task["kind"] if isinstance(task, dict) else task.kind


def _export(args, src: Path, loaded: dict, out: Path, shapes: dict) -> dict:
    """Export, optimize, validate, reduce precision, evaluate, build: every stage writes into `manifest`."""
    from ..export import export_onnx, onnx_parameter_count, validate_onnx
    from ..export.pooling import add_sentence_embedding

    model, tokenizer, task = loaded["model"], loaded["tokenizer"], loaded["task"]
    kind = _kind(task)
    features = kind == "feature-extraction"
    outputs = ("last_hidden_state", "sentence_embedding") if features else ("logits",)
    path = export_onnx(model.encoder if features else model, tokenizer, kind, out, args.opset)
    if features:
        add_sentence_embedding(path, task["pooling"], task["normalize"])
    manifest = _manifest(src, model, task, loaded["pruning"], path, args)
    manifest["optimization"] = {"applied": False}
    if args.optimize and args.format != "tensorrt":
        fuse = args.skip_layernorm == "fuse" or (args.skip_layernorm == "auto" and args.fp16)
        manifest["optimization"] = _optimize(path, model, loaded["pruning"], fuse)
    manifest["validation"] = {"skipped": True}
    if not args.no_validate:
        manifest["validation"] = _validate(validate_onnx, model, path, args.atol, outputs, manifest)

    precision = "int8" if args.quantize else "fp16" if args.fp16 else "fp32"
    manifest["precision"] = precision
    engines = {"onnx fp32": path}
    if precision != "fp32":
        fp32 = out / "model.fp32.onnx"
        path.replace(fp32)
        engines = {"onnx fp32": fp32, f"onnx {precision}": path}
        manifest.update(_reduce(precision, fp32, path, model, outputs, args))
    if args.validate_data:
        manifest["validate_data"] = _evaluate(model, tokenizer, task, args, engines, manifest)
    if precision != "fp32":
        engines["onnx fp32"].unlink()
    manifest["parameters"]["onnx"] = onnx_parameter_count(path)

    if args.format == "tensorrt":
        from ..export.tensorrt import build_engine

        version = build_engine(path, out / "model.plan", shapes)
        manifest["engine"] = "model.plan"
        manifest["tensorrt"] = {
            "version": version,
            "profile": {flag[2:]: list(shape) for flag, shape in shapes.items()},
        }
    elif args.format == "triton":
        from ..export.triton import write_config

        (out / "1").mkdir()
        path.replace(out / "1" / "model.onnx")
        write_config(out, args.max_batch_size, args.max_queue_delay_us, cpu_only=precision == "int8")
        manifest["engine"] = "1/model.onnx"
        manifest["triton"] = {
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_us": args.max_queue_delay_us,
        }
    return manifest


def _validate(validate_onnx, model, path, atol, outputs, manifest, agreement: bool = False) -> dict:
    from ..export import ValidationError

    try:
        return validate_onnx(model, path, atol, outputs, agreement=agreement)
    except ValidationError as exc:
        manifest["validation"] = {"passed": False, "error": str(exc)}
        raise _Failed(str(exc), manifest) from exc


def _reduce(precision: str, fp32: Path, path: Path, model, outputs, args) -> dict:
    """int8 or fp16 from the validated fp32 graph; checked for names, shapes and agreement, not atol."""
    from ..export import validate_onnx
    from ..export.precision import convert_fp16, quantize_int8

    result = {}
    if precision == "int8":
        result["quantization"] = quantize_int8(fp32, path)
    else:
        convert_fp16(fp32, path)
    if not args.no_validate:
        result["validation_" + precision] = {
            **_validate(validate_onnx, model, path, None, outputs, result, agreement=True),
            "note": f"an {precision} engine is judged by prediction agreement and the task metric "
            f"(--validate-data), not by the fp32 atol; max |diff| is recorded for information",
        }
    return result


def _evaluate(model, tokenizer, task, args, engines, manifest) -> dict:
    from ..export.evaluate import evaluate_engines

    report = evaluate_engines(model, tokenizer, task, args.validate_data, engines)
    names = list(engines)
    if len(names) > 1:
        drop = report["results"][names[0]]["metric"] - report["results"][names[1]]["metric"]
        report["drop"] = drop
        report["max_metric_drop"] = args.max_metric_drop
        report["passed"] = drop <= args.max_metric_drop
        if not report["passed"]:
            manifest["validate_data"] = report
            raise _Failed(
                f"the {names[1]} engine loses {drop:.2f} points of {report['metric']} against fp32 "
                f"on {args.validate_data} (--max-metric-drop {args.max_metric_drop}): keep fp32, or allow more",
                manifest,
            )
    return report


def _optimize(path: Path, model, pruning, fuse_skip_layernorm: bool) -> dict:
    """Fuse the graph and say whether Attention fused in every layer that still has heads."""
    from ..architectures import get_spec
    from ..export.optimize import optimize_for_cpu

    spec = get_spec(model.config.model_type)
    fused = optimize_for_cpu(path, spec.ort_model_type, fuse_skip_layernorm)
    guarded = fused.pop("ResidualLayerNormalization", 0)
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
    if guarded:
        note += (
            f"; {guarded} residual Add + LayerNormalization kept apart (ONNX Runtime's CPU SkipLayerNormalization "
            f"kernel is slower; --skip-layernorm fuse for GPU)"
        )
    return {
        "applied": True,
        "ort_model_type": spec.ort_model_type,
        "fused": fused,
        "skip_layernorm": "fused" if fuse_skip_layernorm else f"unfused ({guarded} guarded)",
        "layers_with_heads": with_heads,
        "note": note,
    }


def _manifest(src, model, task, pruning, path: Path, args) -> dict:
    import onnx
    import onnxruntime
    import torch

    from ..architectures import get_spec
    from ..pruning import encoder_flops

    graph = onnx.load(str(path), load_external_data=False).graph
    config = model.config
    spec = get_spec(config.model_type)
    n_heads, hidden = spec.num_heads(config), spec.hidden_size(config)
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
        from ..pruning.gates import structure_sizes

        n_layers, _, width = structure_sizes(model, spec)  # read from the modules, not from config keys
        layers = [{"heads": n_heads, "ffn": width, "sparsity": {}} for _ in range(n_layers)]
        dense = encoder_flops(hidden, hidden // n_heads, [n_heads] * n_layers, [width] * n_layers, 128)
        flops = {"seq_len": 128, "encoder_dense": dense, "encoder_pruned": dense, "encoder_ratio": 1.0}
    return {
        "format_version": 2,
        "source": str(src.resolve()),
        "task": _kind(task),
        **({"pooling": task["pooling"], "normalize": task["normalize"]} if isinstance(task, dict) else {}),
        # The truncation length the model was tuned with: serving and benchmarks tokenize to it.
        "max_length": getattr(task, "max_length", None) or 512,
        "architecture": config.model_type,
        "format": args.format,
        "engine": "model.onnx",
        "opset": args.opset,
        "hidden_size": hidden,
        "head_size": hidden // n_heads,
        "inputs": [i.name for i in graph.input],
        "outputs": [o.name for o in graph.output],
        "layers": layers,
        "parameters": {"torch": sum(p.numel() for p in model.parameters())},
        "flops": flops,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }


def _hashes(out: Path) -> dict:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def _summary(manifest: dict, out: Path, args) -> None:
    from ..export.validate import max_diff

    fusion = manifest["optimization"]
    if fusion.get("applied"):
        fused = ", ".join(f"{op} {n}" for op, n in fusion["fused"].items()) or "nothing"
        print(f"fused: {fused}; {fusion['note']}")
    validation = manifest["validation"]
    checked = (
        "skipped"
        if validation.get("skipped")
        else f"passed, max |diff| {max_diff(validation):.2e} <= {args.atol:.0e}"
    )
    print(
        f"saved {out / manifest['engine']}: {manifest['parameters']['onnx']:,} parameters in the graph "
        f"({manifest['parameters']['torch']:,} in the PyTorch model); fp32 validation {checked}; "
        f"{manifest['export_seconds']:.1f} s"
    )
    if manifest["engine"] == "model.plan":
        print(
            "the TensorRT plan itself was not run here: the ONNX graph it was built from is what was validated"
        )
    reduced = manifest.get(f"validation_{manifest['precision']}")
    if reduced:
        agree = [c["argmax_agreement"] for c in reduced["checks"] if "argmax_agreement" in c]
        print(
            f"{manifest['precision']}: max |diff| {max_diff(reduced):.2e} against PyTorch (not judged by --atol)"
            + (f"; argmax agreement {', '.join(agree)} on the validation shapes" if agree else "")
        )
    data = manifest.get("validate_data")
    if data:
        rows = "; ".join(
            f"{name} {r['metric']:.2f}"
            + "".join(f", {k.replace('_', ' ')} {v}" for k, v in r.items() if k != "metric")
            for name, r in data["results"].items()
        )
        print(f"{data['metric']} on {data['examples']} examples of {data['data']}: {rows}")
        if "drop" in data:
            print(
                f"{manifest['precision']} drop {data['drop']:+.2f} points (limit {data['max_metric_drop']})"
            )


if __name__ == "__main__":
    sys.exit(main())
