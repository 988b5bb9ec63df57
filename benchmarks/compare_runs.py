"""Repeatability of dsee-bench: the speed-up medians of two runs of the same suite, side by side.

python benchmarks/compare_runs.py RUN_A/results.json RUN_B/results.json [--markdown OUT.md]
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
    runs = [json.loads(Path(x).read_text()) for x in (a.first, a.second)]
    key = lambda s: (s["variant"], s["baseline"], s["batch"], s["seq"])  # noqa: E731
    second = {key(s): s for s in runs[1]["speedups"]}
    lines = [
        "| variant | baseline | batch | seq | run 1 | run 2 | difference |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    worst = 0.0
    for s in runs[0]["speedups"]:
        other = second.get(key(s))
        if other is None or s["variant"].startswith("pytorch") and s["baseline"].startswith("pytorch"):
            continue
        diff = other["median"] / s["median"] - 1
        worst = max(worst, abs(diff))
        lines.append(
            f"| {s['variant']} | {s['baseline']} | {s['batch']} | {s['seq']} | {s['median']:.2f} "
            f"| {other['median']:.2f} | {diff * 100:+.1f} % |"
        )
    lines.append(f"\nLargest difference between the two runs: {worst * 100:.1f} %.")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
