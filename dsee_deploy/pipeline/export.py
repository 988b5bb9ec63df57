"""The export verb (`dd.export`, dsee-export): a DSEE checkpoint (or a plain transformers model directory) to a
validated engine.

Each stage is a function that returns its piece of the Manifest; format and precision are registered handlers
(export/formats.py). A failed check writes the manifest with everything known up to it and `status: failed`.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

from ..errors import DSEEError, require_extra
from ..export.config import ExportConfig
from ..export.formats import FORMATS, PRECISIONS
from ..manifest import Manifest
from .disk import disk_full, disk_full_message, engine_bytes, keep_failed
from .source import Source, load_source


class ExportFailed(DSEEError):
    """A check of the engine failed; its manifest (status failed) was saved for inspection. Exit status 1."""

    exit_code = 1

    def __init__(self, message: str, manifest: Manifest):
        super().__init__(message)
        self.manifest = manifest
        self.path: Path | None = None  # where the failed export was kept


def export(
    checkpoint: str | Path,
    output: str | Path,
    config: ExportConfig | None = None,
    *,
    base_model: str | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Merge, shrink, export, fuse, validate, reduce precision and evaluate `checkpoint` into `output`.

    Returns the engine's Manifest (also written as `output`/manifest.json). Raises DSEEError for bad input
    (before anything slow) and ExportFailed when the engine does not match PyTorch or loses too much metric. A
    full disk (or quota) is a DSEEError naming the output, its free space and what the engine needs; nothing of
    the export is kept, and an engine already at `output` stays as it was.
    """
    config = config or ExportConfig()
    fmt = FORMATS[config.format]
    fmt.check(config)
    require_extra("export", "onnx", "optimum.exporters.onnx")
    require_extra("tune", "torch", "transformers", "safetensors")
    from ..checkpoint import recorded_base
    from ..models import packaged_model
    from ..outputs import Output
    from ..runtime.session import use_threads

    use_threads(config.threads)
    src = packaged_model(checkpoint) or Path(
        checkpoint
    )  # the packaged default by name, as dsee-tune takes it
    target = Output(
        fmt.target(Path(output), config, src),
        overwrite,
        {
            "the checkpoint": src,
            "--base-model": base_model or recorded_base(src),
            "--validate-data": config.validate_data,
        },
    )
    if config.validate_data and not Path(config.validate_data).is_file():
        raise DSEEError(f"--validate-data file '{config.validate_data}' does not exist: check the path")
    started = time.perf_counter()
    out = target.start()  # first: an unwritable --output fails before anything slow
    sizes: dict = {}  # what the engine needs on disk, once the model is loaded
    try:
        manifest = _export(src, config, base_model, out, started, sizes)
    except ExportFailed as exc:
        exc.path = keep_failed(target)
        if exc.path is not None:
            exc.args = (f"{exc} (the failed export and its manifest are kept in '{exc.path}')",)
        raise
    except BaseException as exc:
        target.abort()  # first: the free space reported is what is left without this export's partial files
        full = disk_full(exc, out.parent)
        if full is not None:
            raise DSEEError(disk_full_message(full, target.target, sizes)) from exc
        raise
    target.commit()
    return manifest


def _export(
    src: Path, config: ExportConfig, base_model: str | None, out: Path, started: float, sizes: dict
) -> Manifest:
    source = load_source(src, config, base_model)
    sizes.update(engine_bytes(source, config))
    if config.validate_data and not source.task.spec.scored:
        raise DSEEError(
            f"--validate-data measures a task metric on labelled data; {source.task.kind} has none: drop it"
        )
    labelled = None
    if config.validate_data:  # read (and its columns and labels checked) before anything slow
        from ..runtime.evaluate import read_labelled

        labelled = read_labelled(config.validate_data, "--validate-data", source.task)
    manifest = describe(source, config)
    try:
        _stages(source, config, out, manifest, labelled)
    except DSEEError as exc:
        manifest.status, manifest.error = "failed", str(exc)
        manifest.write(out)
        if isinstance(exc, ExportFailed):
            raise
        raise ExportFailed(str(exc), manifest) from exc
    manifest.export_seconds = time.perf_counter() - started
    manifest.files = _hashes(out)
    manifest.write(out)
    return manifest


