"""A causal LM (GPT-2) as one ONNX decoder graph with a KV cache: `input_ids`, `attention_mask` (past and new
tokens), `position_ids` and each layer's past keys and values in; logits and each layer's present keys and
values out. One graph serves the prompt (a past of length 0) and every decode step.

Each layer's cache has that layer's own head count, and a layer that kept no heads has none: Optimum's GPT-2
export with past makes every layer's cache `n_head` wide, which a DSEE-pruned model is not, so the graph is
traced here from a wrapper that hands the model a cache of exactly the layers' own widths (transformers' Cache
interface: `update` per layer). The wrapper passes the padding mask as the additive 4-D mask transformers takes
as it is, so that nothing of transformers' mask construction is traced with this trace's shapes baked in;
GPT-2's own causal mask (the `bias` buffer, sliced by the past length) stays in the graph.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

from ..architectures import get_module, get_spec
from ..runtime import make_session
from ..runtime.generate import Decoder
from ..runtime.generate import GenerationConfig as Sampling
from .validate import ValidationError

PAST = "past_key_values.{}.{}"  # Optimum's and transformers.js's names, per layer, "key" / "value"
PRESENT = "present.{}.{}"
INPUTS = ("input_ids", "attention_mask", "position_ids")


def cache_heads(model) -> list[int]:
    """Heads each layer of `model` keeps, i.e. the width of its cache (0: no attention, no cache)."""
    from ..surgery.shrink import AttentionSkip

    spec = get_spec(model.config.model_type)
    n_heads = spec.num_heads(model.config)
    widths = []
    for block in spec.blocks(model):
        attention = get_module(block, spec.attention)
        if isinstance(attention, AttentionSkip):
            widths.append(0)
        else:
            widths.append(n_heads - len(getattr(attention, "pruned_heads", ())))
    return widths


def cache_names(heads: list[int]) -> tuple[list[str], list[str]]:
    """The graph's past inputs and present outputs, key then value, for the layers that keep heads."""
    layers = [i for i, h in enumerate(heads) if h]
    past = [PAST.format(i, kind) for i in layers for kind in ("key", "value")]
    return past, [PRESENT.format(i, kind) for i in layers for kind in ("key", "value")]


class _GraphCache:
    """transformers' Cache interface as the traced forward needs it: each attention hands its new keys and
    values to `update`; a layer without heads (a zero-width update) keeps nothing. Unfused, `update` returns
    past + new for transformers' own attention to use; fused, it returns the new ones alone, and the attention
    (`_fused_attention`) hands them with the past to ONNX Runtime's MultiHeadAttention, which concatenates."""

    def __init__(self, past: dict, key_padding_mask=None, fused: bool = False):
        self.past, self.present = past, {}
        self.key_padding_mask, self.fused = key_padding_mask, fused

    def get_seq_length(
        self, layer_idx: int = 0
    ) -> int:  # transformers' cache_position (unused: positions are fed)
        return next((k.shape[-2] for k, _ in self.past.values()), 0)

    def update(self, key, value, layer_idx, cache_kwargs=None):
        import torch

        if (
            key.shape[1] == 0 or self.fused
        ):  # AttentionSkip: no heads, no cache; fused: the attention joins them
            return key, value
        past_key, past_value = self.past[layer_idx]
        key, value = torch.cat([past_key, key], dim=-2), torch.cat([past_value, value], dim=-2)
        self.present[layer_idx] = (key, value)
        return key, value


_ACTIVE: list[_GraphCache] = []  # the cache of the forward being traced, for _fused_attention
FUSED = "dsee_multihead_attention"  # the attention implementation registered with transformers for the trace


