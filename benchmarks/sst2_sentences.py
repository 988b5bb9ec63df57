"""Write an SST-2 training file that starts with the treebank's whole sentences.

GLUE's SST-2 train.tsv holds 67k rows, most of them phrases cut from about 7k sentences of the Stanford
Sentiment Treebank; dev.tsv and test.tsv hold whole sentences. The benchmark budget allows 20,000 rows, and the
first 20,000 rows of train.tsv hold only about 2,300 whole sentences. This script finds the rows that are not
a word span of another row (the sentences), writes all of them first and fills up to --rows with the other
rows in file order, so that a run with --max-train-samples N reads the sentences and N minus their count of
phrases.

    python benchmarks/sst2_sentences.py ../shared/data/sst2/train.tsv runs/train-sentences.tsv
"""

import argparse
import sys
from pathlib import Path


def read_rows(path: Path) -> list[tuple[str, str]]:
    # Plain splitting, not csv: the rows hold quote characters that csv would escape on the way back out.
    lines = path.read_text().splitlines()
    if not lines or lines[0].split("\t") != ["sentence", "label"]:
        sys.exit(f"{path}: expected the GLUE SST-2 header 'sentence<TAB>label'")
    return [tuple(line.rsplit("\t", 1)) for line in lines[1:] if line]


def sentence_rows(sentences: list[str]) -> list[bool]:
    """True for each sentence that is not a contiguous word span of a longer row."""
    # Every proper word span of every row, as hashes (the spans themselves would take GiBs).
    spans = set()
    for sentence in sentences:
        words = sentence.split()
        n = len(words)
        for i in range(n):
            for j in range(i + 1, n + 1):
                if j - i < n:
                    spans.add(hash(" ".join(words[i:j])))
    return [hash(" ".join(s.split())) not in spans for s in sentences]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("train", type=Path, help="GLUE SST-2 train.tsv")
    parser.add_argument(
        "output", type=Path, help="the TSV to write (refused if it exists, unless --overwrite)"
    )
    parser.add_argument("--rows", type=int, default=20000, help="rows to write in all (default 20000)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if not args.train.is_file():
        sys.exit(f"{args.train}: no such file; pass GLUE SST-2's train.tsv (../shared/data/sst2/train.tsv)")
    if args.output.exists() and not args.overwrite:
        sys.exit(f"{args.output} exists; pass --overwrite to replace it")

    rows = read_rows(args.train)
    is_sentence = sentence_rows([text for text, _ in rows])
    sentences = [row for row, keep in zip(rows, is_sentence, strict=True) if keep]
    phrases = [row for row, keep in zip(rows, is_sentence, strict=True) if not keep]
    chosen = (sentences + phrases)[: args.rows]

    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_suffix(args.output.suffix + ".partial")
    partial.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in chosen))
    partial.replace(args.output)

    positive = sum(label == "1" for _, label in sentences) / max(len(sentences), 1)
    lengths = sorted(len(text.split()) for text, _ in sentences)
    print(
        f"{len(rows)} rows, {len(sentences)} whole sentences (median {lengths[len(lengths) // 2]} words, "
        f"{positive:.1%} positive); wrote {len(chosen)} rows to {args.output}"
    )


if __name__ == "__main__":
    main()
