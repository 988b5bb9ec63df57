"""Sentence-embedding variants timed as users call them: texts in, embeddings out (tokenization, the graph and
pooling all counted), on the evaluation data's own texts, interleaved as the shapes are (speed/timing.py):

    batch 1    a fixed sample of 16 texts embedded one at a time: milliseconds per text
    batch 32   a fixed sample of 128 texts embedded 32 at a time: texts per second

Beside our engines run sentence-transformers' own backends of the dense model, where installed: the
alternatives users pick today (issue 43).

    st torch           SentenceTransformer(dense), PyTorch
    st onnx int8       backend="onnx" with export_dynamic_quantized_onnx_model for this CPU (avx512_vnni, avx512
                       or avx2, as its flags allow)
    st openvino int8   backend="openvino" with export_static_quantized_openvino_model, calibrated on up to 300
                       of the evaluation texts (if anything, this favours it)

Every variant gets the same texts in the same batches, and the same number of threads (sentence-transformers'
ONNX Runtime session and OpenVINO's inference threads are set to it). sentence-transformers writes its exports
beside the model's weights: they are made in a temporary copy of the dense model, removed after the run, never in
the user's model. Quality beside the speed: each variant's Spearman of pair cosines (scored pairs) or nDCG@10
(a BEIR folder), as bench/accuracy.py computes it for our engines."""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..similarity import correlation, pair_cosines, retrieval_scores
from ..speed.timing import interleave, speedup
from .variants import Variant

SAMPLES = {1: 16, 32: 128}  # texts per timed call, by batch size
QUALITY = ("spearman", "pearson", "ndcg@10", "recall@10")  # what `quality` reports, by the data's kind


def distinct_texts(data: dict) -> list[str]:
    """The distinct texts of one variant's evaluation data (both sides of pairs; queries, then the corpus)."""
    if "retrieval" in data:
        corpus, queries, _ = data["retrieval"]
        return list(dict.fromkeys([*queries, *corpus]))
    return list(dict.fromkeys(t for pair in data["texts"] for t in pair))


def quality(embed: Callable[[list[str]], np.ndarray], data: dict) -> dict:
    """Spearman and Pearson of pair cosines, or nDCG@10 and recall@10, of `embed` on the evaluation data."""
    if "retrieval" in data:
        corpus, queries, relevant = data["retrieval"]
        return retrieval_scores(_batched(embed, queries), _batched(embed, corpus), relevant)
    texts = distinct_texts(data)
    row = {t: i for i, t in enumerate(texts)}
    vectors = _batched(embed, texts)
    cosines = pair_cosines(
        vectors[[row[a] for a, _ in data["texts"]]], vectors[[row[b] for _, b in data["texts"]]]
    )
    return {m: correlation(m, cosines, data["labels"]) for m in ("spearman", "pearson")}


def _batched(embed, texts: list[str], size: int = 32) -> np.ndarray:
    return np.concatenate([embed(texts[i : i + size]) for i in range(0, len(texts), size)])


def engine_embedders(variants: list[Variant], threads: int, spin_us: int) -> dict[str, Callable]:
    """Our sentence-embedding engines on the CPU, embedding as Engine.embed does for a server."""
    from ..serve import Engine

    out = {}
    for v in variants:
        if v.kind == "onnxruntime" and v.provider in ("-", "CPUExecutionProvider"):
            engine = Engine.load(
                v.root, threads=threads, providers=["CPUExecutionProvider"], spin_us=spin_us, verify=False
            )  # verified when the variant was made
            out[v.name] = lambda texts, engine=engine: engine.embed(texts, batch_size=len(texts))
    return out


def st_embedders(
    dense: Path, work: Path, calibration: list[str], threads: int, skipped: dict, log=print
) -> dict[str, Callable]:
    """sentence-transformers' backends of the dense model (module notes), those installed; `dense` must be a
    sentence-transformers directory (modules.json). Exports are written under `work`; a backend left out is
    added to `skipped` with the reason."""
    if importlib.util.find_spec("sentence_transformers") is None:
        log("dsee-bench: sentence-transformers is not installed: its backends are not timed")
        skipped["st"] = "sentence-transformers is not installed (the 'embeddings' extra)"
        return {}
    if not (dense / "modules.json").is_file():
        log(
            f"dsee-bench: the dense source '{dense}' is not a sentence-transformers directory: its backends are "
            f"not timed"
        )
        skipped["st"] = f"the dense source '{dense}' is not a sentence-transformers directory"
        return {}
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model_dir = work / "st-dense"
    shutil.copytree(
        dense, model_dir, ignore=shutil.ignore_patterns("onnx", "openvino", "*.onnx", "*.xml", "*.bin")
    )
    out = {"st torch": SentenceTransformer(str(model_dir), device="cpu", backend="torch")}
    for name, make in (("st onnx int8", _st_onnx_int8), ("st openvino int8", _st_openvino_int8)):
        try:
            out[name] = make(model_dir, calibration, threads)
            out[name].encode(calibration[:2])  # some fail only when they first run
        except ImportError as exc:  # the backend's packages are missing: what users of it install
            log(f"dsee-bench: {name} is not timed: {exc}")
            skipped[name] = f"not installed ({exc})".replace("\n", " ")
        except Exception as exc:  # noqa: BLE001 - a third-party backend that cannot run this model is left out
            log(f"dsee-bench: {name} is not timed: it failed on this model: {type(exc).__name__}: {exc}")
            skipped[name] = f"failed on this model: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return {
        name: lambda texts, m=model: m.encode(texts, batch_size=len(texts), convert_to_numpy=True)
        for name, model in out.items()
    }


