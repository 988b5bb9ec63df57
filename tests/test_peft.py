"""PEFT LoRA adapters through the pipeline (issue 15), against the real `peft` package: an adapter made with
PEFT loads as a DSEE model whose merged weights equal PEFT's merge_and_unload(), exports, prunes and tunes on;
a DSEE checkpoint without sparse entries becomes an adapter that PEFT loads to the same outputs."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import FAST, SAME_FUNCTION, batch_for, make_checkpoint, run_cli

import dsee_deploy as dd
from dsee_deploy.architectures import get_spec, supported
from dsee_deploy.errors import DSEEError
from dsee_deploy.models import load_tokenizer
from dsee_deploy.tuning import dsee_layers

peft = pytest.importorskip("peft", reason="the dev extra installs peft")

# Every projection PEFT can adapt in a block, by module name, per architecture (GPT-2 packs Q, K and V into
# c_attn, and its c_proj names both the attention output and the FFN output).
ALL_PROJECTIONS = {
    "bert": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "xlm-roberta": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "electra": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
# What an encoder's classification head is called, for modules_to_save (PEFT adds "classifier" and "score" for
# SEQ_CLS; DistilBERT's pre_classifier must be named, or it stays at its random initialisation).
HEADS = {"distilbert": ["pre_classifier", "classifier"]}

# Merged weights against PEFT's merged weights: both compute W + s B A in fp32, in another order (DSEE pads to
# the largest rank and folds s into B where ranks differ), one rounding apart, ~1e-7 on these weights.
MERGE_ATOL = 1e-5


def test_every_architecture_has_a_case():
    assert sorted(ALL_PROJECTIONS) == supported()


def peft_model(model_type: str, base, **lora):
    """The tiny base with a PEFT LoRA of random (trained-looking) A and B, seeded."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    decoder = get_spec(model_type).decoder
    if decoder:
        model = AutoModelForCausalLM.from_pretrained(base)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    settings = dict(
        task_type=TaskType.CAUSAL_LM if decoder else TaskType.SEQ_CLS,
        r=4,
        lora_alpha=8,
        target_modules=ALL_PROJECTIONS[model_type],
        init_lora_weights=False,  # B random too: a zero B would make every comparison vacuous
        modules_to_save=HEADS.get(model_type),
        fan_in_fan_out=decoder,  # GPT-2's Conv1D stores its weight (in, out)
    )
    pm = get_peft_model(model, LoraConfig(**(settings | lora)))
    with torch.no_grad():  # trained-looking biases, where the adapter trains them (bias="all", "lora_only")
        for name, param in pm.named_parameters():
            if param.requires_grad and name.endswith(".bias") and "lora_" not in name:
                param.add_(0.1 * torch.randn(param.shape))
    return pm


def save_adapter(model_type: str, base, path, **lora):
    pm = peft_model(model_type, base, **lora)
    pm.save_pretrained(str(path))
    return pm


def peft_merged(pm):
    return pm.merge_and_unload().eval()


LORA_VARIANTS = {
    "plain": {},
    # per-module ranks and alphas: the second block's rank 2, one projection's alpha 3 (keys as PEFT matches them)
    "patterns": {"rank_pattern": {r"(layer|h)\.1\..*": 2}, "alpha_pattern": {"(value|v_lin|c_fc)": 3}},
    "rslora": {"use_rslora": True, "r": 8, "lora_alpha": 4},
    # every linear layer but the output one: BERT's pooler too, which has no DSEE update and is merged on load
    "all-linear": {"target_modules": "all-linear"},
    # trained biases: every bias of the model, or those of the adapted projections
    "bias-all": {"bias": "all"},
    "all-linear-bias-all": {"target_modules": "all-linear", "bias": "all"},
    "bias-lora-only": {"bias": "lora_only"},
}


