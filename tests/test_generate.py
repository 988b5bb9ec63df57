"""GPT-2 generation (issue 14): the KV-cache decoder export, Engine.generate against transformers' generate
(dense, structured non-uniform with a layer that kept no heads, unstructured), sampling, bad parameters, and
/v1/generate through a real dsee-serve process. Tiny models; no test asserts a time."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST_TUNE, WORDS, run_cli, sentences

import dsee_deploy as dd
from dsee_deploy.checkpoint import load_dsee, load_merged, save_checkpoint
from dsee_deploy.cli.export import main as export
from dsee_deploy.data import Task
from dsee_deploy.errors import DSEEError
from dsee_deploy.manifest import Manifest
from dsee_deploy.pruning import PruneConfig, prune_model
from dsee_deploy.serve import Engine
from dsee_deploy.tuning import DSEEConfig

# Four prompts of different lengths, decoded together (left padded).
PROMPTS = [
    " ".join(WORDS[:7]),
    WORDS[3],
    " ".join(WORDS[5:9]),
    " ".join(WORDS[10:22]),
]
NEW = 32
# Layer 0 keeps no heads (no cache) and half its FFN; layer 1 keeps heads 1 and 3 and all of its FFN.
NON_UNIFORM = [
    {"kept_heads": [], "kept_ffn": list(range(0, 48, 2))},
    {"kept_heads": [1, 3], "kept_ffn": list(range(48))},
]


@pytest.fixture(scope="module")
def lm(tiny_bases, tmp_path_factory):
    """A tiny GPT-2 tuned with DSEE on a text file, and the same pruned two ways."""
    root = tmp_path_factory.mktemp("lm")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(s for s, _ in sentences(200, 7)))
    dense = root / "dense"
    dd.tune(corpus, dense, model=str(tiny_bases["gpt2"]), config=dd.TuneConfig(**FAST_TUNE))
    structured = _prune(dense, root / "structured", PruneConfig(heads=0.5, ffn=0.25), NON_UNIFORM)
    unstructured = _prune(dense, root / "unstructured", PruneConfig(unstructured=0.5, importance="wabs"))
    return {"dense": dense, "structured": structured, "unstructured": unstructured, "corpus": corpus}


def _prune(src, out, config, layout=None):
    model, tokenizer, info = load_dsee(src)
    record, masks = prune_model(model, config, None, None, layout=layout)
    task = Task.from_dict(info["task"])
    out.mkdir()
    save_checkpoint(
        out, model, tokenizer, DSEEConfig.from_dict(info["dsee"]), task, info["base_model"], {}, record, masks
    )
    return out


@pytest.fixture(scope="module")
def lm_engines(lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-engines")
    manifests = {name: dd.export(lm[name], root / name) for name in ("dense", "structured", "unstructured")}
    return {**manifests, "root": root}


def _reference(checkpoint, prompts, new_tokens):
    """transformers' greedy generate on the merged PyTorch model, prompts left padded, up to the first EOS."""
    model, tok = load_merged(checkpoint)
    model.eval()
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, encoded))
    pad = model.config.pad_token_id
    ids = torch.full((len(encoded), width), pad)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, width - len(e) :], mask[row, width - len(e) :] = torch.tensor(e), 1
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad
        )
    rows = []
    for row in out[:, width:].tolist():
        eos = model.config.eos_token_id
        rows.append(row[: row.index(eos)] if eos in row else row)
    return rows