@functools.cache
def _mha_function():
    """A torch.autograd.Function that computes causal attention over past + new keys in PyTorch (what the trace
    runs) and exports as one com.microsoft MultiHeadAttention node (unidirectional, 2-D key padding mask, past
    and present keys and values: its CPU kernel takes all of them)."""
    import torch

    class MultiHeadAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, query, key, value, mask, past_key, past_value, num_heads: int, scale: float):
            batch, seq, width = query.shape

            def split(x):  # (B, S, N*H) -> (B, N, S, H)
                return x.view(batch, seq, num_heads, width // num_heads).transpose(1, 2)

            keys, values = torch.cat([past_key, split(key)], 2), torch.cat([past_value, split(value)], 2)
            past = past_key.shape[2]
            causal = torch.arange(past + seq)[None, :] <= (past + torch.arange(seq))[:, None]
            allowed = causal[None, None] & mask[:, None, None, :].bool()
            weights = (split(query) @ keys.transpose(-1, -2)) * scale
            weights = weights.masked_fill(~allowed, torch.finfo(weights.dtype).min).softmax(-1)
            return (weights @ values).transpose(1, 2).reshape(batch, seq, width), keys, values

        @staticmethod
        def symbolic(g, query, key, value, mask, past_key, past_value, num_heads, scale):
            none = g.op("prim::Constant")  # an absent optional input: exported as ""
            none.setType(torch._C.OptionalType.ofTensor())
            return g.op(
                "com.microsoft::MultiHeadAttention",
                query,
                key,
                value,
                none,  # bias (already in the projections)
                mask,  # key padding mask: (batch, past + new), 1 for real tokens
                none,  # attention bias
                past_key,
                past_value,
                num_heads_i=num_heads,
                unidirectional_i=1,
                scale_f=scale,
                outputs=3,
            )

    return MultiHeadAttention


def _fused_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' attention interface: query, key and value (B, N, S, H) of new tokens in, (B, S, N, H) out."""
    cache = _ACTIVE[-1]
    heads, size = int(module.num_heads), int(module.head_dim)  # static: traced shapes would be tensors
    scale = 1.0 / size**0.5 if module.scale_attn_weights else 1.0
    if module.scale_attn_by_inverse_layer_idx:
        scale /= float(module.layer_idx + 1)
    past_key, past_value = cache.past[module.layer_idx]

    def flat(x):  # (B, N, S, H) -> (B, S, N*H)
        return x.transpose(1, 2).flatten(2)

    out, keys, values = _mha_function().apply(
        flat(query), flat(key), flat(value), cache.key_padding_mask, past_key, past_value, heads, scale
    )
    cache.present[module.layer_idx] = (keys, values)
    return out.unflatten(-1, (heads, size)), None


def _wrapper(model, heads: list[int], fused: bool):
    import torch
    from torch import nn

    layers = [i for i, h in enumerate(heads) if h]

    class DecoderWithPast(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            past = {i: (past[2 * j], past[2 * j + 1]) for j, i in enumerate(layers)}
            cache = _GraphCache(past, attention_mask.to(torch.int32), fused)
            # Padding as an additive mask over past + new keys; GPT-2's eager attention adds its causal mask.
            keep = attention_mask[:, None, None, :].to(torch.float32)
            mask = (1.0 - keep) * torch.finfo(torch.float32).min
            _ACTIVE.append(cache)
            try:
                out = self.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=position_ids,
                    past_key_values=cache,
                    use_cache=True,
                    return_dict=True,
                )
            finally:
                _ACTIVE.pop()
            return (out.logits, *[t for i in layers for t in cache.present[i]])

    return DecoderWithPast().eval()  # torch.onnx.export restores the mode it found, recursively


def export_decoder(model, tokenizer, out: Path, opset: int = 17, fused: bool = True) -> Path:
    """Write `out`/model.onnx, the decoder with a KV cache, with the tokenizer and config beside it. `fused`:
    each layer's attention is one ONNX Runtime MultiHeadAttention node (ORT's own GPT-2 fusion matches only the
    legacy export with one stacked past per layer, not this graph); else transformers' eager attention, traced
    op by op (any ONNX runtime runs it)."""
    import torch

    heads = cache_heads(model)
    head_size = model.config.n_embd // model.config.n_head
    past_names, present_names = cache_names(heads)
    model.eval()
    previous = model.config._attn_implementation
    if fused:
        from transformers import AttentionInterface

        AttentionInterface.register(FUSED, _fused_attention)
    # eager: transformers' attention traced as it is (no mask code of its own runs with our 4-D mask).
    model.config._attn_implementation = FUSED if fused else "eager"
    try:
        batch, seq, past_len = 2, 3, 4
        ids = torch.randint(0, model.config.vocab_size, (batch, seq))
        mask = torch.ones(batch, past_len + seq, dtype=torch.long)
        positions = torch.arange(past_len, past_len + seq).expand(batch, -1)
        past = [torch.randn(batch, h, past_len, head_size) for h in heads if h for _ in ("key", "value")]
        axes = {
            **{n: {0: "batch_size", 1: "sequence_length"} for n in ("input_ids", "position_ids", "logits")},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            **{n: {0: "batch_size", 2: "past_sequence_length"} for n in past_names},
            **{n: {0: "batch_size", 2: "total_sequence_length"} for n in present_names},
        }
        out.mkdir(parents=True, exist_ok=True)
        path = out / "model.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            # The tracer warns about Python values in transformers' code; validation checks the result instead.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                _wrapper(model, heads, fused),
                (ids, mask, positions, *past),
                str(path),
                input_names=[*INPUTS, *past_names],
                output_names=["logits", *present_names],
                dynamic_axes=axes,
                opset_version=opset,
                # Folding would store Transpose(the tied embedding) as a second copy for the LM head (38.6M
                # weights for GPT-2 small); ONNX Runtime folds the rest when it loads the graph.
                do_constant_folding=False,
                dynamo=False,
                custom_opsets={"com.microsoft": 1},
            )
    finally:
        model.config._attn_implementation = previous
    tokenizer.save_pretrained(out)
    model.config.save_pretrained(out)
    return path