@pytest.mark.parametrize("variant", sorted(LORA_VARIANTS))
@pytest.mark.parametrize("model_type", sorted(ALL_PROJECTIONS))
def test_adapter_merges_to_peft_merge_and_unload(model_type, variant, tiny_bases, tmp_path):
    pm = save_adapter(model_type, tiny_bases[model_type], tmp_path / "adapter", **LORA_VARIANTS[variant])
    expected = peft_merged(pm).state_dict()
    merged, _ = dd.load_merged(tmp_path / "adapter", base_model=str(tiny_bases[model_type]))
    got = merged.state_dict()
    assert sorted(got) == sorted(expected)
    worst = max((got[k].float() - expected[k].float()).abs().max().item() for k in expected)
    assert worst <= MERGE_ATOL, worst
    # not vacuous: the loaded updates move the weights (by far more than the tolerance)
    unmerged, _, info = dd.load_dsee(tmp_path / "adapter", base_model=str(tiny_bases[model_type]))
    assert min(layer.delta_weight().abs().max().item() for _, layer in dsee_layers(unmerged)) > 1e-3
    assert info["dsee"]["num_sparse"] == 0 and info["method"] == "peft-lora"


@pytest.mark.parametrize("model_type", sorted(ALL_PROJECTIONS))
def test_adapter_exports_validated_against_peft(model_type, tiny_bases, tmp_path):
    from dsee_deploy.serve import Engine

    base = tiny_bases[model_type]
    pm = save_adapter(model_type, base, tmp_path / "adapter")
    reference = peft_merged(pm)
    manifest = dd.export(
        tmp_path / "adapter", tmp_path / "engine", dd.ExportConfig(atol=1e-4), base_model=str(base)
    )
    assert manifest.validation["passed"]
    tok = load_tokenizer(str(base))
    batch = batch_for(tok)
    with torch.no_grad():
        want = reference(**batch).logits.numpy()
    engine = Engine.load(tmp_path / "engine")
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    got = engine.run_feeds(engine.feeds(ids, mask, np.zeros_like(ids)))
    mask = mask.astype(bool)
    if got.ndim == 3:  # a language model: compare the real positions only
        want, got = want[mask], got[mask]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)  # the export's own validation tolerance


@pytest.mark.parametrize("model_type", sorted(ALL_PROJECTIONS))
def test_adapter_prunes_structured_then_exports(model_type, tiny_bases, tmp_path, capsys):
    from dsee_deploy.cli.export import main as export_cli
    from dsee_deploy.cli.prune import main as prune_cli

    base = tiny_bases[model_type]
    save_adapter(model_type, base, tmp_path / "adapter")
    code, _, err = run_cli(
        prune_cli,
        [
            tmp_path / "adapter",
            "--base-model",
            base,
            "--prune-heads",
            "0.5",
            "--prune-ffn",
            "0.5",
            "--importance",
            "wabs",
            "--output",
            tmp_path / "pruned",
        ],
        capsys,
    )
    assert code == 0, err
    info = dd.load_dsee(tmp_path / "pruned")[2]  # now a DSEE checkpoint, its base recorded
    assert info["method"] == "dsee" and info["pruning"]["layers"]
    kept = [len(layer["kept_heads"]) for layer in info["pruning"]["layers"]]
    assert sum(kept) == 4  # half of 2 x 4 heads
    code, out, err = run_cli(export_cli, [tmp_path / "pruned", "--output", tmp_path / "engine"], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert manifest["validation"]["passed"]


def one_line_error(capsys, cli, argv) -> str:
    code, _, err = run_cli(cli, argv, capsys)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "change, named",
    [
        ({"use_dora": True}, "DoRA"),
        ({"lora_bias": True}, "lora_bias"),
        ({"peft_type": "IA3"}, "PEFT IA3 adapter"),
        ({"init_lora_weights": "pissa"}, "pissa"),
        ({"task_type": "TOKEN_CLS"}, "TOKEN_CLS"),
    ],
)
def test_unsupported_adapters_are_refused_in_one_line(change, named, tiny_bases, tmp_path, capsys):
    from dsee_deploy.cli.export import main as export_cli

    save_adapter("bert", tiny_bases["bert"], tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | change))
    line = one_line_error(
        capsys,
        export_cli,
        [tmp_path / "adapter", "--base-model", tiny_bases["bert"], "--output", tmp_path / "e"],
    )
    assert named in line
    assert not (tmp_path / "e").exists()