@pytest.mark.parametrize("name", ["dense", "structured", "unstructured"])
def test_greedy_generation_gives_the_tokens_of_transformers_generate(name, lm, lm_engines):
    manifest = lm_engines[name]
    assert manifest.validation["greedy"]["identical_rows"] == "4/4"
    cache = manifest.cache
    if name == "structured":  # the layer without heads has no cache; the other its own two heads
        assert [c["heads"] for c in cache] == [0, 2] and cache[0]["shape"] is None
        assert cache[1]["shape"] == ["batch_size", 2, "past_sequence_length", manifest.head_size]
    else:
        assert [c["heads"] for c in cache] == [4, 4]
    engine = Engine.load(lm_engines["root"] / name)
    got = engine.generate(PROMPTS, max_new_tokens=NEW)
    want = _reference(lm[name], PROMPTS, NEW)
    assert [g["token_ids"] for g in got] == want
    for g, w in zip(got, want, strict=True):
        assert g["finish_reason"] == ("length" if len(w) == NEW else "stop")
        assert g["text"] == engine._prompts.decode(w, skip_special_tokens=True)
    # One prompt alone decodes as it does in the batch (left padding changes nothing).
    assert engine.generate(PROMPTS[3:], max_new_tokens=NEW)[0] == got[3]


def test_the_decoder_graph_takes_each_layers_own_cache(lm_engines):
    import onnx

    graph = onnx.load(str(lm_engines["root"] / "structured" / "model.onnx"), load_external_data=False).graph
    inputs = [i.name for i in graph.input]
    assert inputs == [
        "input_ids",
        "attention_mask",
        "position_ids",
        "past_key_values.1.key",
        "past_key_values.1.value",
    ]
    assert [o.name for o in graph.output] == ["logits", "present.1.key", "present.1.value"]


def test_sampling_is_deterministic_for_a_seed(lm_engines):
    engine = Engine.load(lm_engines["root"] / "dense")
    params = dict(max_new_tokens=16, do_sample=True, temperature=1.5, top_p=0.9, seed=0)
    first = engine.generate(PROMPTS, **params)
    assert engine.generate(PROMPTS, **params) == first
    others = [engine.generate(PROMPTS, **{**params, "seed": s}) for s in (1, 2)]
    assert any(o != first for o in others)  # the seed matters
    greedy = engine.generate(PROMPTS, max_new_tokens=16)
    assert engine.generate(PROMPTS, max_new_tokens=16, do_sample=True, top_k=1, seed=3) == greedy


def test_streaming_gives_the_tokens_and_text_of_generate(lm_engines):
    engine = Engine.load(lm_engines["root"] / "dense")
    whole = engine.generate(PROMPTS, max_new_tokens=12)
    events = list(engine.stream(PROMPTS, max_new_tokens=12))
    for i, result in enumerate(whole):
        mine = [e for e in events if e["index"] == i]
        assert [e["token_id"] for e in mine if "token_id" in e] == result["token_ids"]
        assert "".join(e["text"] for e in mine if "token_id" in e) == result["text"]
        assert mine[-1]["finish_reason"] == result["finish_reason"]


def test_a_stop_string_ends_a_prompt_and_is_left_out(lm_engines):
    engine = Engine.load(lm_engines["root"] / "dense")
    full = engine.generate(PROMPTS[:1], max_new_tokens=NEW)[0]
    words = full["text"].split()
    assert len(words) >= 3
    stop = words[2]
    got = engine.generate(PROMPTS[:1], max_new_tokens=NEW, stop=[stop])[0]
    assert got["finish_reason"] == "stop" and stop not in got["text"]
    assert full["text"].startswith(got["text"])


def test_bad_generation_parameters_are_refused_in_one_line(lm_engines, engines):
    engine = Engine.load(lm_engines["root"] / "dense")
    cases = [
        (dict(temperature=-1.0, do_sample=True), "temperature=-1.0 is not a temperature"),
        (dict(top_p=0.0), r"top_p=0.0 is outside \(0, 1\]"),
        (dict(top_p=1.5), r"top_p=1.5 is outside \(0, 1\]"),
        (dict(top_k=-2), "top_k=-2 is negative"),
        (dict(max_new_tokens=0), "max_new_tokens=0 generates nothing"),
        (dict(max_new_tokens=1000), "beyond the model's 64 positions: pass max_new_tokens=57 or less"),
        (dict(seed="x"), "seed='x' is not a number"),
    ]
    for params, message in cases:
        with pytest.raises(DSEEError, match=message) as info:
            engine.generate(PROMPTS, **params)
        assert "\n" not in str(info.value)
    with pytest.raises(DSEEError, match="prompts is a str: pass a list of texts"):
        engine.generate("one prompt")
    with pytest.raises(DSEEError, match="generate\\(\\) serves causal-LM engines"):
        Engine.load(engines["classification"]).generate(["a"])


