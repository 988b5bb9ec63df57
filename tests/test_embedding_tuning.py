"""dsee-tune --task feature-extraction on the three shapes of data (issue 43, item 1): scored pairs (CoSENT),
(anchor, positive) pairs (multiple-negatives ranking) and plain text with a teacher (its embeddings), each
checked by what it should do to the embeddings the exported engine returns."""

from __future__ import annotations

import json
import random

import numpy as np
from conftest import WORDS, run_cli, write_tsv

from dsee_deploy.cli.export import main as export
from dsee_deploy.cli.tune import main as tune
from dsee_deploy.serve import Engine
from dsee_deploy.similarity import pair_cosines

STEPS = ["--batch-size", "8", "--max-length", "24", "--threads", "1"]


def _pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """An anchor and a positive sharing most of their words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, 6)
        rows.append((" ".join(words), " ".join(words[:4] + rng.sample(WORDS, 2))))
    return rows


def _scored(path, n: int, seed: int):
    rng = random.Random(seed)
    rows = []
    for i, (a, b) in enumerate(_pairs(n, seed)):
        far = " ".join(rng.sample(WORDS, 6))
        rows.append((i, a, b if i % 2 else far, 4.5 if i % 2 else 1.5))
    return write_tsv(path, ["pair_ID", "sentence_A", "sentence_B", "relatedness_score"], rows)


def _engine(checkpoint, out, capsys) -> Engine:
    code, _, err = run_cli(export, [checkpoint, "--output", out, "--task", "feature-extraction"], capsys)
    assert code == 0, err
    return Engine.load(out)


def _margin(engine: Engine, pairs) -> float:
    """Mean cosine of each anchor with its positive, less that with the next pair's positive."""
    a, b = engine.embed([p[0] for p in pairs]), engine.embed([p[1] for p in pairs])
    return float(np.mean(pair_cosines(a, b)) - np.mean(pair_cosines(a, np.roll(b, 1, axis=0))))