def test_adapter_on_another_base_is_refused(tiny_bases, tmp_path, capsys):
    from dsee_deploy.cli.export import main as export_cli

    save_adapter("bert", tiny_bases["bert"], tmp_path / "adapter")
    line = one_line_error(
        capsys,
        export_cli,
        [tmp_path / "adapter", "--base-model", tiny_bases["gpt2"], "--output", tmp_path / "e"],
    )
    assert "--base-model" in line
    # PEFT recorded the base's path: without the flag, that one loads
    code, _, err = run_cli(export_cli, [tmp_path / "adapter", "--output", tmp_path / "e"], capsys)
    assert code == 0, err
    # an adapter that records no base (made from a model built in memory): the flag is asked for
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config_path.write_text(
        json.dumps(json.loads(config_path.read_text()) | {"base_model_name_or_path": None})
    )
    line = one_line_error(capsys, export_cli, [tmp_path / "adapter", "--output", tmp_path / "e2"])
    assert "records no base model" in line and "--base-model" in line


@pytest.mark.parametrize("model_type", sorted(ALL_PROJECTIONS))
def test_dsee_checkpoint_to_peft_loads_in_peft_to_the_same_outputs(model_type, tiny_bases, tmp_path):
    from peft import PeftModel

    from dsee_deploy.architectures import TARGETS
    from dsee_deploy.tasks import get_task

    base = tiny_bases[model_type]
    make_checkpoint(model_type, base, tmp_path / "ckpt", num_sparse=0, target_modules=TARGETS)
    dd.to_peft(tmp_path / "ckpt", tmp_path / "adapter")
    merged, tok = dd.load_merged(tmp_path / "ckpt")
    info = dd.load_dsee(tmp_path / "ckpt")[2]
    task = get_task(info["task"]["kind"])
    from dsee_deploy.models import load_config

    fresh = task.model_class().from_pretrained(base, config=load_config(str(tmp_path / "ckpt")))
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    batch = batch_for(tok)
    with torch.no_grad():
        want, got = merged(**batch).logits, loaded(**batch).logits
    torch.testing.assert_close(got, want, **SAME_FUNCTION)
    # and back: the adapter dsee-deploy wrote reads as the checkpoint it came from (its base hash checked)
    again, _ = dd.load_merged(tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, want, **SAME_FUNCTION)


