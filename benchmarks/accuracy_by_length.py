"""Accuracy of classification engines by input length, in words (issue 13: where the pruned engines lose).

    python benchmarks/accuracy_by_length.py --data ../shared/data/sst2/test.tsv --train ../shared/data/sst2/train.tsv \
        full=bench/frontier/work/engines/full target-2x=bench/frontier/work/engines/target-2x ...

Prints a Markdown table: each engine's accuracy on all rows and on rows of under 15, 15-24 and 25+ words, and
how many training rows (the first --train-samples) and evaluation rows fall at 15 words or more.
"""

from __future__ import annotations

import argparse

import numpy as np

BUCKETS = ((0, 15), (15, 25), (25, 10_000))


def read(path: str, flag: str, limit: int | None = None) -> tuple[list[str], np.ndarray]:
    """The sentence and label columns of a TSV, read as dsee-tune reads it (missing files named by `flag`)."""
    from dsee_deploy.data import read_table

    table = read_table(path, flag, "data")
    table = table.select(range(min(limit, len(table)))) if limit else table
    return list(table["sentence"]), np.array([str(v) for v in table["label"]])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("engines", nargs="+", metavar="NAME=DIR")
    parser.add_argument("--data", required=True, help="evaluation TSV (sentence, label)")
    parser.add_argument("--train", help="training TSV, to compare its lengths with --data's")
    parser.add_argument("--train-samples", type=int, default=20000)
    args = parser.parse_args()
    from dsee_deploy.serve import Engine

    texts, labels = read(args.data, "--data")
    words = np.array([len(t.split()) for t in texts])
    if args.train:
        train_words = np.array([len(t.split()) for t in read(args.train, "--train", args.train_samples)[0]])
        print(
            f"words per row: train median {np.median(train_words):.0f} ({(train_words >= 15).mean():.0%} at 15 or "
            f"more), {args.data} median {np.median(words):.0f} ({(words >= 15).mean():.0%} at 15 or more)\n"
        )
    masks = [(words >= lo) & (words < hi) for lo, hi in BUCKETS]
    head = " | ".join(
        f"{lo}-{hi - 1} words ({m.sum()})" if hi < 10_000 else f"{lo}+ words ({m.sum()})"
        for (lo, hi), m in zip(BUCKETS, masks, strict=True)
    )
    print(f"| engine | all ({len(texts)}) | {head} |")
    print("| --- |" + " ---: |" * (len(BUCKETS) + 1))
    for spec in args.engines:
        name, _, path = spec.partition("=")
        right = np.array([p["label"] for p in Engine.load(path).predict(texts)]) == labels
        cells = " | ".join(f"{100 * right[m].mean():.2f} %" for m in masks)
        print(f"| {name} | {100 * right.mean():.2f} % | {cells} |")


if __name__ == "__main__":
    main()
