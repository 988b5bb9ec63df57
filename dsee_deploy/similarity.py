"""How good sentence embeddings are, with numpy over the embeddings an engine (or PyTorch) returns:

- scored pairs (STS, SICK): Spearman and Pearson (x 100) of the cosine of the two sentences' embeddings
  against the human score, as sentence-transformers' EmbeddingSimilarityEvaluator reports them;
- retrieval (a corpus, queries and relevance judgements in BEIR's layout): nDCG@k and recall@k (x 100) of the
  corpus ranked by cosine for each query, as BEIR / MTEB compute them (pytrec_eval's ndcg_cut and recall).

numpy only, below the runtime: the engine, dsee-export --validate-data and dsee-bench share it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .errors import DSEEError

RETRIEVAL_METRICS = ("ndcg@10", "recall@10")


def normalized(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pair_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine of each row of `a` with the same row of `b`."""
    return np.sum(normalized(a) * normalized(b), axis=-1)


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata), for Spearman's correlation."""
    order = np.argsort(x, kind="stable")
    ranked = np.empty(len(x))
    ranked[order] = np.arange(1, len(x) + 1)
    _, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, ranked)
    return (sums / np.bincount(inverse))[inverse]


def correlation(metric: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson or Spearman (x 100) of `predictions` against `labels`."""
    p, y = np.asarray(predictions, np.float64), np.asarray(labels, np.float64)
    if metric == "spearman":
        p, y = ranks(p), ranks(y)
    elif metric != "pearson":
        raise DSEEError(f"no correlation named '{metric}': pearson or spearman")
    return float(np.corrcoef(p, y)[0, 1] * 100)


def retrieval_scores(
    queries: np.ndarray, corpus: np.ndarray, relevant: list[dict[int, float]], k: int = 10
) -> dict[str, float]:
    """nDCG@k and recall@k (x 100, means over the queries) of the corpus ranked by cosine for each query.
    `relevant[i]` maps the corpus rows relevant to query i to their graded relevance (> 0); queries with none
    are left out, as BEIR leaves them out."""
    kept = [i for i, rel in enumerate(relevant) if any(g > 0 for g in rel.values())]
    if not kept:
        raise DSEEError("no query has a relevant document in the judgements: check the qrels file")
    scores = normalized(queries[kept]) @ normalized(corpus).T
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    discount = 1 / np.log2(np.arange(2, k + 2))
    ndcg, recall = [], []
    for row, i in zip(top, kept, strict=True):
        gains = {doc: g for doc, g in relevant[i].items() if g > 0}
        got = np.array([gains.get(int(doc), 0.0) for doc in row])
        ideal = np.sort(np.array(list(gains.values()), np.float64))[::-1][:k]
        ndcg.append(float(got @ discount[: len(got)]) / float(ideal @ discount[: len(ideal)]))
        recall.append(sum(1 for doc in row if int(doc) in gains) / len(gains))
    return {f"ndcg@{k}": 100 * float(np.mean(ndcg)), f"recall@{k}": 100 * float(np.mean(recall))}


def read_beir(folder: str | Path, split: str = "test", flag: str = "--eval-data") -> tuple[list, list, list]:
    """(corpus texts, query texts, relevance per query {corpus row: grade}) of a BEIR-layout folder:
    corpus.jsonl ({"_id", "title", "text"}; the title, where given, goes before the text as BEIR encodes it),
    queries.jsonl ({"_id", "text"}), qrels/<split>.tsv (query-id, corpus-id, score; a header line). Only the
    queries judged in the split are kept."""
    root = Path(folder)
    qrels_path = root / "qrels" / f"{split}.tsv"
    for path in (root / "corpus.jsonl", root / "queries.jsonl", qrels_path):
        if not path.is_file():
            raise DSEEError(
                f"{flag} '{root}' has no {path.relative_to(root)}: a retrieval set is a folder in BEIR's layout "
                f"(corpus.jsonl, queries.jsonl, qrels/{split}.tsv)"
            )
    corpus = _jsonl(root / "corpus.jsonl", flag)
    queries = {q["_id"]: q["text"] for q in _jsonl(root / "queries.jsonl", flag)}
    row_of = {doc["_id"]: i for i, doc in enumerate(corpus)}
    judged: dict[str, dict[int, float]] = {}
    with qrels_path.open(newline="") as f:
        for n, fields in enumerate(csv.reader(f, delimiter="\t")):
            if n == 0 and not _is_number(fields[-1]):
                continue  # the header
            if len(fields) < 3 or not _is_number(fields[2]):
                raise DSEEError(
                    f"{flag} '{qrels_path}' line {n + 1} is not 'query-id<TAB>corpus-id<TAB>score'"
                )
            query, doc, grade = str(fields[0]), str(fields[1]), float(fields[2])
            if query not in queries or doc not in row_of:
                raise DSEEError(
                    f"{flag} '{qrels_path}' line {n + 1} judges {'query' if query not in queries else 'document'} "
                    f"'{query if query not in queries else doc}', which is not in the "
                    f"{'queries' if query not in queries else 'corpus'}: fix the file"
                )
            judged.setdefault(query, {})[row_of[doc]] = grade
    texts = [f"{d.get('title', '')} {d['text']}".strip() if d.get("title") else d["text"] for d in corpus]
    return texts, [queries[q] for q in judged], list(judged.values())


def _jsonl(path: Path, flag: str) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DSEEError(f"{flag} '{path}' line {n + 1} is not JSON ({exc.msg}): fix the file") from exc
        if not isinstance(row, dict) or "_id" not in row or not isinstance(row.get("text"), str):
            raise DSEEError(f'{flag} \'{path}\' line {n + 1} has no "_id" and "text": fix the file')
        row["_id"] = str(row["_id"])
        rows.append(row)
    return rows


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
