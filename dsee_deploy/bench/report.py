"""results.json (schema below), report.md and the plots of a dsee-bench run.

results.json, "schema": "dsee-bench/2" (bench.results.BenchResults; in /1 a variant's target_speedup and
predicted_speedup were named target and predicted):
  machine      platform, processor, cpu_count, cpu_flags (the SIMD ones that matter for int8), python
  threads      intra-op threads of every variant;  versions: onnxruntime, numpy, torch (where installed)
  method       warmup, rounds, target_block_ms, interleaved, spinning, spin_us (the bound on ONNX Runtime's
               threads' busy-wait in us, 0: none; results from before it have spinning: false only), speedup
  variants     [{name, kind, precision, path, baseline, parameters, size_bytes, heads, ffn, flops: {seq: n},
               target_speedup, predicted_speedup}]
  timings      [{variant, batch, seq, p50_ms, p90_ms, p99_ms, best_ms, runs, throughput, round_best_ms}]
  speedups     [{variant, baseline, batch, seq, median, min, max, rounds, flops_bound, bound_achieved}]
  accuracy     {variant: {metric, value, <score by metric name>..., examples, max_length, majority}}   (with
               --eval-data): `metric` is the one that selected the checkpoint and `value` its score; beside them
               every metric the task reports, by name (accuracy for classification; pearson and spearman for
               regression), x 100; `majority`: the scores of always answering the data's most frequent label
  texts        (sentence-embedding engines with --eval-data; bench/texts.py) {texts, baseline, quality: {variant:
               {spearman, pearson} or {ndcg@10, recall@10}}, rows: [{variant, batch, texts, ms_per_text,
               texts_per_s, speedup (against baseline), vs_best_st: {variant, median, min, max, rounds}}],
               st_skipped: {backend: why it was not timed}, versions: {package: version}}:
               texts in, tokenization counted, beside sentence-transformers' backends ("st ...")

Tables show the task's metrics in their metric columns and the plot draws the task's; report.md says in one
line which promised plot was not drawn, and why.
"""

from __future__ import annotations

import json
from pathlib import Path

from .scores import (
    frontier_shape,
    metric_columns,
    plots_not_drawn,
    score_of,
)


def spin_text(method: dict) -> str:
    """How the run's ONNX Runtime threads spun, in words."""
    spin = method.get("spin_us", 0)  # results from before spin_us ran with spinning off
    return f"ONNX Runtime threads spin at most {spin} us" if spin else "spinning off"


def _score_cell(entry: dict, metric: str) -> str:
    value = score_of(entry, metric)
    return "" if value is None else f"{value:.2f}" + (" %" if metric == "accuracy" else "")


def write_markdown(results: dict, path: Path) -> None:
    lines = [
        f"# dsee-bench: {results.get('title', '')}".rstrip(": "),
        "",
        f"{results['machine']['processor'] or results['machine']['platform']}, {results['threads']} intra-op "
        f"thread{'' if results['threads'] == 1 else 's'}, {results['method']['rounds']} interleaved rounds, "
        f"{spin_text(results['method'])}; speed-up = median over rounds of the per-round ratio of best times.",
    ]
    lines += _variants(results)
    for shape in sorted({(t["batch"], t["seq"]) for t in results["timings"]}):
        lines += _shape(results, *shape)
    lines += _generation(results)
    lines += _texts(results)
    lines += ["", "Speed-up cells: median (min-max over rounds).", ""]
    lines += _targets(results)
    lines += _profile(results)
    for names, why in plots_not_drawn(results).items():
        lines += [f"{names} {'are' if ',' in names else 'is'} not drawn: {why}.", ""]
    path.write_text("\n".join(lines))


