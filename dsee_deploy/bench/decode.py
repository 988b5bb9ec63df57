"""dsee-bench for causal-LM engines: prompt latency and generation throughput, with the KV cache and without
(an engine exported with --no-kv-cache recomputes the whole prefix for every new token), and perplexity on a
text file.

Per batch size: the prompt (`prompt_len` random tokens per row, no padding) runs once with an empty past, timed
alone ("prompt"); then the whole greedy generation of `new_tokens` tokens, prompt included, is timed
("generate"), EOS ignored so that every variant generates the same number of tokens. Variants are interleaved
as for encoders (speed/timing.py); throughput is batch x new tokens / the median generation time, and a
speed-up is the median over rounds of the baseline's best generation time over the variant's.
"""

from __future__ import annotations

import math

import numpy as np

from ..architectures import get_spec
from ..runtime.generate import Decoder, GenerationConfig, has_cache


def generator(session, prompts: np.ndarray, new_tokens: int, architecture: str = "gpt2"):
    """(prompt run, whole generation) as no-argument calls on `session`, with or without a KV cache."""
    rows = prompts.tolist()
    if has_cache(session):
        decoder = Decoder(session, [], 0, None)
        once, whole = GenerationConfig(max_new_tokens=1), GenerationConfig(max_new_tokens=new_tokens)
        return (lambda: list(decoder.steps(rows, once))), (lambda: list(decoder.steps(rows, whole)))
    names = [i.name for i in session.get_inputs()]
    spec = get_spec(architecture)

    def run(ids: np.ndarray) -> np.ndarray:
        return session.run(["logits"], spec.feeds(names, ids, np.ones_like(ids)))[0]

    def whole():
        ids = prompts
        for _ in range(new_tokens):  # the whole sequence again for every token
            token = run(ids)[:, -1].argmax(-1)
            ids = np.concatenate([ids, token[:, None]], axis=1)
        return ids

    return (lambda: run(prompts)), whole


def rounds(runners: dict, n: int, progress=None) -> dict:
    """Each runner once per round, the order rotating, `n` rounds; no warm-up (the prompt timing before it
    warmed every session up). A whole generation lasts seconds (minutes without a cache at batch 8), so a
    round is one run each, not interleave's blocks of at least three."""
    import time

    from ..speed.timing import Timing

    names, timings = list(runners), {name: Timing() for name in runners}
    for r in range(n):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started = time.perf_counter()
            runners[name]()
            elapsed = time.perf_counter() - started
            timings[name].runs.append(elapsed)
            timings[name].best.append(elapsed)
        if progress:
            progress()
    return timings


def time_generation(variants, options, spin_us: int, progress=None) -> dict:
    """The "generation" section of results.json (schema in report.py)."""
    from ..speed.timing import interleave, speedup
    from .variants import _session

    rng = np.random.default_rng(0)
    vocab = min(v.vocab for v in variants)
    section = {
        "prompt_len": options.prompt_len,
        "new_tokens": options.new_tokens,
        "rounds": options.decode_rounds,
        "throughput": "batch x new tokens / median time of the whole generation (prompt included)",
        "timings": [],
        "speedups": [],
    }
    for batch in options.batch_sizes:
        prompts = rng.integers(min(1000, vocab // 2), vocab, size=(batch, options.prompt_len), dtype=np.int64)
        calls = {}
        for v in variants:
            session = _session(v.path, options.threads, v.provider, spin_us)
            calls[v.name] = generator(session, prompts, options.new_tokens, v.architecture)
        prompt = interleave({k: c[0] for k, c in calls.items()}, options.decode_rounds, 1, 0.1)
        whole = rounds({k: c[1] for k, c in calls.items()}, options.decode_rounds, progress)
        for v in variants:
            p50 = float(np.median(whole[v.name].runs))
            section["timings"].append(
                {
                    "variant": v.name,
                    "batch": batch,
                    "kv_cache": "kv"
                    if has_cache(_session(v.path, options.threads, v.provider, spin_us))
                    else "none",
                    "prompt_ms": float(np.median(prompt[v.name].runs)) * 1000,
                    "generate_ms": p50 * 1000,
                    "tokens_per_s": batch * options.new_tokens / p50,
                    "round_best_ms": [b * 1000 for b in whole[v.name].best],
                }
            )
            for b in (b for b in variants if b.baseline and b is not v):
                section["speedups"].append(
                    {
                        "variant": v.name,
                        "baseline": b.name,
                        "batch": batch,
                        **speedup(whole[b.name], whole[v.name]),
                    }
                )
    return section


def read_texts(path: str) -> list[str]:
    """The non-empty lines of a text file (--eval-data of a causal-LM bench)."""
    from pathlib import Path

    from ..errors import DSEEError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DSEEError(f"--eval-data '{path}' is not a readable UTF-8 text file ({exc})") from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise DSEEError(f"--eval-data '{path}' has no text: pass a file of one text per line")
    return texts


def perplexity(variant, texts: list[str], threads: int, spin_us: int, batch_size: int = 8) -> dict:
    """exp(mean negative log-likelihood of each next token) of `variant` over `texts`, each truncated to the
    variant's max length, as the engine computes it (no cache: every text is one sequence)."""
    from ..serve import Engine

    engine = Engine.load(variant.root, threads=threads, spin_us=spin_us, verify=False)
    encoded = [ids[: variant.max_length] for ids in (engine._prompts.encode(t).ids for t in texts)]
    encoded = [ids for ids in encoded if len(ids) > 1]
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(map(len, chunk))
        ids = np.zeros((len(chunk), width), np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(chunk):
            ids[row, : len(e)], mask[row, : len(e)] = e, 1
        logits = engine.run_feeds(engine.feeds(ids, mask, np.zeros_like(ids))).astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll = -np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0]
        real = mask[:, 1:].astype(bool)
        total, count = total + float(nll[real].sum()), count + int(real.sum())
    return {
        "perplexity": math.exp(total / count),
        "loss": total / count,
        "tokens": count,
        "texts": len(encoded),
    }
