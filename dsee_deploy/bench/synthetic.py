"""Models of a given geometry with random weights, for speed benchmarks: the dense model as a plain transformers
directory (the baseline users would ship) and a DSEE checkpoint of it, pruned to a given per-layer structure.
Speed does not depend on the weights' values, so no training is needed to measure it."""

from __future__ import annotations

from pathlib import Path

GEOMETRIES = {
    # BERT-base (uncased): 12 layers, 768 hidden, 12 heads, FFN 3072.
    "bert-base": {
        "num_hidden_layers": 12,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "minilm-l6": {
        "num_hidden_layers": 6,
        "hidden_size": 384,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
}


def build(output: str | Path, geometry: str, heads: list[int], ffn: float, seed: int = 0) -> dict[str, Path]:
    """Write OUTPUT/dense (transformers directory) and OUTPUT/pruned (DSEE checkpoint keeping heads[i] heads and
    a fraction `ffn` of the FFN neurons in layer i, chosen at random). Returns both paths."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from ..checkpoint import prepare_output_dir, save_checkpoint
    from ..data import Task
    from ..errors import DSEEError
    from ..models import base_weights_sha256, load_config, load_model
    from ..pruning import PruneConfig, prune_model
    from ..speed.engines import random_tokenizer
    from ..tasks import Classification
    from ..tuning import DSEEConfig, inject_dsee, train_head

    if geometry not in GEOMETRIES:
        raise DSEEError(f"geometry '{geometry}' is not known: use one of {', '.join(GEOMETRIES)}")
    shape = GEOMETRIES[geometry]
    if len(heads) != shape["num_hidden_layers"] or not all(
        0 <= h <= shape["num_attention_heads"] for h in heads
    ):
        raise DSEEError(
            f"heads {heads} must give 0..{shape['num_attention_heads']} kept heads for each of the "
            f"{shape['num_hidden_layers']} layers of {geometry}"
        )
    out = Path(output)
    torch.manual_seed(seed)
    config = BertConfig(**shape, num_labels=2, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})
    dense = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        # Fresh weights have many identical tensors (zero biases, unit LayerNorm scales), which the exporter
        # stores once and the int8 quantizer then treats as shared activations-side inputs; trained weights have
        # none. Small noise makes every tensor distinct, so the graph is the one a trained model gets.
        for p in dense.parameters():
            p.add_(0.02 * torch.randn(p.shape))
    dense_dir = prepare_output_dir(out / "dense", overwrite=True)
    dense.save_pretrained(dense_dir)
    tokenizer = random_tokenizer()
    tokenizer.save_pretrained(dense_dir)

    task = Task(Classification.kind, "sentence", None, "label", ["0", "1"])
    model, info = load_model(str(dense_dir), load_config(str(dense_dir), task), task)
    sha = base_weights_sha256(model, info["missing_keys"])
    dsee = DSEEConfig(sparse_init="random", seed=seed)
    inject_dsee(model, dsee)
    train_head(model, info["missing_keys"])
    g = torch.Generator().manual_seed(seed)
    n_heads, width = shape["num_attention_heads"], shape["intermediate_size"]
    layout = [
        {
            "kept_heads": sorted(torch.randperm(n_heads, generator=g)[:k].tolist()),
            "kept_ffn": sorted(torch.randperm(width, generator=g)[: round(ffn * width)].tolist()),
        }
        for k in heads
    ]
    record, masks = prune_model(model, PruneConfig(heads=0.5, ffn=0.5, importance="wabs"), layout=layout)
    pruned_dir = prepare_output_dir(out / "pruned", overwrite=True)
    base = {"name_or_path": str(dense_dir.resolve()), "sha256": sha}
    save_checkpoint(pruned_dir, model, tokenizer, dsee, task, base, {}, pruning=record, masks=masks)
    return {"dense": dense_dir, "pruned": pruned_dir}