def _stages(source: Source, config: ExportConfig, out: Path, manifest: Manifest, labelled=None) -> None:
    """Export, optimize, validate, reduce precision, evaluate, finish the format: each records into `manifest`."""
    from ..export.onnx import export_onnx, onnx_parameter_count
    from ..export.pooling import add_sentence_embedding

    task = source.task
    decoder = task.spec.language_model and config.kv_cache
    if config.quantize == "int4" and not task.spec.language_model:
        raise DSEEError(
            "--quantize int4 is weight-only 4-bit for causal language models (a decode step is bound by reading "
            "the weights); an encoder's time goes into compute: use --quantize int8"
        )
    if decoder:
        from ..export.decoder import cache_heads, cache_shapes, export_decoder

        if config.format != "onnx":
            raise DSEEError(
                f"--format {config.format} does not take the KV-cache decoder (its shape profiles and Triton "
                f"config have no past inputs yet): use --format onnx, or --no-kv-cache"
            )
        path = export_decoder(source.model, source.tokenizer, out, config.opset)
        manifest.cache = cache_shapes(cache_heads(source.model), manifest.head_size)
    else:
        path = export_onnx(source.model, source.tokenizer, task.spec, out, config.opset)
    if task.spec.pooled:  # feature extraction: the pooling is appended to the graph
        add_sentence_embedding(path, task.pooling, task.normalize)
    manifest.inputs, manifest.outputs = graph_io(path)
    if config.optimize and FORMATS[config.format].optimizes:
        manifest.optimization = optimize(path, source, config.fuse_skip_layernorm())
    if config.validate:
        manifest.validation = validate(source, path, config.atol, agreement=False, decoder=decoder)
    precision = PRECISIONS[config.precision]
    engines = {"onnx fp32": path}
    if precision.reduced:
        fp32 = out / "model.fp32.onnx"
        path.replace(fp32)
        engines = {"onnx fp32": fp32, f"onnx {precision.name}": path}
        manifest.quantization = precision.convert(fp32, path)
        if config.validate:
            manifest.validation_reduced = {
                **validate(source, path, None, agreement=True, decoder=decoder),
                "note": f"an {precision.name} engine is judged by prediction agreement and the task metric "
                f"(--validate-data), not by the fp32 atol; max |diff| is recorded for information",
            }
    if config.validate_data:
        manifest.validate_data = evaluate(source, config, engines, out, labelled)
        if manifest.validate_data.get("passed") is False:
            data = manifest.validate_data
            raise DSEEError(
                f"the onnx {precision.name} engine loses {data['drop']:.2f} points of {data['metric']} against "
                f"fp32 on {config.validate_data} (--max-metric-drop {config.max_metric_drop}): keep fp32, or "
                f"allow more"
            )
    if (
        config.speedup
        and not task.spec.language_model  # decode speed: dsee-bench's causal-LM timing
        and FORMATS[config.format].optimizes
        and source.pruning
        and source.pruning.structured
    ):
        timed = {k: v for k, v in engines.items() if k.endswith(("fp32", "int8"))}  # fp16 is for GPUs
        manifest.speedup = measure_speedup(source, timed)
    if precision.reduced:
        engines["onnx fp32"].unlink()
    manifest.parameters["onnx"] = onnx_parameter_count(path)
    FORMATS[config.format].finish(path, out, config, manifest)


