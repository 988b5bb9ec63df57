"""Writing a model as a sentence-transformers directory (to_sentence_transformers), with sentence-transformers'
own modules, so that `SentenceTransformer(path)` loads it to the embeddings our feature-extraction engine gives.

What is written: the merged (and, for a pruned checkpoint, physically pruned) encoder as the Transformer module
(config.json, model.safetensors, the tokenizer, sentence_bert_config.json with max_seq_length = the length the
model was tuned with, which is where our engine truncates), 1_Pooling with the model's pooling, 2_Normalize
where it normalizes; with `engine`, our ONNX engine as onnx/model.onnx for `backend="onnx"`.

Pruned shapes: transformers rebuilds a model from config.json, which holds one FFN width for every layer and
cannot hold a layer without attention heads. The per-layer heads go into config.json's `pruned_heads` (which
transformers prunes again on load, so the heads are physically gone); each layer's FFN is zero-padded to the
widest layer's width, and a layer that lost every head keeps one head with zero weights. Both paddings add
exact zeros (GELU(0) = 0 through a zero row of the FFN's output projection; a zero head attends to zero values),
so the embeddings are unchanged; the saved model is checked against the pruned one before anything is written.
The ONNX engine is the physically pruned graph in full.

`backend="onnx"`: sentence-transformers runs onnx/model.onnx through optimum's ORTModelForFeatureExtraction,
which feeds the graph's inputs by name (input_ids, attention_mask, token_type_ids; absent ones are left out)
and reads the output named `last_hidden_state`, then applies its own Pooling and Normalize modules. Our
feature-extraction graph outputs (last_hidden_state, sentence_embedding): the first is what it reads, the second
(our own pooling) it ignores, so the engine fits as it is.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..architectures import get_module, get_spec, longest_input
from ..checkpoint import CONFIG_FILE, is_peft_adapter, load_dsee
from ..data import Task
from ..errors import DSEEError, require_extra
from ..export.pooling import pooling_of, sentence_encoder
from ..manifest import Manifest
from ..models import local_dir, packaged_model
from ..outputs import Output
from ..surgery import AttentionSkip
from ..tasks import FeatureExtraction
from ..tuning import unwrap_dsee
from ..tuning.layer import projection_shape

ONNX_FILE = Path("onnx") / "model.onnx"  # where sentence-transformers' backend="onnx" looks first
# Texts the written directory is checked on: short and long, so that padding and the mean over tokens count.
CHECK_TEXTS = ["a", "the film was good", "a very long and dull movie, but the music was great and moving"]
# Cosine between the written model's embeddings and the pruned model's: two fp32 computations of one function
# (zero-padded matrices add exact zeros) differ by rounding, ~1e-7; a wrong slice moves them by 1e-2 and more.
MIN_COSINE = 0.9999


@dataclass
class _Encoder:
    model: Any  # the transformers base model (merged, physically pruned, fp32)
    tokenizer: Any
    pooling: str  # "mean" or "cls"
    normalize: bool
    max_length: int  # where our engine truncates: the length the model was tuned with


def to_sentence_transformers(
    source: str | Path,
    output: str | Path,
    *,
    engine: str | Path | None = None,
    overwrite: bool = False,
    base_model: str | None = None,
) -> Path:
    """Write `source` (a dsee-tune / dsee-prune checkpoint, a PEFT adapter, or a plain transformers or
    sentence-transformers model directory; the packaged model by name) as a sentence-transformers directory
    `output` that `SentenceTransformer(output)` loads to the same embeddings as our feature-extraction engine of
    `source`. `engine`: a dsee-export feature-extraction engine of that source, copied to onnx/model.onnx so that
    `SentenceTransformer(output, backend="onnx")` runs it. Refuses to replace `output` without `overwrite`;
    writes it whole or not at all. Returns the output path."""
    require_extra("tune", "torch", "transformers", "safetensors")
    # Optional extra: imported here, so that dsee_deploy.interop imports without it.
    require_extra("embeddings", "sentence_transformers")
    from sentence_transformers import SentenceTransformer, models

    src = packaged_model(source) or Path(source)
    manifest = _engine(Path(engine), src) if engine is not None else None
    target = Output(output, overwrite, {"the source": src, "the engine": engine}, flag="output")
    loaded = _load(src, base_model)
    spec = get_spec(loaded.model.config.model_type)
    if manifest is not None:  # the engine's pooling and truncation are what the directory must reproduce
        loaded.pooling, loaded.normalize = manifest.pooling or loaded.pooling, bool(manifest.normalize)
        loaded.max_length = min(manifest.max_length, spec.max_tokens(loaded.model.config))
    with target as out:
        staging = out / ".transformer"
        _loadable(loaded.model).save_pretrained(str(staging), safe_serialization=True)
        loaded.tokenizer.save_pretrained(str(staging))
        transformer = models.Transformer(str(staging), max_seq_length=loaded.max_length)
        width = spec.hidden_size(loaded.model.config)
        modules = [transformer, models.Pooling(width, pooling_mode=loaded.pooling)]
        if loaded.normalize:
            modules.append(models.Normalize())
        SentenceTransformer(modules=modules, device="cpu").save(str(out), create_model_card=False)
        shutil.rmtree(staging)
        _check_written(out, loaded)
        if manifest is not None:
            _copy_engine(Path(engine), manifest, out)
    return Path(output)


def _load(src: Path, base_model: str | None) -> _Encoder:
    """The model as dsee-export takes it for feature extraction: merged and shrunk, in fp32, with the pooling and
    normalization its sentence-transformers config declares (mean, none where it declares nothing)."""
    from transformers import AutoConfig, AutoModel

    from ..models import load_tokenizer

    if is_peft_adapter(src) or (src / CONFIG_FILE).is_file():
        model, tokenizer, info = load_dsee(src, base_model)
        encoder = unwrap_dsee(model).base_model.float().eval()
        pooling, normalize = pooling_of(local_dir(base_model or info["base_model"]["name_or_path"]))
        return _Encoder(encoder, tokenizer, pooling, normalize, Task.from_dict(info["task"]).max_length)
    if not (src / "config.json").is_file():
        raise DSEEError(
            f"source '{src}' is neither a dsee-tune checkpoint nor a transformers model directory (no "
            f"config.json): pass a checkpoint, a PEFT adapter or a model directory"
        )
    if (src / "adapter.safetensors").is_file():
        raise DSEEError(
            f"checkpoint '{src}' has adapter.safetensors but no {CONFIG_FILE}: it is an incomplete dsee-tune "
            f"output; restore {CONFIG_FILE} or re-run dsee-tune"
        )
    config = AutoConfig.from_pretrained(src)
    get_spec(config.model_type)  # refuses an unregistered architecture in one line
    try:
        encoder = AutoModel.from_pretrained(src, use_safetensors=True).float().eval()
    except (OSError, ValueError) as exc:
        raise DSEEError(
            f"could not load '{src}' ({str(exc).splitlines()[0]}): it needs model.safetensors"
        ) from exc
    tokenizer = load_tokenizer(str(src))
    # As dsee-export takes a plain model's length: its tokenizer's limit, within its positions.
    return _Encoder(encoder, tokenizer, *pooling_of(src), longest_input(config, tokenizer))


def _loadable(encoder):
    """`encoder` as a model that transformers rebuilds from its config.json: pruned heads listed in
    `pruned_heads`, every FFN zero-padded to the widest, a layer without heads given one zero head (see the
    module's docstring). The model itself where nothing is pruned."""
    import torch

    spec = get_spec(encoder.config.model_type)
    blocks = spec.blocks(encoder)
    n_heads = spec.num_heads(encoder.config)
    widths = [projection_shape(get_module(b, spec.ffn_in))[0] for b in blocks]
    pruned, skips = {}, {}
    for i, block in enumerate(blocks):
        skip = get_module(block, spec.attention_skip)
        if isinstance(skip, AttentionSkip):  # heads 1.. removed; head 0 stays, with zero weights
            pruned[i], skips[i] = list(range(1, n_heads)), skip
        elif getattr(get_module(block, spec.attention), "pruned_heads", None):
            pruned[i] = sorted(get_module(block, spec.attention).pruned_heads)
    if not pruned and len(set(widths)) == 1 and widths[0] == spec.ffn_width(encoder.config):
        return encoder
    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    config.pruned_heads = pruned
    setattr(config, spec.ffn_key, max(widths))
    fresh = type(encoder)(config).eval()  # transformers prunes config.pruned_heads as it builds the model
    source = encoder.state_dict()
    names = {id(m): n for n, m in encoder.named_modules()}
    for i, skip in skips.items():
        if skip.bias is not None:  # O was inside the replaced module: its bias is the skip's
            source[f"{names[id(blocks[i])]}.{spec.attn_out}.bias"] = skip.bias
    state = {}
    for name, tensor in fresh.state_dict().items():
        # (out, in) or Conv1D's (in, out): a pruned tensor fills the leading part of its padded shape, zeros after
        padded = torch.zeros_like(tensor)
        if name in source:
            kept = source[name]
            padded[tuple(slice(0, s) for s in kept.shape)] = kept
        state[name] = padded
    fresh.load_state_dict(state)
    _check_same(fresh, encoder)
    return fresh


def _check_same(fresh, encoder) -> None:
    """Shrunk against padded: the same last_hidden_state on a fixed input (before anything is saved)."""
    import torch

    ids = torch.tensor([[1, 5, 7, 9, 11, 2], [1, 4, 2, 0, 0, 0]]) % encoder.config.vocab_size
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        want = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        got = fresh(input_ids=ids, attention_mask=mask).last_hidden_state
    diff = float((got - want).abs().max())
    # Zero padding adds exact zeros; the sums' order may differ in the last fp32 bit.
    if diff > 1e-4:
        raise DSEEError(
            f"the model rebuilt from its config.json differs from the pruned model by {diff:.2e} (> 1e-4): this "
            f"architecture's pruned layout cannot be written as a sentence-transformers directory; use the "
            f"dsee-export engine"
        )


def _check_written(out: Path, loaded: _Encoder) -> None:
    """SentenceTransformer(out) against the pruned model with our pooling, on CHECK_TEXTS."""
    import torch
    from sentence_transformers import SentenceTransformer  # the 'embeddings' extra

    reference = sentence_encoder(loaded.model, loaded.pooling, loaded.normalize)
    batch = loaded.tokenizer(
        CHECK_TEXTS, padding=True, truncation=True, max_length=loaded.max_length, return_tensors="pt"
    )
    with torch.no_grad():
        want = reference(batch["input_ids"], batch["attention_mask"]).sentence_embedding
    got = SentenceTransformer(str(out), device="cpu").encode(CHECK_TEXTS, convert_to_tensor=True)
    cosine = float(torch.nn.functional.cosine_similarity(got.float(), want, dim=-1).min())
    if cosine < MIN_COSINE:
        raise DSEEError(
            f"SentenceTransformer('{out}') gives embeddings at cosine {cosine:.6f} (< {MIN_COSINE}) to the "
            f"model's: not written; report this with the source"
        )


def _engine(engine: Path, src: Path) -> Manifest:
    """The manifest of `engine`, once it is known to be a feature-extraction ONNX engine of `src`."""
    manifest = Manifest.read(engine)  # refuses a missing, failed or edited engine, with the fix
    if manifest.task != FeatureExtraction.kind or manifest.format != "onnx":
        raise DSEEError(
            f"engine '{engine}' is a {manifest.task} {manifest.format} engine; backend='onnx' needs a "
            f"feature-extraction ONNX engine: dsee-export {src} --output DIR --task feature-extraction"
        )
    if Path(manifest.source).resolve() != src.resolve():
        raise DSEEError(
            f"engine '{engine}' was exported from '{manifest.source}', not from '{src}': pass an engine of this "
            f"source (dsee-export {src} --output DIR --task feature-extraction)"
        )
    return manifest


def _copy_engine(engine: Path, manifest: Manifest, out: Path) -> None:
    """The graph to onnx/model.onnx, with its external weights where it has them (they keep their names: the
    graph names them)."""
    (out / ONNX_FILE).parent.mkdir()
    shutil.copyfile(engine / manifest.engine, out / ONNX_FILE)
    for name in manifest.files:
        if name != manifest.engine and name.startswith(f"{manifest.engine}."):  # model.onnx.data
            shutil.copyfile(engine / name, out / ONNX_FILE.parent / Path(name).name)
