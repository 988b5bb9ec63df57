"""Export of a BERT-base-sized model pruned to 72 of 144 heads (non-uniform) and half of its FFN neurons.

    python benchmarks/export/bert_base_geometry.py

Random weights (the export does not depend on their values). Records the time to export and fuse, the fused-node
counts (one Attention per layer that keeps heads is the goal) and the validation against PyTorch in
bert_base_geometry.json here.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEPT_HEADS = [12, 9, 8, 6, 6, 5, 5, 4, 4, 3, 2, 8]  # 72 of 144, different in every layer but two


def main() -> int:
    import torch
    from tokenizers import Tokenizer, models
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    from dsee_deploy.export import export_onnx, onnx_parameter_count, validate_onnx
    from dsee_deploy.export.optimize import optimize_for_cpu
    from dsee_deploy.surgery import apply_structure
    from dsee_deploy.tasks import Classification, get_task

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()
    dense = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    layers = [
        {
            "kept_heads": sorted(torch.randperm(12, generator=g)[:k].tolist()),
            "kept_ffn": sorted(torch.randperm(3072, generator=g)[:1536].tolist()),
        }
        for k in KEPT_HEADS
    ]
    # Any tokenizer will do for the export's files; a word-level one keeps the benchmark offline.
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, "[UNK]")),
        unk_token="[UNK]",
        pad_token="[PAD]",
    )
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        apply_structure(model, layers)
        path = export_onnx(model, tok, get_task(Classification.kind), Path(tmp))
        exported = time.perf_counter() - started
        fused = optimize_for_cpu(path, "bert")
        total = time.perf_counter() - started
        validation = validate_onnx(model, path)
        graph_params = onnx_parameter_count(path)
    result = {
        "what": "BERT-base geometry, 72/144 heads (non-uniform), 50 % FFN, random weights: dsee-export's path",
        "heads_per_layer": KEPT_HEADS,
        "ffn_per_layer": [1536] * 12,
        "parameters": {
            "dense": dense,
            "pruned": sum(p.numel() for p in model.parameters()),
            "graph": graph_params,
        },
        "fused": fused,
        "attention_fused_in_all_layers_with_heads": fused.get("Attention", 0)
        == sum(k > 0 for k in KEPT_HEADS),
        "export_seconds": round(exported, 2),
        "export_and_optimize_seconds": round(total, 2),
        "validation_max_abs_diff": max(c["max_abs_diff"] for c in validation["checks"]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
    }
    (HERE / "bert_base_geometry.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
