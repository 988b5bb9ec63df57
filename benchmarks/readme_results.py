"""Regenerate the measured-results tables of docs/benchmarks.md from the recorded dsee-bench runs in
benchmarks/results/ (the README's headline table copies a few of their cells by hand).

python benchmarks/readme_results.py          # rewrites the block between the results markers in docs/benchmarks.md

Paths outside docs/ are named in backticks, not linked: `mkdocs build --strict` refuses links that leave docs/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dsee_deploy.bench.report import spin_text
from dsee_deploy.bench.scores import accuracy_of

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "benchmarks.md"
RUNS = {
    "bert-base": "dsee-bench --suite benchmarks/suites/bert-base-geometry.toml --output benchmarks/results/bert-base "
    "--work bench/bert-base/work --profile",
    "sst2-minilm": "dsee-bench --suite benchmarks/suites/sst2-minilm.toml --output bench/sst2 "
    "--var full=runs/bench-tune/full --var dsee=runs/bench-tune/dsee --var s50=runs/bench-prune/s50 "
    "(then copied to benchmarks/results/sst2-minilm)",
}
START, END = "<!-- results:start (benchmarks/readme_results.py) -->", "<!-- results:end -->"


def table(results: dict, batch: int, seq: int) -> str:
    timings = {t["variant"]: t for t in results["timings"] if (t["batch"], t["seq"]) == (batch, seq)}
    ups = {
        (s["variant"], s["baseline"]): s
        for s in results["speedups"]
        if (s["batch"], s["seq"]) == (batch, seq)
    }
    variants = results["variants"]
    engines = [v for v in variants if v["kind"] == "onnxruntime" and v["baseline"]]
    eager = next((v["name"] for v in variants if v["kind"] == "pytorch eager"), None)
    accuracy = results.get("accuracy", {})
    lines = [
        "| variant | runtime | params | on disk | accuracy | p50 ms | x vs dense fp32 | x vs dense, same precision "
        "| x vs PyTorch eager | FLOPs bound |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(name: str, base: str | None) -> str:
        s = ups.get((name, base)) if base else None
        return f"**{s['median']:.2f}** ({s['min']:.2f}-{s['max']:.2f})" if s else ""

    for v in variants:
        same = next((e["name"] for e in engines if e["precision"] == v["precision"]), None)
        acc = accuracy_of(accuracy.get(v["name"], {}))
        bound = ups.get((v["name"], engines[0]["name"]), {}).get("flops_bound")
        lines.append(
            f"| {v['name']} | {v['kind']} {v['precision']} | {v['parameters'] / 1e6:.1f} M "
            f"| {v['size_bytes'] / 1e6:.0f} MB | {'' if acc is None else f'{acc:.2f} %'} "
            f"| {timings[v['name']]['p50_ms']:.1f} | {cell(v['name'], engines[0]['name'])} "
            f"| {cell(v['name'], same) if same != engines[0]['name'] else ''} | {cell(v['name'], eager)} "
            f"| {'' if bound is None or v['baseline'] else f'{bound:.2f}'} |"
        )
    return "\n".join(lines)


def main() -> int:
    blocks = []
    for name, command in RUNS.items():
        path = ROOT / "benchmarks" / "results" / name / "results.json"
        if not path.is_file():
            print(f"skipping {name}: {path} not recorded yet", file=sys.stderr)
            continue
        results = json.loads(path.read_text())
        batch, seq = (1, 128)
        blocks.append(
            f"**{results['title']}** — batch {batch}, sequence {seq}, {results['threads']} threads, "
            f"{results['machine']['processor']} ({results['machine']['cpu_count']} cores; "
            f"{' '.join(results['machine'].get('cpu_flags', [])) or 'flags not recorded'}), "
            f"{results['method']['rounds']} interleaved rounds, {spin_text(results['method'])}; speed-up = median of "
            f"per-round ratios "
            f"(min-max). Produced by:\n\n    {command}\n\n{table(results, batch, seq)}\n\n"
            f"All shapes, p90/p99 and throughput: `benchmarks/results/{name}/report.md`."
        )
    page = PAGE.read_text()
    if START not in page:
        print(f"{PAGE.relative_to(ROOT)} has no {START} marker", file=sys.stderr)
        return 1
    head, rest = page.split(START, 1)
    tail = rest.split(END, 1)[1]
    PAGE.write_text(head + START + "\n\n" + "\n\n".join(blocks) + "\n\n" + END + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