def cache_shapes(heads: list[int], head_size: int) -> list[dict]:
    """The manifest's record of each layer's cache: [batch, heads, past, head size] or none."""
    return [
        {"layer": i, "heads": h, "shape": ["batch_size", h, "past_sequence_length", head_size] if h else None}
        for i, h in enumerate(heads)
    ]


# (batch, prompt length, tokens of the next run, then one): odd sizes, and other than the trace's (2, 3, 4).
DECODE_SHAPES = ((1, 7, 3), (3, 12, 5))
GREEDY_PROMPTS = (9, 2, 5, 13)  # prompt lengths, decoded together, left padded
GREEDY_TOKENS = 16


def validate_decoder(model, path: Path, atol: float | None = 1e-4, agreement: bool = False) -> dict:
    """Check the KV-cache decoder at `path` against `model`: the logits of a prompt (empty past), of a run
    of several tokens and of one token after it, against the whole sequence in PyTorch (left-padded rows
    included); then greedy generation, several prompts of other lengths in one batch, token by token against
    transformers' `generate`. `atol=None` (int8, fp16) records differences and token agreement instead of
    failing on them. Raises ValidationError listing every failure."""
    session = make_session(path, providers=["CPUExecutionProvider"])
    decoder = Decoder(session, [], model.config.pad_token_id or 0, None)
    rng = np.random.default_rng(0)  # the logits' inputs first, then the greedy prompts
    model.eval()
    checks, failures = _check_logits(model, session, decoder, rng, atol)
    greedy, greedy_failures = _check_greedy(model, decoder, rng, atol)
    failures += greedy_failures
    if failures:
        raise ValidationError("ONNX decoder does not match PyTorch:\n" + "\n".join(failures))
    return {"passed": True, "atol": atol, "checks": checks, "greedy": greedy}