def _variants(results: dict) -> list[str]:
    """The variants: runtime, precision, size, structure, task metric; and what the majority label scores."""
    accuracy = results.get("accuracy", {})
    columns = metric_columns(results)
    lines = [
        "",
        "## Variants",
        "",
        "| variant | runtime | precision | parameters | on disk | heads / layer | FFN / layer | "
        + "".join(f"{m} | " for m in columns)
        + "task metric |",
        "| --- | --- | --- | ---: | ---: | --- | --- | " + "---: | " * len(columns) + "---: |",
    ]
    for v in results["variants"]:
        entry = accuracy.get(v["name"], {})
        metric = f"{entry['metric']} {entry['value']:.2f}" if entry.get("value") is not None else ""
        lines.append(
            f"| {v['name']} | {v['kind']} | {v['precision']} | {v['parameters'] / 1e6:.2f} M "
            f"| {v['size_bytes'] / 1e6:.1f} MB | {_compact(v['heads'])} | {_compact(v['ffn'])} "
            + "".join(f"| {_score_cell(entry, m)} " for m in columns)
            + f"| {metric} |"
        )
    common = next((a for a in accuracy.values() if a.get("majority")), None)
    if common:
        name, m = common["metric"], common["majority"]
        lines += [
            "",
            f"Always answering the most frequent label of the evaluation data ({m['label']!r}) would score "
            f"{name} {m['metric']:.2f}"
            + (f", accuracy {m['accuracy']:.2f} %" if "accuracy" in m and name != "accuracy" else "")
            + ".",
        ]
    return lines


def _shape(results: dict, batch: int, seq: int) -> list[str]:
    """One shape's timings, speed-ups against every baseline, and the FLOPs bound reached."""
    baselines = [v["name"] for v in results["variants"] if v["baseline"]]
    engine_baselines = [
        v["name"] for v in results["variants"] if v["baseline"] and v["kind"] == "onnxruntime"
    ]
    lines = [
        "",
        f"## Batch {batch}, sequence {seq}",
        "",
        "| variant | p50 ms | p90 ms | p99 ms | seq/s | "
        + " | ".join(f"x vs {b}" for b in baselines)
        + " | FLOPs bound | of bound (same precision) |",
        "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in baselines) + " | ---: | ---: |",
    ]
    for t in (t for t in results["timings"] if (t["batch"], t["seq"]) == (batch, seq)):
        ups = {
            s["baseline"]: s
            for s in results["speedups"]
            if (s["variant"], s["batch"], s["seq"]) == (t["variant"], batch, seq)
        }
        cells = [
            f"{ups[b]['median']:.2f} ({ups[b]['min']:.2f}-{ups[b]['max']:.2f})" if b in ups else ""
            for b in baselines
        ]
        # The bound is reached against the dense engine of the same precision (int8 against int8).
        me = next(v for v in results["variants"] if v["name"] == t["variant"])
        same = next(
            (b for b in engine_baselines if b in ups and _precision(results, b) == me["precision"]),
            results["primary_baseline"],
        )
        main = {} if me["baseline"] else ups.get(same, {})
        bound = f"{main['flops_bound']:.2f} | {main['bound_achieved'] * 100:.0f} %" if main else " | "
        lines.append(
            f"| {t['variant']} | {t['p50_ms']:.2f} | {t['p90_ms']:.2f} | {t['p99_ms']:.2f} "
            f"| {t['throughput']:.1f} | " + " | ".join(cells) + f" | {bound} |"
        )
    return lines


def _profile(results: dict) -> list[str]:
    if "profile" not in results:
        return []
    prof = results["profile"]
    lines = [
        f"## Where the time goes (ONNX Runtime profiler, batch {prof['batch']}, sequence {prof['seq']})",
        "",
        "| engine | kernel ms / run | top operators (ms, share) |",
        "| --- | ---: | --- |",
    ]
    for name, p in prof.items():
        if isinstance(p, dict):
            top = ", ".join(f"{o['op']} {o['ms']:.2f} ({o['share'] * 100:.0f} %)" for o in p["ops"][:6])
            lines.append(f"| {name} | {p['kernel_ms_per_run']:.2f} | {top} |")
    lines.append("")
    return lines


