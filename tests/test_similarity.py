"""Sentence embeddings are scored as sentence-transformers and BEIR score them: Spearman / Pearson of the pairs'
cosines against their scores (dsee-export --validate-data, dsee-bench --eval-data), nDCG@10 and recall@10 of a
corpus ranked by cosine; BEIR-layout folders are read with one-line errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import WORDS, run_cli, write_tsv
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import ndcg_score

from dsee_deploy.errors import DSEEError
from dsee_deploy.similarity import correlation, pair_cosines, read_beir, retrieval_scores


def test_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(1, 6, 200).astype(float)  # many ties, as SICK's scores have
    predictions = scores + rng.normal(0, 1.5, 200)
    predictions[:20] = predictions[0]  # tied predictions too
    assert correlation("spearman", predictions, scores) == pytest.approx(
        100 * spearmanr(predictions, scores)[0]
    )
    assert correlation("pearson", predictions, scores) == pytest.approx(
        100 * pearsonr(predictions, scores)[0]
    )
    with pytest.raises(DSEEError, match="no correlation named 'kendall'"):
        correlation("kendall", predictions, scores)


def test_retrieval_scores_match_sklearns_ndcg_and_count_recall():
    rng = np.random.default_rng(1)
    corpus, queries = rng.normal(size=(40, 8)), rng.normal(size=(6, 8))
    relevant = [
        {int(d): float(rng.integers(1, 3)) for d in rng.choice(40, rng.integers(1, 5), replace=False)}
        for _ in range(6)
    ]
    relevant.append({})  # a query with no judgement is left out, as BEIR leaves it out
    queries = np.vstack([queries, rng.normal(size=(1, 8))])
    got = retrieval_scores(queries, corpus, relevant, k=10)
    cos = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    ).T
    truth = np.zeros((6, 40))
    for i, rel in enumerate(relevant[:6]):
        for d, g in rel.items():
            truth[i, d] = g
    assert got["ndcg@10"] == pytest.approx(100 * ndcg_score(truth, cos[:6], k=10))
    top = np.argsort(-cos[:6], axis=1)[:, :10]
    recall = np.mean([len(set(top[i]) & set(relevant[i])) / len(relevant[i]) for i in range(6)])
    assert got["recall@10"] == pytest.approx(100 * recall)
    # A corpus embedded as its own queries finds every document first: both at 100.
    perfect = retrieval_scores(corpus[:5], corpus, [{i: 1.0} for i in range(5)])
    assert perfect == {"ndcg@10": pytest.approx(100), "recall@10": pytest.approx(100)}


def _beir(root, qrels_lines):
    root.mkdir()
    (root / "qrels").mkdir()
    docs = [{"_id": f"d{i}", "title": "t" if i == 0 else "", "text": f"doc {i}"} for i in range(3)]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (root / "queries.jsonl").write_text(
        '{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "never judged"}\n'
    )
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels_lines)
    return root


def test_a_beir_folder_reads_and_bad_files_are_refused_in_one_line(tmp_path):
    corpus, queries, relevant = read_beir(_beir(tmp_path / "ok", "q1\td2\t1\nq1\td0\t2\n"))
    assert corpus == ["t doc 0", "doc 1", "doc 2"] and queries == ["first"] and relevant == [{2: 1.0, 0: 2.0}]
    cases = {
        "unknown": ("q1\td9\t1\n", "judges document 'd9', which is not in the corpus"),
        "short": ("q1\td1\n", "line 2 is not 'query-id<TAB>corpus-id<TAB>score'"),
    }
    for name, (lines, message) in cases.items():
        with pytest.raises(DSEEError, match=message):
            read_beir(_beir(tmp_path / name, lines))
    (tmp_path / "ok" / "corpus.jsonl").write_text('{"_id": 1}\n')
    with pytest.raises(DSEEError, match='line 1 has no "_id" and "text"'):
        read_beir(tmp_path / "ok")
    with pytest.raises(DSEEError, match="has no corpus.jsonl"):
        read_beir(tmp_path)


def _scored_pairs(path, n=48, seed=5):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = " ".join(rng.sample(WORDS, rng.randint(3, 7)))
        b = a if i % 3 == 0 else " ".join(rng.sample(WORDS, rng.randint(3, 7)))
        rows.append((i, a, b, round(rng.uniform(1, 5), 1) if a != b else 5.0))
    return write_tsv(path, ["pair_ID", "sentence_A", "sentence_B", "relatedness_score"], rows), rows


def test_embeddings_are_scored_on_scored_pairs_by_export_and_bench(tiny_bases, tmp_path, capsys):
    """--validate-data and --eval-data score a feature-extraction engine by the Spearman of its cosines,
    which is what scipy computes from the Engine's own embeddings."""
    from dsee_deploy.cli.bench import main as bench
    from dsee_deploy.cli.export import main as export
    from dsee_deploy.manifest import Manifest
    from dsee_deploy.serve import Engine

    pairs, rows = _scored_pairs(tmp_path / "pairs.tsv")
    out = tmp_path / "fe"
    code, printed, err = run_cli(
        export,
        [tiny_bases["bert"], "--output", out, "--task", "feature-extraction", "--validate-data", pairs],
        capsys,
    )
    assert code == 0, err
    engine = Engine.load(out)
    a, b = engine.embed([r[1] for r in rows]), engine.embed([r[2] for r in rows])
    expected = 100 * spearmanr(pair_cosines(a, b), [r[3] for r in rows])[0]
    checked = Manifest.read(out).validate_data
    assert checked["metric"] == "spearman" and checked["examples"] == len(rows)
    assert checked["results"]["onnx fp32"]["spearman"] == pytest.approx(expected, abs=1e-3)
    assert checked["results"]["pytorch"]["spearman"] == pytest.approx(expected, abs=0.5)
    code, _, err = run_cli(
        bench,
        ["--baseline", out, "--engine", f"again={out}", "--eval-data", pairs, "--rounds", "3", "--batch-sizes", "1",
         "--seq-lens", "8", "--no-torch", "--output", tmp_path / "b"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    scored = json.loads((tmp_path / "b" / "results.json").read_text())["accuracy"]["again"]
    assert scored["metric"] == "spearman" and scored["value"] == pytest.approx(expected, abs=1e-3)
    single = write_tsv(tmp_path / "single.tsv", ["sentence", "label"], [("a b", 1.0), ("c d", 2.0)])
    code, _, err = run_cli(
        export, [tiny_bases["bert"], "--output", tmp_path / "x", "--validate-data", single], capsys
    )
    assert code == 2 and "is scored on pairs of texts" in err and len(err.strip().splitlines()) == 1


def test_bench_scores_an_embedding_engine_on_a_beir_folder(tiny_bases, tmp_path, capsys):
    """dsee-bench --eval-data FOLDER: nDCG@10 and recall@10 of the engine's own embeddings, ranked by cosine."""
    from dsee_deploy.cli.bench import main as bench
    from dsee_deploy.cli.export import main as export
    from dsee_deploy.serve import Engine

    rng = random.Random(7)
    docs = [" ".join(rng.sample(WORDS, 6)) for _ in range(30)]
    queries = {f"q{i}": " ".join(docs[3 * i].split()[:3]) for i in range(8)}  # each a piece of one document
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": f"d{i}", "text": t}) for i, t in enumerate(docs))
    )
    (root / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": q, "text": t}) for q, t in queries.items())
    )
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{3 * i}\t1\n" for i in range(8))
    )
    out = tmp_path / "fe"
    code, _, err = run_cli(
        export, [tiny_bases["bert"], "--output", out, "--task", "feature-extraction"], capsys
    )
    assert code == 0, err
    code, _, err = run_cli(
        bench,
        ["--baseline", out, "--engine", f"again={out}", "--eval-data", root, "--rounds", "3", "--batch-sizes", "1",
         "--seq-lens", "8", "--no-torch", "--output", tmp_path / "b"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    engine = Engine.load(out)
    expected = retrieval_scores(
        engine.embed(list(queries.values())), engine.embed(docs), [{3 * i: 1.0} for i in range(8)]
    )
    scored = json.loads((tmp_path / "b" / "results.json").read_text())["accuracy"]["again"]
    assert scored["metric"] == "ndcg@10" and scored["corpus"] == 30 and scored["examples"] == 8
    assert scored["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-6)
    assert scored["recall@10"] == pytest.approx(expected["recall@10"], abs=1e-6)
    assert "| ndcg@10 | recall@10 |" in (tmp_path / "b" / "report.md").read_text()


def test_bench_times_embeddings_texts_in_beside_sentence_transformers(tiny_bases, tmp_path, capsys):
    """With scored pairs, dsee-bench times sentence-embedding engines texts in (batch 1 and 32) and, beside
    them, sentence-transformers' own backends of the dense model (a sentence-transformers directory), each
    scored on the same pairs: sentence-transformers' PyTorch of the same model scores what our fp32 engine does."""
    sentence_transformers = pytest.importorskip("sentence_transformers", reason="the 'embeddings' extra")
    import dsee_deploy as dd
    from dsee_deploy.cli.bench import main as bench
    from dsee_deploy.cli.export import main as export

    pairs, _ = _scored_pairs(tmp_path / "pairs.tsv")
    st_dir = dd.to_sentence_transformers(tiny_bases["bert"], tmp_path / "st")
    out = tmp_path / "fe"
    code, _, err = run_cli(export, [st_dir, "--output", out, "--task", "feature-extraction"], capsys)
    assert code == 0, err
    code, _, err = run_cli(
        bench,
        ["--baseline", f"dense={out}", "--engine", f"again={out}", "--eval-data", pairs, "--rounds", "3",
         "--batch-sizes", "1", "--seq-lens", "8", "--threads", "1", "--no-torch", "--output", tmp_path / "b"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    texts = json.loads((tmp_path / "b" / "results.json").read_text())["texts"]
    rows = {(r["variant"], r["batch"]): r for r in texts["rows"]}
    assert {"dense", "again", "st torch"} <= {name for name, _ in rows}
    assert {batch for _, batch in rows} == {1, 32}
    # Pearson moves with the cosines themselves; Spearman of ~40 pairs of a random tiny model also flips on
    # near-ties, so it gets a point
    ours, theirs = texts["quality"]["dense"], texts["quality"]["st torch"]
    assert theirs["pearson"] == pytest.approx(ours["pearson"], abs=0.05)
    assert theirs["spearman"] == pytest.approx(ours["spearman"], abs=1.0)
    for batch in (1, 32):
        row = rows[("again", batch)]
        assert row["texts_per_s"] > 0 and row["vs_best_st"]["variant"].startswith("st ")
        assert "vs_best_st" not in rows[("st torch", batch)]
    assert texts["versions"]["sentence-transformers"] == sentence_transformers.__version__
    assert "## Sentence embeddings, texts in" in (tmp_path / "b" / "report.md").read_text()
