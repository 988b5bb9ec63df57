"""Serving: the Engine against ONNX Runtime and PyTorch, the micro-batcher, the HTTP app, dsee-serve as a real
process under load and at shutdown, and the same engine on Ray Serve. Engines are tiny real exports
(dsee-tune, then dsee-export) built once per session."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import sentences, write_tsv

import dsee_deploy as dd
from dsee_deploy.cli.serve import main as serve_cli
from dsee_deploy.errors import DSEEError
from dsee_deploy.runtime import pick_providers
from dsee_deploy.serve import Engine, ServeOptions, create_app, plan_buckets
from dsee_deploy.serve.batching import Draining, MicroBatcher
from dsee_deploy.serve.load import Connection, run_load
from dsee_deploy.serve.options import ScaleOptions

# Batches are padded per bucket, so the same input meets other GEMM shapes and padding in a server batch than
# alone: fp32 rounding moves probabilities by ~1e-7, well inside this.
SCORE_ATOL = 1e-5


TEXTS = [s for s, _ in sentences(40, seed=3)] + ["good", "a " * 80 + "film"]  # the last is truncated
PAIRS = [(a, b) for (a, _), (b, _) in zip(sentences(10, seed=4), sentences(10, seed=5), strict=True)]


def reference_logits(engine_dir, inputs) -> np.ndarray:
    """transformers' tokenizer, padded to the longest input and truncated at the length the model was tuned
    with (the manifest's), and ONNX Runtime: what the engine must match."""
    from transformers import AutoTokenizer

    from dsee_deploy.runtime import make_session

    tok = AutoTokenizer.from_pretrained(str(engine_dir))
    first = [x if isinstance(x, str) else x[0] for x in inputs]
    second = None if all(isinstance(x, str) for x in inputs) else [x[1] for x in inputs]
    max_length = dd.Manifest.read(engine_dir).max_length
    batch = tok(first, second, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    session = make_session(engine_dir / "model.onnx", providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    return session.run(None, feeds)[0]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def assert_same_predictions(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        if "value" in w:
            assert math.isclose(g["value"], w["value"], abs_tol=SCORE_ATOL)
            continue
        assert g["scores"].keys() == w["scores"].keys()
        for label, p in w["scores"].items():
            assert math.isclose(g["scores"][label], p, abs_tol=SCORE_ATOL), (g, w)
        margin = abs(np.diff(sorted(w["scores"].values())[-2:])[0]) if len(w["scores"]) > 1 else 1
        if margin > 2 * SCORE_ATOL:  # a near tie may flip within the tolerance
            assert g["label"] == w["label"]


# --- the engine ----------------------------------------------------------------------------------------------


def test_importing_serve_pulls_in_neither_torch_nor_transformers():
    code = (
        "import sys, dsee_deploy.serve, dsee_deploy.serve.app, dsee_deploy.serve.load, dsee_deploy.cli.serve; "
        "bad = [m for m in ('torch', 'transformers', 'ray') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_engine_matches_onnxruntime_on_a_padded_batch(engines, classifier, batch_size):
    want = softmax(reference_logits(engines["classification"], TEXTS))
    got = classifier.predict(TEXTS, batch_size=batch_size)
    assert [g["label"] for g in got] == [classifier.labels[k] for k in want.argmax(1)]
    assert classifier.labels == ["negative", "positive"]
    # bucketed batches against one batch padded to the longest input: masked padding, fp32 rounding
    np.testing.assert_allclose([[g["scores"][k] for k in classifier.labels] for g in got], want, atol=1e-6)
    assert all(math.isclose(g["score"], max(g["scores"].values())) for g in got)


def test_regression_on_pairs_feeds_only_the_graph_inputs(engines):
    engine = Engine.load(engines["regression"], threads=1)
    assert engine.task == "regression" and engine.input_names == ["input_ids", "attention_mask"]
    got = engine.predict(PAIRS + [["the film", "a film"]], batch_size=4)
    want = reference_logits(engines["regression"], PAIRS + [("the film", "a film")])[:, 0]
    np.testing.assert_allclose([g["value"] for g in got], want, atol=1e-6)  # fp32 rounding across buckets


def test_embed_matches_pytorch_mean_pooling(engines):
    if "feature-extraction" not in engines:
        pytest.skip("this dsee-export has no --task feature-extraction")
    import torch
    from transformers import AutoModel, AutoTokenizer

    engine = Engine.load(engines["feature-extraction"], threads=1)
    got = engine.embed(TEXTS, batch_size=8)
    tok = AutoTokenizer.from_pretrained(str(engines["bert-base"]))
    batch = tok(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(str(engines["bert-base"])).eval()(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    want = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    assert got.shape == want.shape == (len(TEXTS), 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)  # fused ORT kernels against PyTorch in fp32
    assert engine.embed([]).shape == (0, 32)
    with pytest.raises(DSEEError, match="feature-extraction engine, so it has no labels: call embed"):
        engine.predict(["x"])


def test_a_triton_repository_entry_is_an_engine_too(engines, classifier):
    if "triton" not in engines:
        pytest.skip("this dsee-export has no --format triton")
    engine = Engine.load(engines["triton"], threads=1)  # the manifest points at 1/model.onnx
    assert_same_predictions(engine.predict(TEXTS), classifier.predict(TEXTS))


def test_engine_is_safe_to_call_from_several_threads(classifier):
    serial = [classifier.predict(TEXTS[i::4] + PAIRS[i::4]) for i in range(4)]
    results: dict[int, list] = {}

    def worker(i: int) -> None:
        for _ in range(5):
            results[i] = classifier.predict(TEXTS[i % 4 :: 4] + PAIRS[i % 4 :: 4])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        assert_same_predictions(results[i], serial[i % 4])


@pytest.mark.parametrize(
    "lengths, max_batch, expected",
    [
        ([5] * 8, 4, [(0, 4), (4, 8)]),  # equal lengths: full batches
        ([3, 4, 5, 6], 32, [(0, 4)]),  # little padding: one run beats several
        ([2, 2, 2, 200, 200], 32, [(0, 3), (3, 5)]),  # 3 short inputs padded to 200 would cost 594 tokens
        ([1], 8, [(0, 1)]),
        ([], 8, []),
    ],
)
def test_plan_buckets(lengths, max_batch, expected):
    assert plan_buckets(lengths, max_batch) == expected


@pytest.mark.parametrize(
    "available, expected",
    [
        (["CPUExecutionProvider"], ["CPUExecutionProvider"]),
        (
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (
            ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"],
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (["CPUExecutionProvider", "OpenVINOExecutionProvider"], ["CPUExecutionProvider"]),
    ],
)
def test_providers_are_picked_best_first(available, expected):
    assert pick_providers(available) == expected


def test_engine_says_which_provider_it_runs_on(engines, caplog):
    with caplog.at_level("INFO", logger="dsee_deploy.serve"):
        engine = Engine.load(engines["classification"], threads=2)
    assert engine.provider == "CPUExecutionProvider"
    assert "provider CPUExecutionProvider, intra-op threads 2" in caplog.text


def _copy_engine(src, dst, **manifest_changes):
    import shutil

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest.update(manifest_changes)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_engine_refuses_bad_input_with_one_line(engines, classifier, tmp_path):
    no_model = _copy_engine(engines["classification"], tmp_path / "no-model")
    (no_model / "model.onnx").unlink()
    no_manifest = _copy_engine(engines["classification"], tmp_path / "no-manifest")
    (no_manifest / "manifest.json").unlink()
    lm = _copy_engine(engines["classification"], tmp_path / "lm", task="causal-lm")
    broken = _copy_engine(engines["classification"], tmp_path / "broken")
    (broken / "model.onnx").write_bytes(b"not a graph")
    plan = _copy_engine(engines["classification"], tmp_path / "plan", engine="model.plan")
    (plan / "model.onnx").unlink()
    cases = [
        (
            lambda: Engine.load(tmp_path / "nowhere"),
            "does not exist: pass a directory written by dsee-export",
        ),
        (lambda: Engine.load(no_model), "is missing model.onnx: export the engine again"),
        (lambda: Engine.load(no_model, verify=False), "has no model.onnx: export it again with dsee-export"),
        (lambda: Engine.load(no_manifest), "has no manifest.json, so it was not written by dsee-export"),
        # Edited manifests and files are refused by verification (test_engine_verification); past it:
        (lambda: Engine.load(plan, verify=False), "model.plan without model.onnx"),
        (lambda: Engine.load(broken, verify=False), "could not be loaded .*: export it again"),
        (lambda: Engine.load(engines["classification"], threads=0), "threads=0 is not a thread count"),
        (
            lambda: Engine.load(lm, verify=False).predict(["x"]),
            r"causal-lm engine: predict\(\) serves classification",
        ),
        (lambda: classifier.embed(["x"]), "export the model with feature extraction"),
        (lambda: classifier.predict("a film"), "inputs is a str: pass a list of texts"),
        (lambda: classifier.predict(["ok", 3]), r"inputs\[1\] is a int"),
        (lambda: classifier.predict([("a", "b", "c")]), r"inputs\[0\] is a tuple of 3"),
    ]
    for call, message in cases:
        with pytest.raises(DSEEError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    assert classifier.predict([]) == []


def test_spin_is_bounded_or_off_never_onnxruntimes_unbounded_default(monkeypatch):
    import onnxruntime as ort

    import dsee_deploy.runtime.session as engine_module

    options = ort.SessionOptions()
    assert engine_module.set_spin(options, 100) == 100
    assert options.get_session_config_entry("session.intra_op.spin_duration_us") == "100"
    # An onnxruntime that would ignore the bound: no spinning at all, and the caller is told so.
    monkeypatch.setattr(engine_module, "BOUNDED_SPIN_SINCE", (99, 0))
    options = ort.SessionOptions()
    assert engine_module.set_spin(options, 100) == 0
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# --- micro-batching ----------------------------------------------------------------------------------------


def test_batcher_groups_concurrent_inputs_serves_a_lone_one_at_once_and_drains_on_close():
    sizes: list[int] = []

    def double(xs: list) -> list:
        sizes.append(len(xs))
        time.sleep(0.002)  # an engine run, during which requests pile up
        return [2 * x for x in xs]

    async def scenario() -> None:
        # A wait of 10 minutes: a lone input answered before the 60 s that mean "hung" did not wait for it.
        batcher = MicroBatcher(double, max_batch_size=16, max_wait_ms=600_000)
        # alone: no wait for companions that are not coming
        assert await asyncio.wait_for(batcher.submit([1]), 60) == [2]
        results = await asyncio.gather(*(batcher.submit([i, i + 1]) for i in range(40)))
        assert results == [[2 * i, 2 * i + 2] for i in range(40)]
        assert max(sizes) == 16 and len(sizes) <= 1 + 80 // 16 + 2  # full batches, not 80 runs of one
        pending = [asyncio.ensure_future(batcher.submit([i])) for i in range(5)]
        await asyncio.sleep(0)  # queued, waiting for a batch of 16 that traffic led it to expect
        await batcher.close()  # shutdown answers them rather than dropping them
        assert await asyncio.gather(*pending) == [[2 * i] for i in range(5)]
        with pytest.raises(Draining):
            await batcher.submit([1])

    asyncio.run(scenario())


def test_batcher_waits_for_answered_clients_after_a_run_longer_than_max_wait():
    """Inputs that queued during a long run and have waited past max_wait still wait, once the engine is free,
    for the clients it has just answered: one full batch, not the queued few and then the rest."""
    sizes: list[int] = []

    def slow(xs: list) -> list:
        sizes.append(len(xs))
        time.sleep(0.3)  # longer than max_wait
        return xs

    async def client(batcher: MicroBatcher, delay: float, again: bool) -> None:
        await asyncio.sleep(delay)
        await batcher.submit([0])
        if again:
            await asyncio.sleep(0.01)  # the answer travels back, the next request comes in
            await batcher.submit([0])

    async def scenario() -> None:
        batcher = MicroBatcher(slow, max_batch_size=8, max_wait_ms=200)
        # 8 clients fill the first batch; 3 more arrive while it runs; 5 of the first 8 come back
        await asyncio.gather(
            *(client(batcher, 0, i < 5) for i in range(8)), *(client(batcher, 0.05, False) for _ in range(3))
        )
        await batcher.close()

    asyncio.run(scenario())
    assert sizes == [8, 8]


# --- the HTTP app in process -------------------------------------------------------------------------------


BAD_REQUESTS = [
    # (path, body, status, words of the answer)
    ("/v1/predict", b'{"inputs": ["unclosed"', 400, "not valid JSON"),
    ("/v1/predict", b"\xff\xfe", 400, "not valid JSON"),
    ("/v1/predict", b'{"text": "a film"}', 422, 'has no "inputs"'),
    ("/v1/predict", b'{"inputs": []}', 422, "non-empty list"),
    ("/v1/predict", b'{"inputs": [1]}', 422, "inputs[0] is not a text"),
    ("/v1/predict", b'{"inputs": [["a", "b", "c"]]}', 422, "inputs[0] is not a text"),
    ("/v1/predict", json.dumps({"inputs": ["film"] * 9}).encode(), 413, "larger --max-inputs"),
    ("/v1/predict", json.dumps({"inputs": ["ok", "x" * 201]}).encode(), 413, "inputs[1] has a text of 201"),
    ("/v1/predict", json.dumps({"inputs": [["ok", "x" * 201]]}).encode(), 413, "larger --max-chars"),
    ("/v1/embed", b'{"inputs": ["a film"]}', 404, "POST /v1/predict"),
]
SMALL_LIMITS = ["--max-inputs", "8", "--max-chars", "200"]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_app_answers_every_route_and_every_bad_request(classifier):
    from fastapi.testclient import TestClient

    app = create_app(classifier, ServeOptions(max_inputs=8, max_chars=200))
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"ready": True}
        for path, body, status, words in BAD_REQUESTS:
            r = client.post(path, content=body)
            assert r.status_code == status and words in r.json()["error"], (body, r.text)
        r = client.post("/v1/predict", json={"inputs": TEXTS[:3] + [list(PAIRS[0])]})
        assert r.status_code == 200
        assert_same_predictions(r.json()["predictions"], classifier.predict(TEXTS[:3] + [PAIRS[0]]))
        model = client.get("/v1/model").json()
        assert model["task"] == "classification" and model["outputs"] == ["logits"]
        assert model["serving"]["provider"] == "CPUExecutionProvider" and model["serving"]["max_inputs"] == 8
        metrics = client.get("/metrics").text
    assert 'dsee_requests_total{endpoint="predict",status="200"} 1.0' in metrics
    assert 'dsee_request_errors_total{endpoint="predict",status="413"} 3.0' in metrics
    for name in ("dsee_request_latency_seconds_bucket", "dsee_batch_size_bucket", "dsee_queue_depth"):
        assert name in metrics


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_app_embeds_with_a_feature_extraction_engine(engines):
    if "feature-extraction" not in engines:
        pytest.skip("this dsee-export has no --task feature-extraction")
    from fastapi.testclient import TestClient

    engine = Engine.load(engines["feature-extraction"], threads=1)
    with TestClient(create_app(engine, ServeOptions(max_batch_size=4))) as client:
        r = client.post("/v1/embed", json={"inputs": TEXTS[:9]})  # more inputs than one batch holds
        wrong = client.post("/v1/predict", json={"inputs": ["a film"]})
        model = client.get("/v1/model").json()
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["embeddings"], engine.embed(TEXTS[:9]), atol=1e-6)  # fp32 buckets
    assert wrong.status_code == 404 and "POST /v1/embed" in wrong.json()["error"]
    assert model["serving"]["endpoint"] == "/v1/embed" and model["outputs"][1] == "sentence_embedding"


@pytest.mark.parametrize(
    "options, message",
    [
        (lambda: ServeOptions(max_batch_size=0), "max_batch_size = 0"),
        (lambda: ServeOptions(max_wait_ms=-1), "max_wait_ms = -1"),
        (lambda: ScaleOptions(replicas=2, max_replicas=4), "not both"),
        (lambda: ScaleOptions(min_replicas=3, max_replicas=2), "0 <= min <= max"),
        (lambda: ScaleOptions(replicas=0), "replicas = 0"),
    ],
)
def test_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        options()


def test_dsee_serve_refuses_bad_input_with_one_line(engines, tmp_path, capsys):
    cases = [
        ([tmp_path / "nowhere"], "does not exist"),
        ([engines["classification"], "--replicas", "2"], "add --ray"),
        ([engines["classification"], "--max-batch-size", "0"], "max_batch_size = 0"),
    ]
    for argv, message in cases:
        assert serve_cli([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


# --- dsee-serve as a real process --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, process: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.stderr.read()}")
        with contextlib.suppress(OSError), Connection("127.0.0.1", port, timeout=5) as c:
            if c.request("/readyz").status == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"the server on port {port} was not ready in {timeout} s")


@contextlib.contextmanager
def served(engine_dir, *args: str):
    port = free_port()
    cmd = [sys.executable, "-m", "dsee_deploy.cli.serve", str(engine_dir), "--port", str(port), *args]
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(port, process)
        yield port, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_dsee_serve_under_load_answers_like_the_engine(engines, classifier):
    """2,000 requests at concurrency 32, with bad requests among them: every good one answered 200 with the
    engine's own predictions, every bad one with its 4xx, and the server still serving."""
    texts = [s for s, _ in sentences(300, seed=11)]
    good = []
    for i in range(2000):
        inputs: list = [texts[i % 300]]
        if i % 5 == 0:
            inputs = [[texts[i % 300], texts[(i + 1) % 300]]]
        if i % 7 == 0:
            inputs += [texts[(i + 2) % 300], texts[(i + 3) % 300]]
        good.append(inputs)
    requests, expected = [], []
    for i, inputs in enumerate(good):
        requests.append(("/v1/predict", json.dumps({"inputs": inputs}).encode()))
        expected.append(("ok", inputs))
        if i % 40 == 20:
            path, body, status, words = BAD_REQUESTS[(i // 40) % len(BAD_REQUESTS)]
            requests.append((path, body))
            expected.append(("bad", (status, words)))
    unique = sorted({json.dumps(x) for inputs in good for x in inputs})
    want = dict(zip(unique, classifier.predict([json.loads(u) for u in unique]), strict=True))

    with served(engines["classification"], "--threads", "1", "--max-batch-size", "32", *SMALL_LIMITS) as (
        port,
        _,
    ):
        replies, wall = run_load("127.0.0.1", port, requests, concurrency=32)
        with Connection("127.0.0.1", port) as c:
            metrics = c.request("/metrics").body.decode()
            assert c.request("/readyz").status == 200

    n_bad = sum(kind == "bad" for kind, _ in expected)
    assert len(requests) - n_bad == 2000 and n_bad == 50
    for reply, (kind, detail) in zip(replies, expected, strict=True):
        if kind == "bad":
            status, words = detail
            assert reply.status == status and words in json.loads(reply.body)["error"]
            continue
        assert reply.status == 200, reply.body
        got = json.loads(reply.body)["predictions"]
        assert_same_predictions(got, [want[json.dumps(x)] for x in detail])
    n_inputs = sum(len(x) for x in good)
    assert metric(metrics, 'dsee_requests_total{endpoint="predict",status="200"}') == 2000
    assert metric(metrics, "dsee_request_errors_total") == n_bad
    assert metric(metrics, "dsee_batch_size_sum") == n_inputs
    batches = metric(metrics, "dsee_batch_size_count")
    assert batches < n_inputs / 4, (
        f"{batches} runs for {n_inputs} inputs: concurrent requests were not batched"
    )
    print(f"{len(requests)} requests in {wall:.1f} s, {n_inputs / batches:.1f} inputs per engine run")


def test_dsee_serve_finishes_requests_in_flight_on_sigterm(engines, classifier):
    # A long --max-wait-ms: right after a burst of 8-input requests, single inputs wait for a batch that traffic
    # led the batcher to expect, so they are still in flight when SIGTERM comes. On a machine slow enough that
    # the burst is forgotten first (a second), they are answered at once: then the round is tried again, and
    # SIGTERM is sent only once /metrics shows them queued.
    with served(engines["classification"], "--threads", "1", "--max-wait-ms", "1500") as (port, process):
        burst = [("/v1/predict", json.dumps({"inputs": TEXTS[:8]}).encode())] * 8
        late = [("/v1/predict", json.dumps({"inputs": [t]}).encode()) for t in TEXTS[:4]]
        for _ in range(10):
            assert {r.status for r in run_load("127.0.0.1", port, burst, concurrency=8)[0]} == {200}
            replies: list = []
            client = threading.Thread(
                target=lambda got=replies: got.extend(run_load("127.0.0.1", port, late, 4)[0])
            )
            client.start()
            queued = False
            while client.is_alive() and not queued:
                with Connection("127.0.0.1", port) as c:
                    queued = metric(c.request("/metrics").body.decode(), "dsee_queue_depth") == 4
            if queued:
                break
            client.join()
        assert queued, "the four inputs were never seen waiting for their batch"
        process.send_signal(signal.SIGTERM)
        client.join(60)
        assert process.wait(60) == 0
    assert [r.status for r in replies] == [200] * 4  # answered by the drain on SIGTERM
    for reply, text in zip(replies, TEXTS[:4], strict=True):
        assert_same_predictions(json.loads(reply.body)["predictions"], classifier.predict([text]))


# --- Ray Serve ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_serve_replicas_answer_like_the_engine(engines, classifier):
    pytest.importorskip("ray.serve")
    import shutil
    import tempfile

    import ray
    from ray import serve

    from dsee_deploy.serve import ray_app

    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 bytes
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
        _temp_dir=temp,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = ray_app(
            engines["classification"], options=ServeOptions(max_batch_size=8), scale=ScaleOptions(replicas=2)
        )
        serve.run(app, name="dsee", route_prefix="/")
        wait_ready(port)
        requests = [("/v1/predict", json.dumps({"inputs": [t]}).encode()) for t in TEXTS] * 5
        replies, _ = run_load("127.0.0.1", port, requests, concurrency=8)
        bad, _ = run_load("127.0.0.1", port, [BAD_REQUESTS[0][:2]], 1)
        status = serve.status().applications["dsee"]
        replicas = sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert replicas == 2
    assert bad[0].status == 400
    assert [r.status for r in replies] == [200] * len(requests)
    for reply, (_, body) in zip(replies, requests, strict=True):
        inputs = json.loads(body)["inputs"]
        assert_same_predictions(json.loads(reply.body)["predictions"], classifier.predict(inputs))


def test_build_app_takes_the_args_of_serve_ray_serve_yaml(engines):
    pytest.importorskip("ray.serve")
    import yaml

    from dsee_deploy.serve.scale import build_app

    config = yaml.safe_load((Path(__file__).parents[1] / "serve" / "ray-serve.yaml").read_text())
    (application,) = config["applications"]
    assert application["import_path"] == "dsee_deploy.serve.scale:build_app"
    args = {**application["args"], "engine": str(engines["classification"]), "max_replicas": 3}
    deployment = build_app(args)._bound_deployment._deployment_config  # Ray has no public accessor for it
    assert (deployment.autoscaling_config.min_replicas, deployment.autoscaling_config.max_replicas) == (1, 3)
    assert deployment.autoscaling_config.target_ongoing_requests == 32
    assert deployment.max_ongoing_requests == 2 * args["max_batch_size"]
    with pytest.raises(TypeError):  # a misspelt option is not silently dropped
        build_app({"engine": str(engines["classification"]), "replcas": 2})


@pytest.mark.slow
def test_a_clean_venv_with_only_the_serve_extra_serves_a_request(engines, tmp_path):
    """benchmarks/serving/clean_env.py: pip install '.[serve]' into a fresh venv (no torch), serve, compare."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "serving" / "clean_env.py"
    argv = [
        sys.executable,
        str(script),
        "--engine",
        str(engines["classification"]),
        "--out",
        str(tmp_path / "c.json"),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "c.json").read_text())
    assert (
        result["passed"]
        and result["checks"]["no torch"]
        and result["checks"]["answers like Engine.predict here"]
    )


# --- one runtime: what is served is what is measured -------------------------------------------------------


def bench_against_itself(path, eval_data) -> dd.BenchResults:
    """dsee-bench of one engine against itself, briefly: what matters here is its --eval-data metric."""
    config = dd.BenchConfig(
        batch_sizes=[1],
        seq_lens=[8],
        rounds=3,
        warmup=1,
        threads=1,
        eval_data=str(eval_data),
        torch_variants=False,
    )
    return dd.bench([f"engine={path}"], [f"baseline={path}"], config)


def test_served_benchmarked_and_validated_predictions_agree_beyond_the_tuned_length(engines, tmp_path):
    """Engine.predict, dsee-serve over HTTP, dsee-bench's accuracy and dsee-export --validate-data predict the
    same labels, on inputs longer than the length the model was tuned with (24 tokens): every one of them
    truncates where the model was tuned. The data is labelled with the served labels, so both measurements
    must read 100 %; inputs whose label changes when they are truncated elsewhere (at 60 tokens) are among
    them, so a measurement that truncated differently would read less."""
    import random

    from conftest import POSITIVE

    # Texts of one polarity's words only, half each: a tiny model learns them in a few seconds.
    good, bad = sorted(POSITIVE), ["bad", "dull", "boring", "awful", "flat", "weak", "cold", "slow", "hated"]
    rng = random.Random(0)
    rows = [
        (" ".join(rng.choices((bad, good)[i % 2], k=rng.randint(3, 12))), ("negative", "positive")[i % 2])
        for i in range(192)
    ]
    data = write_tsv(tmp_path / "train.tsv", ["sentence", "label"], rows)
    ckpt, path = tmp_path / "ckpt", tmp_path / "engine"
    config = dd.TuneConfig(epochs=8, batch_size=16, max_length=24, lr=1e-2)
    dd.tune(data, ckpt, model=str(engines["bert-base"]), config=config)
    dd.export(ckpt, path)
    engine = Engine.load(path, threads=1)
    assert engine.max_length == dd.Manifest.read(path).max_length == 24
    # 22 words of one polarity, then 30 of the other: the label depends on where the input is cut.
    long_texts = [
        " ".join(rng.choices(a, k=22) + rng.choices(b, k=30)) for a, b in [(good, bad), (bad, good)] * 10
    ]
    at_24 = [p["label"] for p in engine.predict(long_texts)]
    at_60 = [p["label"] for p in Engine.load(path, threads=1, max_length=60).predict(long_texts)]
    differs = [t for t, a, b in zip(long_texts, at_24, at_60, strict=True) if a != b]
    assert differs, "no input whose label depends on where it is cut: the check below would be blind"
    texts = differs + [s for s, _ in sentences(20, seed=9)]
    labels = [p["label"] for p in engine.predict(texts)]
    served_data = write_tsv(
        tmp_path / "served.tsv", ["sentence", "label"], list(zip(texts, labels, strict=True))
    )

    with served(path, "--threads", "1") as (port, _), Connection("127.0.0.1", port) as c:
        reply = c.request("/v1/predict", json.dumps({"inputs": texts}).encode())
    assert reply.status == 200
    assert [p["label"] for p in json.loads(reply.body)["predictions"]] == labels

    results = bench_against_itself(path, served_data)
    assert results.metric("engine")["accuracy"] == 100.0 and results.metric("engine")["max_length"] == 24

    manifest = dd.export(ckpt, tmp_path / "again", dd.ExportConfig(validate_data=str(served_data)))
    assert manifest.validate_data["results"]["onnx fp32"]["accuracy"] == 100.0
    assert manifest.validate_data["examples"] == len(texts)


def test_bench_scores_a_regression_engine_by_its_correlation(engines):
    """Regression has no accuracy: dsee-bench reports the metric the checkpoint was selected by, alone."""
    data = engines["regression"].parent / "sts.tsv"
    path = engines["regression"]
    entry = bench_against_itself(path, data).metric("engine")
    assert entry["metric"] == "pearson" and "accuracy" not in entry and -100 <= entry["value"] <= 100