def _check_logits(model, session, decoder, rng, atol: float | None) -> tuple[list[dict], list[str]]:
    """(checks, failures): each of DECODE_SHAPES run as a prompt, a run of tokens and one token, its logits
    against PyTorch's on the whole sequence."""
    import torch  # the 'tune' extra

    spec = get_spec(model.config.model_type)
    c = decoder.cache
    vocab = model.get_input_embeddings().num_embeddings
    failures, checks = [], []
    for batch, prompt, more in DECODE_SHAPES:
        total = prompt + more + 1
        ids = rng.integers(5, vocab, size=(batch, total), dtype=np.int64)
        mask = np.ones((batch, total), np.int64)
        mask[1:, : prompt // 3] = 0  # left padding on all but the first row
        whole = spec.feeds(INPUTS, ids, mask)  # the whole sequence, as PyTorch sees it
        with torch.no_grad():
            want = model(**{k: torch.from_numpy(v) for k, v in whole.items()}).logits.numpy()
        past = [np.zeros((batch, h, 0, c.head_size), c.dtype) for h in c.heads]
        for start, stop in ((0, prompt), (prompt, prompt + more), (prompt + more, total)):
            # The same, cut into a prompt and later runs: new tokens and their positions, mask up to them.
            feeds = {k: v[:, :stop] if k == "attention_mask" else v[:, start:stop] for k, v in whole.items()}
            feeds.update(zip(c.past, past, strict=True))
            logits, *past = session.run(None, feeds)
            real = mask[:, start:stop].astype(bool)
            diff = float(np.abs(logits.astype(np.float32) - want[:, start:stop])[real].max())
            check = {
                "output": "logits",
                "batch": batch,
                "past": start,
                "seq": stop - start,
                "max_abs_diff": diff,
            }
            checks.append(check)
            if atol is not None and not diff <= atol:
                failures.append(
                    f"  logits     batch {batch}, past {start}, seq {stop - start}: max |diff| {diff:.3e}"
                )
    return checks, failures


def _check_greedy(model, decoder, rng, atol: float | None) -> tuple[dict, list[str]]:
    """(what was compared, failures): GREEDY_PROMPTS decoded together by the engine against transformers'
    `generate`, EOS ignored on both sides so that every row runs its length."""
    vocab = model.get_input_embeddings().num_embeddings
    prompts = [rng.integers(5, vocab, size=n).tolist() for n in GREEDY_PROMPTS]
    pad = model.config.pad_token_id or 0
    want = _generate(model, prompts, pad)
    got = np.stack(list(decoder.steps(prompts, Sampling(max_new_tokens=GREEDY_TOKENS))), axis=1)
    # generate() may still end a row at the model's own EOS (its generation config) and pad it from there:
    # a row is compared up to and including its first EOS.
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    for row in range(len(want)):
        ended = np.flatnonzero(np.isin(want[row], eos))
        stop = int(ended[0]) + 1 if ended.size else len(want[row])
        if (want[row, :stop] == got[row, :stop]).all():  # what follows transformers' EOS is its padding
            want[row, stop:] = got[row, stop:]
    same_rows = int((got == want).all(1).sum())
    ties = _ties(model, prompts, want, got, pad, atol)
    greedy = {
        "prompt_lengths": list(GREEDY_PROMPTS),
        "new_tokens": GREEDY_TOKENS,
        "identical_rows": f"{same_rows}/{len(prompts)}",
        "token_agreement": f"{int((got == want).sum())}/{want.size}",
    }
    if ties:
        greedy["diverged_at_ties"] = ties
    if atol is None or same_rows + len(ties) == len(prompts):
        return greedy, []
    return greedy, [
        f"  greedy     {len(prompts) - same_rows - len(ties)} of {len(prompts)} prompts decode other tokens "
        f"than transformers' generate (not at a tie of their logits)"
    ]


def _generate(model, prompts: list[list[int]], pad: int) -> np.ndarray:
    """transformers' greedy tokens for `prompts` (left padded into one batch), GREEDY_TOKENS of each, no EOS:
    (prompts, GREEDY_TOKENS)."""
    import torch  # the 'tune' extra
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :], mask[row, width - len(p) :] = torch.tensor(p), 1
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # generate() notes that this config differs from the model's: it is meant to
    with torch.no_grad():
        want = model.generate(
            ids,
            attention_mask=mask,
            generation_config=GenerationConfig(
                max_new_tokens=GREEDY_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=pad
            ),
        )[:, width:].numpy()
    hf_logging.set_verbosity(verbosity)
    return want


def _ties(model, prompts, want, got, pad: int, atol: float | None) -> list[dict]:
    """Rows where the engine's greedy tokens part from transformers' at a tie: at the first step where they
    differ, PyTorch's logits for its own token and for the engine's are within `atol` (the fp32 tolerance), so
    either choice is right and the rest of the row follows from it. (Untrained models have nearly flat logits:
    ties are common there, and never a sign of a wrong graph.)"""
    import torch

    ties = []
    if atol is None:
        return ties
    for row in np.flatnonzero((got != want).any(1)):
        step = int(np.argmax(got[row] != want[row]))
        ids = torch.tensor([list(prompts[row]) + want[row, :step].tolist()])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        margin = float(logits[int(want[row, step])] - logits[int(got[row, step])])
        if abs(margin) <= atol:
            ties.append({"prompt": int(row), "step": step, "logit_margin": margin})
    return ties
