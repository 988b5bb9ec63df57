"""Tiny models for every registered architecture, built from configs here (no downloads), and small data."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    GPT2Config,
    PreTrainedTokenizerFast,
    RobertaConfig,
    XLMRobertaConfig,
)

import dsee_deploy.pruning.prune as prune_module
from dsee_deploy import load_dsee
from dsee_deploy.architectures import get_spec
from dsee_deploy.checkpoint import prepare_output_dir, save_checkpoint
from dsee_deploy.data import Task
from dsee_deploy.models import base_weights_sha256, load_config, load_model, load_tokenizer
from dsee_deploy.pruning import PruneConfig, prune_model
from dsee_deploy.tasks import CausalLM, Classification
from dsee_deploy.tuning import DSEEConfig, dsee_layers, inject_dsee, train_head

WORDS = (
    "the a film movie story plot actor actress scene music was is it this that and but very so "
    "good great fine lovely moving funny bright warm bad dull boring long awful flat weak cold slow "
    "i liked hated loved enjoyed not really quite too"
).split()
POSITIVE = {
    "good",
    "great",
    "fine",
    "lovely",
    "moving",
    "funny",
    "bright",
    "warm",
    "liked",
    "loved",
    "enjoyed",
}
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + WORDS
V = len(VOCAB)

# One tiny config per registered model_type: test_registry fails if a spec has no entry here.
# Two layers, four heads of size 8, FFN width 48; pad/bos/eos ids point at the special tokens above.
TINY_CONFIGS = {
    "bert": lambda: BertConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        pad_token_id=0,
    ),
    "roberta": lambda: RobertaConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=70,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        type_vocab_size=1,
    ),
    "xlm-roberta": lambda: XLMRobertaConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=70,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        type_vocab_size=1,
    ),
    "electra": lambda: ElectraConfig(
        vocab_size=V,
        embedding_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        pad_token_id=0,
    ),
    "distilbert": lambda: DistilBertConfig(
        vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=64, pad_token_id=0
    ),
    "gpt2": lambda: GPT2Config(
        vocab_size=V,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=48,
        n_positions=64,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    ),
}


def make_tokenizer(token_types: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over VOCAB, with [CLS] x [SEP] (y [SEP]) templates, built in memory."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[CLS]",
        eos_token="[SEP]",
        model_max_length=60,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"]
        if token_types
        else ["input_ids", "attention_mask"],
    )


def build_base(model_type: str, path: Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny base model (safetensors) and the tokenizer to `path`."""
    torch.manual_seed(seed)
    config = TINY_CONFIGS[model_type]()
    cls = AutoModelForCausalLM if get_spec(model_type).decoder else AutoModel
    model = cls.from_config(config)
    with torch.no_grad():
        # Trained weights have no two identical tensors; fresh ones do (zero biases, unit LayerNorm weights),
        # which an ONNX exporter would store once. Small seeded noise makes every tensor distinct.
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape))
    model.save_pretrained(path)
    # DistilBERT and GPT-2 take no token_type_ids
    make_tokenizer(token_types=hasattr(config, "type_vocab_size")).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {mt: build_base(mt, root / mt) for mt in TINY_CONFIGS}