def _st_onnx_int8(model_dir: Path, calibration: list[str], threads: int):
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    from ..speed.machine import machine

    flags = machine()["cpu_flags"]
    config = "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"
    config = "arm64" if {"neon", "asimd"} & set(flags) else config
    export_dynamic_quantized_onnx_model(
        SentenceTransformer(str(model_dir), device="cpu", backend="onnx"), config, str(model_dir)
    )
    (path,) = sorted((model_dir / "onnx").glob(f"model_*{config}.onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return SentenceTransformer(
        str(model_dir),
        device="cpu",
        backend="onnx",
        model_kwargs={
            "file_name": f"onnx/{path.name}",
            "provider": "CPUExecutionProvider",
            "session_options": options,
        },
    )


def _st_openvino_int8(model_dir: Path, calibration: list[str], threads: int):
    from sentence_transformers import SentenceTransformer, export_static_quantized_openvino_model

    # Calibrated on local texts: its default calibration set is downloaded from the Hub (no network here).
    data = model_dir.parent / "calibration"
    data.mkdir(exist_ok=True)
    (data / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in calibration[:300]))
    export_static_quantized_openvino_model(
        SentenceTransformer(str(model_dir), device="cpu", backend="openvino"),
        None,
        str(model_dir),
        dataset_name=str(data),
        dataset_config_name="default",
        dataset_split="train",
        column_name="text",
    )
    (path,) = sorted((model_dir / "openvino").glob("openvino_model_*quantized.xml"))
    return SentenceTransformer(
        str(model_dir),
        device="cpu",
        backend="openvino",
        model_kwargs={"file_name": f"openvino/{path.name}", "ov_config": {"INFERENCE_NUM_THREADS": threads}},
    )


def time_texts(
    variants: list[Variant], eval_data: dict, scored: dict, dense: Path, options, spin_us: int, log=print
) -> dict | None:
    """The `texts` section of results.json (bench/report.py), or None where no variant embeds sentences.
    `scored`: the accuracy pass's scores, which our engines' quality is read from (they are not embedded
    again); `options`: the run's BenchConfig (threads, rounds, warm-up, st_backends)."""
    from tqdm.auto import tqdm

    ours = [v for v in variants if v.name in eval_data and _embeds(v)]
    embedders = engine_embedders(ours, options.threads, spin_us)
    if not embedders:
        return None
    data = eval_data[next(iter(embedders))]
    texts = distinct_texts(data)
    rng = np.random.default_rng(0)
    sample = {
        b: [texts[i] for i in rng.choice(len(texts), min(n, len(texts)), replace=False)]
        for b, n in SAMPLES.items()
    }
    section = {
        "texts": len(texts),
        "baseline": ours[0].name if ours[0].baseline else next(iter(embedders)),
        "rows": [],
        "quality": {name: {m: scored[name][m] for m in QUALITY if m in scored[name]} for name in embedders},
        "st_skipped": {},
        "versions": _versions(),
    }
    with tempfile.TemporaryDirectory(prefix="dsee-bench-st-") as work:
        if options.st_backends:
            theirs = st_embedders(dense, Path(work), texts, options.threads, section["st_skipped"], log)
            for name, embed in tqdm(theirs.items(), desc="quality (texts in)", unit="variant"):
                section["quality"][name] = quality(embed, data)
            embedders.update(theirs)
        with tqdm(total=len(sample) * options.rounds, desc="timing (texts in)", unit="round") as bar:
            for batch, chosen in sample.items():
                section["rows"] += _timed(embedders, chosen, batch, options, bar, section["baseline"])
    return section


def _timed(embedders: dict, chosen: list[str], batch: int, options, bar, baseline: str) -> list[dict]:
    """Rows of one batch size: every embedder on `chosen` in batches of `batch`, interleaved."""
    chunks = [chosen[i : i + batch] for i in range(0, len(chosen), batch)]
    runners = {name: (lambda e=embed: [e(c) for c in chunks]) for name, embed in embedders.items()}
    timings = interleave(runners, options.rounds, options.warmup, options.target_block_ms / 1000, bar.update)
    best_st = _best_st(timings)
    rows = []
    for name, timing in timings.items():
        p50 = float(np.median(timing.runs))
        row = {
            "variant": name,
            "batch": batch,
            "texts": len(chosen),
            "ms_per_text": 1000 * p50 / len(chosen),
            "texts_per_s": len(chosen) / p50,
            "speedup": speedup(timings[baseline], timing)["median"],
        }
        if best_st and not name.startswith("st "):
            row["vs_best_st"] = {"variant": best_st, **speedup(timings[best_st], timing)}
        rows.append(row)
    return rows


def _versions() -> dict:
    """The versions of what sentence-transformers' backends run on, those installed."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("sentence-transformers", "optimum", "optimum-onnx", "optimum-intel", "openvino", "nncf"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _embeds(variant: Variant) -> bool:
    from ..tasks import get_task

    return get_task(variant.task).pair_similarity


def _best_st(timings: dict) -> str | None:
    """The fastest of sentence-transformers' backends (least median of round bests)."""
    st = {n: float(np.median(t.best)) for n, t in timings.items() if n.startswith("st ")}
    return min(st, key=st.get) if st else None