def test_scored_pairs_tune_dsee_select_by_spearman_and_export(tiny_bases, tmp_path, capsys):
    train, dev = _scored(tmp_path / "train.tsv", 48, 1), _scored(tmp_path / "dev.tsv", 16, 2)
    out = tmp_path / "emb"
    argv = ["--model", tiny_bases["bert"], "--task", "feature-extraction", "--train", train, "--eval", dev]
    code, _, err = run_cli(tune, [*argv, "--output", out, "--max-steps", "6", *STEPS], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert "eval_spearman" in metrics and "eval_pearson" in metrics and metrics["trainable_percent"] < 50
    record = json.loads((out / "dsee_config.json").read_text())["task"]
    assert record["kind"] == "feature-extraction" and record["metric"] == "spearman"
    assert (record["text_column"], record["text_pair_column"]) == ("sentence_A", "sentence_B")
    engine = _engine(out, tmp_path / "engine", capsys)
    assert engine.embed(["a b c"]).shape == (1, 32)


def test_anchor_positive_pairs_pull_positives_together(tiny_bases, tmp_path, capsys):
    pairs = _pairs(64, 3)
    train = write_tsv(tmp_path / "ap.tsv", ["anchor", "positive"], pairs)
    held_out = _pairs(32, 4)
    before = _margin(_engine(tiny_bases["bert"], tmp_path / "base", capsys), held_out)
    out = tmp_path / "mnrl"
    argv = [
        "--model",
        tiny_bases["bert"],
        "--task",
        "feature-extraction",
        "--train",
        train,
        "--full-finetune",
    ]
    code, _, err = run_cli(tune, [*argv, "--output", out, "--epochs", "4", "--lr", "1e-3", *STEPS], capsys)
    assert code == 0, err
    after = _margin(_engine(out, tmp_path / "tuned", capsys), held_out)
    assert after > before + 0.05, (before, after)


def test_plain_text_learns_the_teachers_embeddings(tiny_bases, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    train = write_tsv(tmp_path / "ap.tsv", ["anchor", "positive"], _pairs(64, 5))
    argv = [
        "--model",
        tiny_bases["bert"],
        "--task",
        "feature-extraction",
        "--train",
        train,
        "--full-finetune",
    ]
    code, _, err = run_cli(
        tune, [*argv, "--output", teacher, "--epochs", "4", "--lr", "1e-3", *STEPS], capsys
    )
    assert code == 0, err
    texts = [" ".join(random.Random(i).sample(WORDS, 5)) for i in range(96)]
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(texts) + "\n")
    probe = texts[:32]
    taught = _engine(teacher, tmp_path / "t-engine", capsys).embed(probe)
    base = _engine(tiny_bases["bert"], tmp_path / "b-engine", capsys).embed(probe)
    student = tmp_path / "student"
    argv = [
        "--model",
        tiny_bases["bert"],
        "--task",
        "feature-extraction",
        "--train",
        plain,
        "--teacher",
        teacher,
    ]
    code, _, err = run_cli(
        tune, [*argv, "--output", student, "--epochs", "3", "--lr", "1e-2", *STEPS], capsys
    )
    assert code == 0, err
    assert "loss = MSE to its sentence embeddings" in err
    learnt = _engine(student, tmp_path / "s-engine", capsys).embed(probe)
    assert np.mean((learnt - taught) ** 2) < 0.7 * np.mean((base - taught) ** 2)


def test_embedding_data_errors_are_one_line(tiny_bases, tmp_path, capsys):
    plain = tmp_path / "plain.txt"
    plain.write_text("a b c\nd e f\n" * 8)
    pairs = write_tsv(tmp_path / "ap.tsv", ["anchor", "positive"], _pairs(8, 6))
    base = ["--model", tiny_bases["bert"], "--task", "feature-extraction", "--max-steps", "1", *STEPS]
    cases = [
        ([*base, "--train", plain, "--output", tmp_path / "a"], "teach a sentence-embedding model nothing"),
        ([*base, "--train", pairs, "--eval", pairs, "--output", tmp_path / "b"], "pass pairs with a score"),
        (
            [
                *base,
                "--train",
                pairs,
                "--prune-heads",
                "0.5",
                "--importance",
                "taylor",
                "--output",
                tmp_path / "c",
            ],
            "needs a loss at the dense model",
        ),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(tune, argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and expected in lines[-1], (argv, err)


def test_plain_text_prunes_heads_and_neurons_distilled_from_the_unpruned_model(tiny_bases, tmp_path, capsys):
    """Task-agnostic pruning: no labels, the unpruned model the teacher, heads and neurons ranked by their weights
    (taylor needs a loss the dense model does not have). What the re-tuning recovers is measured on the real
    model (benchmarks/embeddings/prune_plain.py): a tiny random model's pooled embeddings barely move when cut."""
    texts = [" ".join(random.Random(i).sample(WORDS, 6)) for i in range(128)]
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(texts) + "\n")
    probe = texts[:32]
    dense = _engine(tiny_bases["bert"], tmp_path / "dense", capsys).embed(probe)
    argv = ["--model", tiny_bases["bert"], "--task", "feature-extraction", "--train", plain, "--epochs", "0"]
    argv += [
        "--prune-heads",
        "0.5",
        "--prune-ffn",
        "0.5",
        "--prune-schedule",
        "oneshot",
        "--lr",
        "2e-3",
        "--distill-hidden",
        "0",
        *STEPS,
    ]
    for retune in ("0", "4"):
        out = tmp_path / f"retune{retune}"
        code, _, err = run_cli(tune, [*argv, "--retune-epochs", retune, "--output", out], capsys)
        assert code == 0, err
        record = json.loads((out / "pruning.json").read_text())
        assert (
            record["importance"]["structured"] == "wabs"
            and sum(len(e["kept_heads"]) for e in record["layers"]) == 4
        )
        pruned = _engine(out, tmp_path / f"engine{retune}", capsys).embed(probe)
        assert pruned.shape == dense.shape and not np.allclose(pruned, dense)
    assert (
        "distilling from the unpruned model (a copy taken before pruning): loss = MSE to its sentence" in err
    )
