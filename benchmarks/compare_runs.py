"""Repeatability of dsee-bench: the speed-up medians of two runs (or two sets of runs) of the same suite, side by
side. With several runs a side (comma-separated), each side's figure is the mean of its runs' medians, and
each run's own median is shown too.

python benchmarks/compare_runs.py RUN_A/results.json RUN_B/results.json [--markdown OUT.md]
python benchmarks/compare_runs.py A1/results.json,A2/results.json B1/results.json,B2/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--markdown", help="Also write the table here.")
    a = p.parse_args()
    sides = [[json.loads(Path(x).read_text()) for x in side.split(",")] for side in (a.first, a.second)]
    key = lambda s: (s["variant"], s["baseline"], s["batch"], s["seq"])  # noqa: E731
    medians = [
        [{key(s): s["median"] for s in run["speedups"]} for run in side] for side in sides
    ]  # [side][run][key]
    several = any(len(side) > 1 for side in sides)
    head = "| variant | baseline | batch | seq | run 1 | run 2 | difference |"
    if several:
        head = "| variant | baseline | batch | seq | first (runs) | first | second (runs) | second | difference |"
    lines = [head, "| --- | --- | ---: | ---: |" + " ---: |" * (head.count("|") - 5)]
    worst = 0.0
    for s in sides[0][0]["speedups"]:
        k = key(s)
        if any(k not in run for side in medians for run in side):
            continue
        if s["variant"].startswith("pytorch") and s["baseline"].startswith("pytorch"):
            continue
        runs = [[run[k] for run in side] for side in medians]
        means = [sum(r) / len(r) for r in runs]
        diff = means[1] / means[0] - 1
        worst = max(worst, abs(diff))
        cells = [f"{means[0]:.2f}", f"{means[1]:.2f}"]
        if several:
            cells = [", ".join(f"{v:.2f}" for v in runs[0]), f"{means[0]:.2f}"]
            cells += [", ".join(f"{v:.2f}" for v in runs[1]), f"{means[1]:.2f}"]
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {' | '.join(cells)} | {diff * 100:+.1f} % |")
    lines.append(
        f"\nLargest difference between the two {'sides' if several else 'runs'}: {worst * 100:.1f} %."
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
