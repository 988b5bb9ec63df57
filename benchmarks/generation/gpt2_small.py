"""Decode speed of GPT-2 engines: GPT-2-small geometry (12 layers, 12 heads, 768 hidden, 3072 FFN, 50,257 tokens,
1,024 positions) with random weights, since no GPT-2 weights can be had here.

    python benchmarks/generation/gpt2_small.py [--work DIR] [--batch-sizes 1,8] [--rounds 3] [--int8] [--int4]

Builds three models and exports them with dsee-export (each validated: greedy tokens against transformers'
generate): `dense` with the KV cache, `dense-no-cache` (--no-kv-cache, the export before issue 14), and `s50`,
50 % of the heads (6 of 12 per layer) and 50 % of the FFN neurons removed, with the cache. Then dsee-bench times
prompt latency and greedy generation (prompt 32 tokens, 64 new) at batch 1 and 8, interleaved, in one run.
Acceptance (issue 14): at batch 1, the cache gives at least 5x the tokens/s of the engine without it, and s50 at
least 1.7x the dense engine's. Writes results.json and report.md to benchmarks/results/generation-gpt2-small.

The tokenizer is a byte-level BPE trained here on a few lines (the engines need one to load; the timing feeds
random token ids of the full 50,257-token vocabulary).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "generation-gpt2-small"


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    lines = (Path(__file__).read_text() + (HERE.parent.parent / "README.md").read_text()).splitlines()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"])
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def build(path: Path, ffn: int, pruned_heads: int, seed: int) -> Path:
    """A GPT-2-small-geometry LM, random weights; `pruned_heads` of every layer's 12 removed (transformers'
    prune_heads, recorded in config.json) and an FFN of `ffn` neurons."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if (path / "config.json").is_file():
        return path
    torch.manual_seed(seed)
    config = GPT2Config(n_inner=ffn, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    if pruned_heads:
        model.prune_heads({layer: list(range(pruned_heads)) for layer in range(config.n_layer)})
    model.save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--work", type=Path, default=Path("/tmp/dsee-gpt2-small"), help="Models and engines go here."
    )
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--int8", action="store_true", help="Also the int8 engines of all three (dynamic int8).")
    p.add_argument(
        "--int4", action="store_true", help="Also the int4 engines of all three (weight-only 4-bit)."
    )
    a = p.parse_args()

    import dsee_deploy as dd

    models = {
        "dense": build(a.work / "models" / "dense", 3072, 0, 0),
        "s50": build(a.work / "models" / "s50", 1536, 6, 1),
    }
    engines = a.work / "engines"
    exports = {
        "dense": (models["dense"], dd.ExportConfig()),
        "dense-no-cache": (models["dense"], dd.ExportConfig(kv_cache=False)),
        "s50": (models["s50"], dd.ExportConfig()),
    }
    fp32 = dict(exports)
    for precision in [p for p in ("int8", "int4") if getattr(a, p)]:
        exports |= {
            f"{name}-{precision}": (m, replace(c, quantize=precision)) for name, (m, c) in fp32.items()
        }
    for name, (model, config) in exports.items():
        if not (engines / name / "manifest.json").is_file():
            manifest = dd.export(model, engines / name, config)
            print(f"{name}: {manifest.validation.get('greedy', 'no cache')}", file=sys.stderr)
    config = dd.BenchConfig(
        batch_sizes=[int(b) for b in a.batch_sizes.split(",")],
        prompt_len=32,
        new_tokens=64,
        decode_rounds=a.rounds,
        threads=a.threads,
        title="GPT-2-small geometry (random weights): generation with and without the KV cache, dense and 50 % pruned",
    )
    baselines = ["dense", "dense-no-cache"] + [
        f"{b}-{p}" for p in ("int8", "int4") if getattr(a, p) for b in ("dense", "dense-no-cache")
    ]
    results = dd.bench(
        [f"{name}={engines / name}" for name in exports if name not in baselines],
        [f"{name}={engines / name}" for name in baselines],
        config,
        output=a.output,
        overwrite=True,
    )
    gen = results.data["generation"]
    for s in gen["speedups"]:
        print(f"batch {s['batch']}: {s['variant']} against {s['baseline']}: {s['median']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
