"""A quality figure for GPT-2 generation (issue 14): no GPT-2 weights can be had here, so the smallest useful GPT-2
is built from what is at hand and taken through the pipeline, with perplexity before and after pruning.

    python benchmarks/generation/sst2_lm.py [--data ../shared/data/sst2] [--work DIR] [--int4]

1. A byte-level BPE tokenizer (8,000 tokens) trained on the first half of SST-2's train.tsv sentences.
2. A 4-layer GPT-2 (256 hidden, 8 heads, FFN 1,024, 128 positions) pre-trained from random weights on that half
   (`dsee-tune --full-finetune`, the dense causal-LM baseline: a stand-in for pre-training).
3. DSEE on the other half (the "fine-tuning" corpus), selected on dev.tsv's sentences.
4. The same pruned to 50 % of its heads and FFN neurons, re-tuned 1 epoch.
5. Engines of 3 and 4 (KV cache, fp32 and int8; with --int4 also weight-only 4-bit), dsee-bench: generation
   speed and perplexity on dev sentences.

The corpus is SST-2's sentences (../shared/data/sst2, GLUE; not shipped in the repository). Writes
benchmarks/results/generation-sst2-lm/.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "generation-sst2-lm"


def sentences(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return [
            row["sentence"].strip() for row in csv.DictReader(f, delimiter="\t") if row["sentence"].strip()
        ]


def base_model(path: Path, corpus: list[str]) -> Path:
    """A randomly initialised 4-layer GPT-2 with a BPE tokenizer trained on `corpus`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    if (path / "config.json").is_file():
        return path
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=8000, special_tokens=["<|endoftext|>"]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    eos = fast.convert_tokens_to_ids("<|endoftext|>")
    config = GPT2Config(
        vocab_size=len(fast),
        n_positions=128,
        n_embd=256,
        n_layer=4,
        n_head=8,
        n_inner=1024,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent.parent / "shared" / "data" / "sst2")
    p.add_argument("--work", type=Path, default=Path("/tmp/dsee-sst2-lm"))
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--int4", action="store_true", help="Also the int4 engines (weight-only 4-bit): their perplexity."
    )
    a = p.parse_args()

    import dsee_deploy as dd

    train = sentences(a.data / "train.tsv")
    half = len(train) // 2
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    files = {"pretrain": train[:half], "tune": train[half:], "dev": sentences(a.data / "dev.tsv")}
    for name, lines in files.items():
        if not (w / f"{name}.txt").is_file():
            (w / f"{name}.txt").write_text("\n".join(lines) + "\n")
    base = base_model(w / "base", files["pretrain"])
    common = dict(batch_size=32, max_length=64)
    steps = [
        (
            "pretrained",
            dict(model=str(base), config=dd.TuneConfig(full_finetune=True, epochs=1, lr=1e-3, **common)),
            "pretrain",
        ),
        ("dsee", dict(config=dd.TuneConfig(epochs=1, **common)), "tune"),
        (
            "dsee-s50",
            dict(
                config=dd.TuneConfig(epochs=0, retune_epochs=1, **common),
                prune=dd.PruneConfig(heads=0.5, ffn=0.5),
            ),
            "tune",
        ),
    ]
    for name, kwargs, data in steps:
        if (w / name / "metrics.json").is_file():
            continue
        if name == "dsee":
            kwargs["model"] = str(w / "pretrained")
        if name == "dsee-s50":
            kwargs["resume"] = str(w / "dsee")
        dd.tune(str(w / f"{data}.txt"), w / name, eval=str(w / "dev.txt"), **kwargs)
    engines = {}
    for name in ("dsee", "dsee-s50"):
        for precision in ("fp32", "int8", "int4") if a.int4 else ("fp32", "int8"):
            label = name if precision == "fp32" else f"{name}-{precision}"
            out = w / "engines" / label
            if not (out / "manifest.json").is_file():
                dd.export(w / name, out, dd.ExportConfig(quantize=None if precision == "fp32" else precision))
            engines[label] = out
    config = dd.BenchConfig(
        batch_sizes=[1, 8],
        prompt_len=16,
        new_tokens=32,
        decode_rounds=5,
        threads=a.threads,
        title="A 4-layer GPT-2 pre-trained and DSEE-tuned on SST-2 sentences: dense and 50 % pruned",
    )
    config.eval_data = str(w / "dev.txt")
    dd.bench(
        [f"{k}={v}" for k, v in engines.items() if k != "dsee"],
        [f"dsee={engines['dsee']}"],
        config,
        output=a.output,
        overwrite=True,
    )
    from dsee_deploy.serve import Engine

    engine = Engine.load(engines["dsee-s50"])
    for result in engine.generate(["the film is", "a gripping"], max_new_tokens=16):
        print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
