"""What dsee-export prints about an engine it wrote, from its Manifest."""

from __future__ import annotations

import math
from pathlib import Path

from ..manifest import Manifest, speed_target_of
from ..tasks import get_task
from .validate import max_diff


def summarize(manifest: Manifest, out: Path) -> str:
    """What dsee-export prints: the fusions, the engine and its checks, the task metric on --validate-data."""
    lines = []
    fusion = manifest.optimization
    if fusion.get("applied"):
        fused = ", ".join(f"{op} {n}" for op, n in fusion["fused"].items()) or "nothing"
        lines.append(f"fused: {fused}; {fusion['note']}")
    validation = manifest.validation
    checked = (
        "skipped"
        if validation.get("skipped")
        else (f"passed, max |diff| {max_diff(validation):.2e} <= {validation['atol']:.0e}")
    )
    lines.append(
        f"saved {out / manifest.engine}: {manifest.parameters['onnx']:,} parameters in the graph "
        f"({manifest.parameters['torch']:,} in the PyTorch model); fp32 validation {checked}; "
        f"{manifest.export_seconds:.1f} s"
    )
    if manifest.tensorrt:
        lines.append(
            "the TensorRT plan itself was not run here: the ONNX graph it was built from is what was validated"
        )
    reduced = manifest.validation_reduced
    if reduced:
        task = get_task(manifest.task)  # what agreement means: the same argmax, values within 0.01
        key = task.output_agreement_key
        agree = [c[key] for c in reduced["checks"] if key in c]
        lines.append(
            f"{manifest.precision}: max |diff| {max_diff(reduced):.2e} against PyTorch (not judged by --atol)"
            + (
                f"; {task.output_agreement_words} {', '.join(agree)} on the validation shapes"
                if agree
                else ""
            )
        )
    if manifest.speedup:
        lines.append(describe_speedup(manifest.speedup))
    data = manifest.validate_data
    if data:
        # Per run: the selection metric, the task's other metrics by name (accuracy; spearman beside pearson),
        # and its agreement with the runs before it, worded by the task ("agreement with", "within 0.01 of").
        rows = "; ".join(
            f"{name} {r['metric']:.2f}"
            + "".join(
                f", {k.replace('_', ' ')} {_number(v)}"
                for k, v in r.items()
                if k not in ("metric", data["metric"])
            )
            for name, r in data["results"].items()
        )
        lines.append(f"{data['metric']} on {data['examples']} examples of {data['data']}: {rows}")
        if data.get("majority"):
            m = data["majority"]
            lines.append(
                f"always answering the most frequent label ({m['label']!r}) would score {data['metric']} "
                f"{m['metric']:.2f}"
                + (
                    f", accuracy {m['accuracy']:.2f}"
                    if "accuracy" in m and data["metric"] != "accuracy"
                    else ""
                )
            )
        if "drop" in data:
            lines.append(
                f"{manifest.precision} {0.0 - data['drop']:+.2f} pt against fp32 (a loss of at most "
                f"{data['max_metric_drop']} pt allowed)"
            )
    return "\n".join(lines)


def describe_speedup(record: dict) -> str:
    """One line: the measured speed-ups against the dense engine, and the target and prediction if any."""
    shown = []
    for name, e in record["engines"].items():
        text = f"{name.removeprefix('onnx ')} {e['measured']:.2f}x ({e['dense_ms']:.2f} -> {e['ms']:.2f} ms)"
        if "against_dense_fp32" in e:
            text += f", {e['against_dense_fp32']:.2f}x against dense fp32"
        shown.append(text)
    line = (
        f"measured speed-up against the dense engine (batch {record['batch']}, sequence {record['seq_len']}, "
        f"{record['threads']} thread{'' if record['threads'] == 1 else 's'}): {'; '.join(shown)}"
    )
    target = speed_target_of(record)
    if target:
        line += (
            f"; target {target['target_speedup']:g}x, predicted {target['predicted_speedup']:.2f}x "
            f"({target['precision']}): {target_verdict(record)}"
        )
    return line


def target_measured(record: dict) -> float | None:
    """The measured speed-up of the engine of the speed target's precision, None where none was measured."""
    precision = speed_target_of(record)["precision"]
    return next((e["measured"] for name, e in record["engines"].items() if name.endswith(precision)), None)


def target_verdict(record: dict) -> str:
    """Whether the engine of the target's precision meets the speed target as measured, or how far it is short
    and the target to prune for instead."""
    target = speed_target_of(record)["target_speedup"]
    measured = target_measured(record)
    if measured is None:
        return f"no {speed_target_of(record)['precision']} engine was measured against it"
    if measured >= target:
        return f"meets {target:g}x ({measured:.2f}x measured)"
    short = 1 - measured / target
    again = math.ceil(target * target / measured * 10) / 10  # the target scaled by the shortfall, up a tenth
    return (
        f"short of {target:g}x by {100 * short:.1f} % ({measured:.2f}x measured): prune again with "
        f"--target-speedup {again:g}"
    )


def _number(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