def describe(source: Source, config: ExportConfig) -> Manifest:
    """Everything known before the export: source, task, geometry, FLOPs, versions."""
    import onnx
    import onnxruntime
    import torch

    from ..architectures import get_spec
    from ..pruning import encoder_flops
    from ..pruning.gates import structure_sizes

    model, task, pruning = source.model, source.task, source.pruning
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
            for e in pruning.layers
        ]
        flops = pruning.flops
    else:
        n_layers, _, width = structure_sizes(model, spec)  # read from the modules, not from config keys
        layers = [{"heads": n_heads, "ffn": width, "sparsity": {}} for _ in range(n_layers)]
        dense = encoder_flops(hidden, hidden // n_heads, [n_heads] * n_layers, [width] * n_layers, 128)
        flops = {"seq_len": 128, "encoder_dense": dense, "encoder_pruned": dense, "encoder_ratio": 1.0}
    features = task.spec.pooled
    return Manifest(
        source=str(source.path.resolve()),
        task=task.kind,
        architecture=model.config.model_type,
        max_length=task.max_length,  # what the model was tuned with: serving and evaluation truncate there
        format=config.format,
        precision=config.precision,
        opset=config.opset,
        hidden_size=hidden,
        head_size=hidden // n_heads,
        layers=layers,
        parameters={"torch": sum(p.numel() for p in model.parameters())},
        flops=flops,
        versions={
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        metric=task.metric,
        positive_label=task.positive_label,
        pooling=task.pooling if features else None,
        normalize=task.normalize if features else None,
    )


def graph_io(path: Path) -> tuple[list[str], list[str]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


def validate(source: Source, path: Path, atol: float | None, agreement: bool, decoder: bool = False) -> dict:
    if decoder:
        from ..export.decoder import validate_decoder

        return validate_decoder(source.model, path, atol, agreement=agreement)
    from ..export.validate import validate_onnx

    return validate_onnx(source.model, path, atol, source.task.spec.outputs, agreement=agreement)


def evaluate(source: Source, config: ExportConfig, engines: dict, out: Path, labelled: tuple) -> dict:
    """The task metric on --validate-data, and for a reduced precision its drop against fp32 (`passed`: within
    --max-metric-drop)."""
    from ..export.evaluate import evaluate_engines

    texts, labels = labelled
    report = evaluate_engines(source.model, source.task, texts, labels, engines, out)
    report = {"data": config.validate_data, **report}
    names = list(engines)
    if len(names) > 1:
        drop = report["results"][names[0]]["metric"] - report["results"][names[1]]["metric"]
        report.update(
            drop=drop, max_metric_drop=config.max_metric_drop, passed=drop <= config.max_metric_drop
        )
    return report


def optimize(path: Path, source: Source, fuse_skip_layernorm: bool) -> dict:
    """Fuse the graph and say whether Attention fused in every layer that still has heads."""
    from ..architectures import get_spec
    from ..export.optimize import optimize_for_cpu

    spec = get_spec(source.model.config.model_type)
    fused = optimize_for_cpu(path, spec.ort_model_type, fuse_skip_layernorm)
    guarded = fused.pop("ResidualLayerNormalization", 0)
    n_layers = len(spec.blocks(source.model))
    pruning = source.pruning
    with_heads = sum(1 for e in pruning.layers if e["kept_heads"]) if pruning else n_layers
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


def measure_speedup(source: Source, engines: dict) -> dict:
    """The engines against dense ones where the speed target was set (its SpeedKey; without one the defaults:
    batch 1, sequence 128, all cores), with the target and its prediction beside them."""
    from ..export.summary import target_measured
    from ..speed.key import SpeedKey
    from ..speed.latency import record_check
    from ..speed.speedup import measured_speedup

    target = source.pruning.target
    record = measured_speedup(
        source.model.base_model.config, source.task.spec, engines, target.speed if target else SpeedKey()
    )
    if target:
        record.update(
            target_speedup=target.target_speedup,
            predicted_speedup=target.predicted_speedup,
            precision=target.speed.precision,
        )
        measured = target_measured(record)
        if measured is not None:  # the model's own error, for the next layout searched with it
            record_check(target.latency_model, target.predicted_speedup, measured, log=lambda message: None)
    return record


def _hashes(out: Path) -> dict:
    from ..manifest import file_sha256

    return {
        str(p.relative_to(out)): file_sha256(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