def test_int8_and_no_cache_exports_of_a_causal_lm(lm, tmp_path, capsys):
    out = tmp_path / "int8"
    code, stdout, err = run_cli(export, [lm["structured"], "--output", out, "--quantize", "int8"], capsys)
    assert code == 0, err
    manifest = Manifest.read(out)
    assert manifest.precision == "int8" and manifest.validation_reduced["greedy"]["new_tokens"] > 0
    engine = Engine.load(out)
    assert len(engine.generate(PROMPTS, max_new_tokens=8)) == 4
    plain = tmp_path / "plain"
    code, _, err = run_cli(export, [lm["dense"], "--output", plain, "--no-kv-cache"], capsys)
    assert code == 0, err
    inputs = json.loads((plain / "manifest.json").read_text())["inputs"]
    assert inputs == ["input_ids", "attention_mask", "position_ids"]
    with pytest.raises(DSEEError, match="without a KV cache"):
        Engine.load(plain).generate(["a"])


def test_int4_export_of_a_causal_lm_quantizes_every_projection(lm, tmp_path, capsys):
    out = tmp_path / "int4"
    code, _, err = run_cli(export, [lm["structured"], "--output", out, "--quantize", "int4"], capsys)
    assert code == 0, err
    manifest = Manifest.read(out)
    assert manifest.precision == "int4" and manifest.validation_reduced["greedy"]["new_tokens"] > 0
    # every projection with weights and the tied LM head are 4-bit; nothing stays an fp32 MatMul or Gemm
    assert manifest.quantization["quantized"]["MatMulNBits"] > 0
    assert manifest.quantization["left_fp32"] == {"MatMul": 0, "Gemm": 0}
    assert len(Engine.load(out).generate(PROMPTS, max_new_tokens=8)) == 4


def test_int4_is_refused_for_an_encoder(tiny_bases, tmp_path, capsys):
    code, _, err = run_cli(
        export, [tiny_bases["bert"], "--output", tmp_path / "e", "--quantize", "int4"], capsys
    )
    assert code != 0 and len(err.strip().splitlines()) == 1 and "use --quantize int8" in err