def _generation(results: dict) -> list[str]:
    """Causal-LM engines: prompt latency, generation throughput and speed-ups, and perplexity."""
    gen = results.get("generation")
    if not gen:
        return []
    baselines = [v["name"] for v in results["variants"] if v["baseline"]]
    ppl = results.get("perplexity", {})
    lines = [
        "",
        f"## Generation: prompt {gen['prompt_len']} tokens, {gen['new_tokens']} new tokens (greedy)",
        "",
        f"tokens/s = {gen['throughput']}; {gen['rounds']} interleaved rounds.",
        "",
        "| variant | batch | KV cache | prompt ms | generation ms | tokens/s | "
        + " | ".join(f"x vs {b}" for b in baselines)
        + (" | perplexity |" if ppl else " |"),
        "| --- | ---: | --- | ---: | ---: | ---: | "
        + " | ".join("---:" for _ in baselines)
        + (" | ---: |" if ppl else " |"),
    ]
    for t in gen["timings"]:
        ups = {
            s["baseline"]: s
            for s in gen["speedups"]
            if (s["variant"], s["batch"]) == (t["variant"], t["batch"])
        }
        cells = [
            f"{ups[b]['median']:.2f} ({ups[b]['min']:.2f}-{ups[b]['max']:.2f})" if b in ups else ""
            for b in baselines
        ]
        p = ppl.get(t["variant"], {}).get("perplexity")
        lines.append(
            f"| {t['variant']} | {t['batch']} | {t['kv_cache']} | {t['prompt_ms']:.1f} | {t['generate_ms']:.0f} "
            f"| {t['tokens_per_s']:.1f} | "
            + " | ".join(cells)
            + (f" | {p:.2f} |" if ppl and p else (" | |" if ppl else " |"))
        )
    return lines


def _texts(results: dict) -> list[str]:
    """Sentence embeddings timed texts in, beside sentence-transformers' backends of the dense model."""
    section = results.get("texts")
    if not section:
        return []
    metrics = list(next(iter(section["quality"].values())))
    lines = [
        "",
        f"## Sentence embeddings, texts in (tokenization and pooling counted; {section['texts']:,} evaluation "
        f"texts)",
        "",
        "Batch 1: ms per text, one text a call; batch 32: texts per second. `st ...`: sentence-transformers' "
        "backends of the dense model.",
        "",
        f"| variant | batch | ms / text | texts / s | x vs {section['baseline']} | x vs best st backend | "
        + " | ".join(metrics)
        + " |",
        "| --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in metrics) + " |",
    ]
    for row in section["rows"]:
        best = row.get("vs_best_st")
        quality = section["quality"].get(row["variant"], {})
        lines.append(
            f"| {row['variant']} | {row['batch']} | {row['ms_per_text']:.2f} | {row['texts_per_s']:.1f} | "
            f"{row['speedup']:.2f} | "
            + (f"{best['median']:.2f} ({best['variant']})" if best else "")
            + " | "
            + " | ".join(f"{quality[m]:.2f}" if m in quality else "" for m in metrics)
            + " |"
        )
    for name, why in section.get("st_skipped", {}).items():
        lines += ["", f"{name}: not timed: {why}."]
    if section.get("versions"):
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in section["versions"].items()) + "."]
    return lines


def _precision(results: dict, name: str) -> str:
    return next(v["precision"] for v in results["variants"] if v["name"] == name)


def _compact(values: list[int]) -> str:
    return f"{values[0]} x {len(values)}" if len(set(values)) == 1 else ", ".join(map(str, values))


def _targets(results: dict) -> list[str]:
    """The variants pruned to a speed target: the target, the latency model's prediction, the speed-up measured
    here against the primary baseline and the task's metrics (metric_columns)."""
    targeted = [v for v in results["variants"] if v.get("target_speedup")]
    shape = frontier_shape(results)
    if not targeted or shape is None:
        return []
    primary = results["primary_baseline"]
    accuracy = results.get("accuracy", {})
    columns = metric_columns(results)
    lines = [
        f"## Speed targets (batch {shape[0]}, sequence {shape[1]}, against {primary})",
        "",
        "| variant | precision | target | predicted | measured |" + "".join(f" {m} |" for m in columns),
        "| --- | --- | ---: | ---: | ---: |" + " ---: |" * len(columns),
    ]
    for v in targeted:
        up = next(
            (
                s["median"]
                for s in results["speedups"]
                if (s["variant"], s["baseline"], s["batch"], s["seq"]) == (v["name"], primary, *shape)
            ),
            None,
        )
        entry = accuracy.get(v["name"], {})
        lines.append(
            f"| {v['name']} | {v['precision']} | {v['target_speedup']:g}x | {v['predicted_speedup']:.2f}x (fp32 model) | "
            f"{'' if up is None else f'{up:.2f}x'} |"
            + "".join(f" {_score_cell(entry, m)} |" for m in columns)
        )
    return [*lines, ""]


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")