def sentences(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """Short sentences labelled 1 when they hold more positive than negative words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, rng.randint(3, 9))
        pos = sum(w in POSITIVE for w in words)
        rows.append((" ".join(words), int(pos * 2 >= 1)))
    return rows


def write_tsv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def sst_like(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_tsv(root / "train.tsv", ["sentence", "label"], sentences(96, seed=1)),
        "dev": write_tsv(root / "dev.tsv", ["sentence", "label"], sentences(32, seed=2)),
    }


# Tolerance of comparing logits of two fp32 computations of one function in another order (merged against
# unmerged, shrunk against masked, reloaded against in memory): the weights differ by one fp32 rounding each
# (W + s·BA is not W then + s·BA), which moves tiny-model logits by ~1e-7; 1e-5 leaves room, and a wrong merge,
# mask or slice moves them by 1e-2 and more.
SAME_FUNCTION = {"atol": 1e-5, "rtol": 0}


# dsee-tune flags for a run of seconds on the tiny models: what the CLI tests train with.
FAST = ["--max-steps", "4", "--batch-size", "8", "--max-length", "24"]


def run_cli(fn, argv, capsys) -> tuple[int, str, str]:
    """Run a CLI entry point in-process: (exit code, stdout, stderr)."""
    code = fn([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def batch_for(tokenizer) -> dict:
    texts = ["the film was good", "a very long and dull movie but the music was great", "bad"]
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


# --- checkpoints made in memory, shared by the test files ---------------------------------------------------


def randomize_updates(model, seed=0):
    """Trained-looking updates: B and S are zero at init, which would make merge tests vacuous."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in dsee_layers(model):
            for u in layer.updates.values():
                u.lora_B.copy_(torch.randn(u.lora_B.shape, generator=gen) * 0.1)
                u.sparse_values.copy_(torch.randn(u.sparse_values.shape, generator=gen))


def make_checkpoint(model_type: str, base, out, seed: int = 0, **dsee):
    """A checkpoint with random (trained-looking) updates, and the in-memory model it was saved from; `dsee`
    overrides the DSEE options (rank 4, alpha 8, N 6, the architecture's targets)."""
    task = (
        Task(CausalLM.kind)
        if get_spec(model_type).decoder
        else Task(Classification.kind, "sentence", None, "label", ["neg", "pos"])
    )
    config = load_config(str(base), task)
    model, info = load_model(str(base), config, task)
    sha = base_weights_sha256(model, info["missing_keys"])
    dsee = DSEEConfig(**(dict(rank=4, alpha=8, num_sparse=6, seed=seed) | dsee))
    inject_dsee(model, dsee)
    train_head(model, info["missing_keys"])
    randomize_updates(model, seed)
    tok = load_tokenizer(str(base))
    out = prepare_output_dir(out, overwrite=False)
    save_checkpoint(out, model, tok, dsee, task, {"name_or_path": str(base), "sha256": sha}, {})
    return model.eval(), tok


# One layer keeps 2 of 4 heads and 16 of 48 neurons, the other nothing: a layer pruned away whole.
LAYOUT = [{"kept_heads": [0, 2], "kept_ffn": list(range(0, 48, 3))}, {"kept_heads": [], "kept_ffn": []}]


def save_pruned(tmp_path, model, tok, record, masks):
    """Save a model pruned in memory as a checkpoint beside the dense one it came from (tmp_path / 'dense')."""
    info = load_dsee(tmp_path / "dense")[2]
    out = prepare_output_dir(tmp_path / "pruned", overwrite=False)
    dsee, task = DSEEConfig.from_dict(info["dsee"]), Task.from_dict(info["task"])
    save_checkpoint(out, model, tok, dsee, task, info["base_model"], {}, pruning=record, masks=masks)
    return out


@pytest.fixture
def pruned_bert(tiny_bases, tmp_path, monkeypatch):
    """A tiny BERT checkpoint: layer 0 keeps 2 of 4 heads and 16 of 48 neurons, layer 1 nothing."""
    model, tok = make_checkpoint("bert", tiny_bases["bert"], tmp_path / "dense")
    layouts = iter([[e["kept_heads"] for e in LAYOUT], [e["kept_ffn"] for e in LAYOUT]])
    monkeypatch.setattr(prune_module, "keep_structured", lambda *a, **k: next(layouts))
    return save_pruned(
        tmp_path, model, tok, *prune_model(model, PruneConfig(heads=0.5, ffn=0.5, importance="wabs"))
    )


@pytest.fixture
def labelled(tmp_path):
    rows = [(text, ["neg", "pos"][label]) for text, label in sentences(64, seed=3)]
    return write_tsv(tmp_path / "labelled.tsv", ["sentence", "label"], rows)


# --- engines for the serving tests, built once per session ------------------------------------------------

# What the serving engines are tuned with: FAST's flags as a TuneConfig.
FAST_TUNE = dict(max_steps=4, batch_size=8, max_length=24)


@pytest.fixture(scope="session")
def engines(tmp_path_factory) -> dict:
    """Tiny real engines: classification (BERT, string labels), regression on sentence pairs (DistilBERT: no
    token_type_ids), and feature extraction (the bare BERT encoder), each through dd.export."""
    import dsee_deploy as dd

    root = tmp_path_factory.mktemp("serve")
    bert, distil = build_base("bert", root / "bert"), build_base("distilbert", root / "distilbert")
    rows = [(s, ["negative", "positive"][y]) for s, y in sentences(96, 1)]
    cls_data = write_tsv(root / "cls.tsv", ["sentence", "label"], rows)
    pairs = [
        (a, b, round(1.7 * y + 0.3 * (i % 3), 2))
        for i, ((a, y), (b, _)) in enumerate(zip(sentences(40, 5), sentences(40, 6), strict=True))
    ]
    reg_data = write_tsv(root / "sts.tsv", ["sentence1", "sentence2", "score"], pairs)
    out = {}
    for name, base, data in (("classification", bert, cls_data), ("regression", distil, reg_data)):
        dd.tune(data, root / f"{name}-ckpt", model=str(base), config=dd.TuneConfig(**FAST_TUNE))
        dd.export(root / f"{name}-ckpt", root / name)
        out[name] = root / name
    dd.export(root / "classification-ckpt", root / "triton", dd.ExportConfig(format="triton", name="sst"))
    out["triton"] = root / "triton" / "sst"
    dd.export(bert, root / "fe", dd.ExportConfig(task="feature-extraction"))
    out["feature-extraction"] = root / "fe"
    out["bert-base"] = bert
    return out


@pytest.fixture(scope="session")
def classifier(engines):
    from dsee_deploy.serve import Engine

    return Engine.load(engines["classification"], threads=1)


@pytest.fixture(scope="session", autouse=True)
def short_speedup_passes():
    """dsee-export times its speed-up in passes of at least 4 s, to spread them over a shared machine's slow
    stretches; the tests' tiny engines run the same passes without the minimum (32 exports measure one)."""
    from dsee_deploy.speed import speedup as latency

    previous, latency.SPEEDUP_PASS_S = latency.SPEEDUP_PASS_S, 0.0
    yield
    latency.SPEEDUP_PASS_S = previous


@pytest.fixture(scope="session", autouse=True)
def latency_cache(tmp_path_factory):
    """Latency models measured by the tests go to one directory of this session (shared between tests, never
    the user's ~/.cache)."""
    import os

    path = tmp_path_factory.mktemp("latency-cache")
    previous = os.environ.get("DSEE_DEPLOY_CACHE")
    os.environ["DSEE_DEPLOY_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("DSEE_DEPLOY_CACHE", None)
    else:
        os.environ["DSEE_DEPLOY_CACHE"] = previous


@pytest.fixture
def tuned(tiny_bases, sst_like, tmp_path, capsys):
    """A tiny BERT tuned with DSEE for a few steps (what the pruning tests start from)."""
    from dsee_deploy.cli.tune import main as tune

    out = tmp_path / "tuned"
    code, _, err = run_cli(
        tune,
        [
            "--model",
            tiny_bases["bert"],
            "--train",
            sst_like["train"],
            "--eval",
            sst_like["dev"],
            "--output",
            out,
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    return out