def _post(port: int, body: dict | bytes):
    """(status, headers, body text) of POST /v1/generate; http.client reads a chunked (streamed) body whole."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.request("POST", "/v1/generate", payload, {"content-type": "application/json"})
    reply = connection.getresponse()
    text = reply.read().decode()
    connection.close()
    return reply.status, dict(reply.getheaders()), text


def test_dsee_serve_generates_streams_the_same_tokens_and_batches_clients(lm_engines):
    from concurrent.futures import ThreadPoolExecutor

    from test_serve import metric, served

    from dsee_deploy.serve.load import Connection

    engine = Engine.load(lm_engines["root"] / "structured")
    want = engine.generate(PROMPTS, max_new_tokens=20)
    sampled = engine.generate(PROMPTS[:2], max_new_tokens=10, do_sample=True, top_k=5, seed=4)
    with served(lm_engines["root"] / "structured", "--threads", "1", "--max-wait-ms", "50") as (port, _):
        status, _, text = _post(port, {"prompts": PROMPTS, "max_new_tokens": 20})
        assert status == 200, text
        assert json.loads(text)["generations"] == want
        status, headers, text = _post(port, {"prompt": PROMPTS[2], "max_new_tokens": 20, "stream": True})
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        lines = [line[len("data: ") :] for line in text.split("\n\n") if line]
        assert lines[-1] == "[DONE]"
        events = [json.loads(line) for line in lines[:-1]]
        tokens = [e["token_id"] for e in events if "token_id" in e]
        assert tokens == want[2]["token_ids"] and "".join(e["text"] for e in events[:-1]) == want[2]["text"]
        assert events[-1]["finish_reason"] == want[2]["finish_reason"]
        body = {"prompts": PROMPTS[:2], "max_new_tokens": 10, "do_sample": True, "top_k": 5, "seed": 4}
        assert json.loads(_post(port, body)[2])["generations"] == sampled
        # 16 clients at once, each its own prompt and length: each gets what it gets alone, in fewer runs.
        jobs = [{"prompt": PROMPTS[i % 4], "max_new_tokens": 4 + i} for i in range(16)]
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda b: _post(port, b), jobs))
        for job, (status, _, text) in zip(jobs, replies, strict=True):
            assert status == 200, text
            alone = engine.generate([job["prompt"]], max_new_tokens=job["max_new_tokens"])
            assert json.loads(text)["generations"] == alone
        bad = [
            (b"{nope", 400, "not valid JSON"),
            ({"max_new_tokens": 3}, 422, 'needs "prompt"'),
            (
                {"prompt": "a", "temperature": -1, "do_sample": True},
                422,
                "temperature=-1 is not a temperature",
            ),
            ({"prompt": "a", "top_p": 2}, 422, "top_p=2 is outside (0, 1]"),
            ({"prompt": "a", "max_new_tokens": 500}, 422, "beyond the model's 64 positions"),
            ({"prompt": "a", "stream": "yes"}, 422, '"stream" is "yes"'),
            ({"prompt": "a", "beams": 4}, 422, 'unknown field "beams"'),
            ({"prompts": ["a"] * 100}, 413, "over the limit of 64"),
        ]
        for body, status, words in bad:
            got_status, _, text = _post(port, body)
            assert got_status == status and words in json.loads(text)["error"], text
        with Connection("127.0.0.1", port) as c:
            reply = c.request("/v1/predict", b'{"inputs": ["a"]}')
            assert reply.status == 404 and "POST /v1/generate" in json.loads(reply.body)["error"]
            metrics = c.request("/metrics").body.decode()
    assert metric(metrics, "dsee_generated_tokens_total") >= sum(len(w["token_ids"]) for w in want)
    assert metric(metrics, 'dsee_request_errors_total{endpoint="generate"') == len(bad)
    runs = metric(metrics, "dsee_batch_size_count")
    assert runs < 3 + 16, f"{runs} decoding runs: the 16 concurrent clients were not batched"


def test_dsee_bench_times_generation_with_and_without_the_cache_and_scores_perplexity(
    lm, lm_engines, tmp_path
):
    plain = dd.export(lm["dense"], tmp_path / "plain", dd.ExportConfig(kv_cache=False))
    assert plain.cache is None
    config = dd.BenchConfig(batch_sizes=[1, 2], prompt_len=5, new_tokens=6, decode_rounds=3, threads=1)
    config.eval_data = str(lm["corpus"])
    results = dd.bench(
        [f"s={lm_engines['root'] / 'structured'}"],
        [f"dense={lm_engines['root'] / 'dense'}", f"plain={tmp_path / 'plain'}"],
        config,
        output=tmp_path / "bench",
    ).data
    gen = results["generation"]
    rows = {(t["variant"], t["batch"]): t for t in gen["timings"]}
    assert set(rows) == {(v, b) for v in ("dense", "plain", "s") for b in (1, 2)}
    assert rows[("plain", 1)]["kv_cache"] == "none" and rows[("s", 1)]["kv_cache"] == "kv"
    assert {(s["variant"], s["baseline"]) for s in gen["speedups"]} >= {("s", "dense"), ("s", "plain")}
    ppl = results["perplexity"]
    # One model with and without a cache scores the same text alike; the pruned one otherwise.
    assert ppl["dense"]["perplexity"] == pytest.approx(ppl["plain"]["perplexity"], rel=1e-5)
    # (the tiny random model scores near uniform either way: ten times the tolerance of "alike", not a share)
    assert ppl["s"]["perplexity"] != pytest.approx(ppl["dense"]["perplexity"], rel=1e-4)
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "## Generation: prompt 5 tokens, 6 new tokens" in report and "| plain | 1 | none |" in report