def test_to_peft_refuses_sparse_entries_and_pruning(tiny_bases, pruned_bert, tmp_path):
    make_checkpoint("bert", tiny_bases["bert"], tmp_path / "sparse")  # N = 6
    with pytest.raises(DSEEError, match="sparse entries.*load_merged"):
        dd.to_peft(tmp_path / "sparse", tmp_path / "a")
    with pytest.raises(DSEEError, match="is pruned.*unpruned base"):
        dd.to_peft(pruned_bert, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_to_peft_adapter_checks_its_base_hash(tiny_bases, tmp_path):
    from conftest import build_base

    make_checkpoint("bert", tiny_bases["bert"], tmp_path / "ckpt", num_sparse=0)
    dd.to_peft(tmp_path / "ckpt", tmp_path / "adapter")
    other = build_base("bert", tmp_path / "other-bert", seed=1)  # same shapes, other weights
    with pytest.raises(DSEEError, match="sha256.*--base-model"):
        dd.load_dsee(tmp_path / "adapter", base_model=str(other))


def test_tune_resumes_an_adapter_as_dsee_with_a_sparse_part(tiny_bases, sst_like, tmp_path, capsys):
    from dsee_deploy.cli.tune import main as tune_cli

    base = tiny_bases["bert"]
    save_adapter("bert", base, tmp_path / "adapter")
    code, _, err = run_cli(
        tune_cli,
        [
            "--resume",
            tmp_path / "adapter",
            "--base-model",
            base,
            "--train",
            sst_like["train"],
            "--eval",
            sst_like["dev"],
            "--output",
            tmp_path / "dsee",
            "--num-sparse",
            "8",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    model, _, info = dd.load_dsee(tmp_path / "dsee")
    assert info["method"] == "dsee" and info["dsee"]["num_sparse"] == 8
    updates = [u for _, layer in dsee_layers(model) for u in layer.updates.values()]
    assert all(u.sparse_values.numel() == 8 for u in updates)
    assert any(u.sparse_values.abs().max() > 0 for u in updates)  # S trained from zero


def test_to_peft_of_a_peft_adapter_round_trips(tiny_bases, tmp_path):
    """An adapter read in and written out again (no config.json of its own) is the same adapter to PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = tiny_bases["bert"]
    pm = save_adapter("bert", base, tmp_path / "adapter")
    dd.to_peft(tmp_path / "adapter", tmp_path / "again")
    fresh = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "again").eval()
    batch = batch_for(load_tokenizer(str(base)))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, pm.eval()(**batch).logits, **SAME_FUNCTION)


# alpha_pattern / rank_pattern keys on which `re` (PEFT's matcher) backtracks exponentially: 2^n steps on a module
# name of n characters (checked by hand: 0.7 s at 22 characters, doubling with each more; days on the 41 of
# bert.encoder.layer.0.attention.self.query). `regex` decides the first at once (no name ends in '!': it matches
# none); the lookbehind of the second defeats `regex`'s guards too, so only its timeout ends it.
SLOW_FOR_RE = r"(.|.)*!"
SLOW_FOR_BOTH = r"(.|.)*(?<=!)"
# Run in a child process: a hang fails the test after this long instead of stalling the suite (a load takes
# 7 s here, a few times that on a busy machine; a catastrophic key matched by `re` would take days).
HANG_SECONDS = 120
LOAD_MERGED = (
    "import sys, torch, dsee_deploy as dd; m, _ = dd.load_merged(sys.argv[1], base_model=sys.argv[2]); "
    "torch.save(m.state_dict(), sys.argv[3])"
)
EXPORT_CLI = "import sys; from dsee_deploy.cli.export import main; raise SystemExit(main(sys.argv[1:]))"


def run_bounded(code: str, *args) -> subprocess.CompletedProcess:
    import sys

    try:
        return subprocess.run(
            [sys.executable, "-c", code, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=HANG_SECONDS,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: no result in {HANG_SECONDS} s")


@pytest.mark.parametrize(
    "field, key",
    [("alpha_pattern", SLOW_FOR_RE), ("rank_pattern", SLOW_FOR_RE), ("rank_pattern", SLOW_FOR_BOTH)],
)
def test_backtracking_pattern_keys_load_in_bounded_time(field, key, tiny_bases, tmp_path):
    """A key `re` would take days on loads as PEFT would load it had it finished: the slow key matches no module,
    so the adapter is PEFT's without it (the next key, 'value', still sets value's alpha). rank_pattern is not
    matched at all: ranks are the tensors'."""
    base = tiny_bases["bert"]
    pm = save_adapter("bert", base, tmp_path / "adapter", alpha_pattern={"value": 3})
    expected = peft_merged(pm).state_dict()
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config[field] = {key: 2, **config[field]}  # first, so that every module is matched against it
    config_path.write_text(json.dumps(config))
    done = run_bounded(LOAD_MERGED, tmp_path / "adapter", base, tmp_path / "merged.pt")
    assert done.returncode == 0, done.stderr
    got = torch.load(tmp_path / "merged.pt", weights_only=True)
    assert sorted(got) == sorted(expected)
    worst = max((got[k] - expected[k]).abs().max().item() for k in expected)
    assert worst <= MERGE_ATOL, worst


def test_backtracking_alpha_pattern_is_refused_in_one_line(tiny_bases, tmp_path):
    """A key `regex` cannot decide within the bound either is refused, naming the field, the key and the fix."""
    base = tiny_bases["bert"]
    save_adapter("bert", base, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config_path.write_text(
        json.dumps(json.loads(config_path.read_text()) | {"alpha_pattern": {SLOW_FOR_BOTH: 3}})
    )
    done = run_bounded(EXPORT_CLI, tmp_path / "adapter", "--base-model", base, "--output", tmp_path / "e")
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert f"alpha_pattern key '{SLOW_FOR_BOTH}'" in lines[0] and "rewrite the key" in lines[0]
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "config, named",
    [
        ({"r": 0}, "r = 0, expected a positive integer"),
        ({"r": "4"}, 'r = "4", expected a positive integer'),
        ({"lora_alpha": "16"}, 'lora_alpha = "16", expected a number'),
        ({"use_rslora": "false"}, 'use_rslora = "false", expected true or false'),  # a string is truthy
        ({"alpha_pattern": ["value"]}, 'alpha_pattern = ["value"], expected an object'),
        ({"alpha_pattern": {"value": "3"}}, 'alpha_pattern = {"value": "3"}, expected an object'),
        ([{"peft_type": "LORA", "r": 4}], "holds a JSON list, expected an object"),
    ],
)
def test_malformed_adapter_config_is_refused_in_one_line(config, named, tiny_bases, tmp_path, capsys):
    """Each field named, where a traceback (ZeroDivisionError, TypeError, AttributeError) or a wrong scale came."""
    from dsee_deploy.cli.export import main as export_cli

    save_adapter("bert", tiny_bases["bert"], tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    if isinstance(config, dict):
        config = json.loads(config_path.read_text()) | config
    config_path.write_text(json.dumps(config))
    line = one_line_error(
        capsys,
        export_cli,
        [tmp_path / "adapter", "--base-model", tiny_bases["bert"], "--output", tmp_path / "e"],
    )
    assert named in line and "adapter_config.json" in line
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("tensor", ["attention.self.query.lora_A.weight", "classifier.weight"])
def test_integer_adapter_weights_are_refused_in_one_line(tensor, tiny_bases, tmp_path, capsys):
    """int64 weights (a LoRA tensor, a modules_to_save head) were cast to float without a word."""
    from safetensors.torch import load_file, save_file

    from dsee_deploy.cli.export import main as export_cli

    save_adapter("bert", tiny_bases["bert"], tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in sorted(tensors) if k.endswith(tensor))
    tensors[key] = (100 * tensors[key]).long()
    save_file(tensors, str(weights))
    line = one_line_error(
        capsys,
        export_cli,
        [tmp_path / "adapter", "--base-model", tiny_bases["bert"], "--output", tmp_path / "e"],
    )
    assert (
        key.removeprefix("base_model.model.") in line and "as int64" in line
    )  # named as saved, or as loaded
    assert not (tmp_path / "e").exists()


def save_base_as(base, head: str, path):
    """The tiny BERT base saved with another head (bert-base-uncased's hub copy holds BertForPreTraining's
    weights: the encoder, its pooler and the pretraining heads)."""
    import shutil

    import transformers

    getattr(transformers, head).from_pretrained(base).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / name).is_file():
            shutil.copy(base / name, path / name)
    return path


def adapter_without_task_type(base, path, modules_to_save):
    """A LoRA of a BertForSequenceClassification made without task_type, as LoraConfig allows: PEFT saves
    task_type null and the model's own names (bert.encoder..., classifier)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    lora = LoraConfig(
        r=4,
        target_modules=["query", "value"],
        modules_to_save=modules_to_save,
        init_lora_weights=False,  # B random too: a zero B would make the comparison vacuous
    )
    pm = get_peft_model(model, lora)
    pm.save_pretrained(str(path))
    assert json.loads((path / "adapter_config.json").read_text())["task_type"] is None
    return pm


@pytest.mark.parametrize("base_head", ["AutoModel", "BertForPreTraining"])
def test_adapter_without_task_type_loads_as_the_classifier_it_was_trained_as(base_head, tiny_bases, tmp_path):
    """Its keys say what it was trained on: the base-model prefix (bert.) and the saved classifier, which only a
    sequence classifier has. It was refused as adapting bert.encoder... 'which the base has not'."""
    base = tiny_bases["bert"]
    if base_head != "AutoModel":
        base = save_base_as(base, base_head, tmp_path / "base")
    pm = adapter_without_task_type(base, tmp_path / "adapter", ["classifier"])
    merged, tok = dd.load_merged(tmp_path / "adapter", base_model=str(base))
    info = dd.load_dsee(tmp_path / "adapter", base_model=str(base))[2]
    assert info["task"]["kind"] == "classification"
    batch = batch_for(tok)
    with torch.no_grad():
        want = peft_merged(pm)(**batch).logits
        got = merged(**batch).logits
    torch.testing.assert_close(got, want, **SAME_FUNCTION)  # merged against merged, in another order


def test_adapter_without_task_type_or_head_asks_for_task_type(tiny_bases, tmp_path, capsys):
    """Without a saved head, bert.encoder... fits a classifier and a language model of the base alike: the cause
    (no task_type) is named, not the base."""
    from dsee_deploy.cli.export import main as export_cli

    adapter_without_task_type(tiny_bases["bert"], tmp_path / "adapter", None)
    line = one_line_error(
        capsys,
        export_cli,
        [tmp_path / "adapter", "--base-model", tiny_bases["bert"], "--output", tmp_path / "e"],
    )
    assert "records no task_type" in line and "SEQ_CLS" in line and "CAUSAL_LM" in line
