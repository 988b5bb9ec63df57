"""A tampered or failed engine is never served, and one bad request cannot fail its neighbours (issue 12, items
4-10): Engine.load verifies the engine against its manifest, and a real dsee-serve process on 127.0.0.1 isolates
bad input, enforces its body limit while reading, cuts slow clients and caps connections."""

from __future__ import annotations

import asyncio
import json
import select
import shutil
import signal
import socket
import time

import numpy as np
import pytest
from conftest import run_cli
from test_serve import TEXTS, assert_same_predictions, served

from dsee_deploy.cli.bench import main as bench
from dsee_deploy.cli.serve import main as serve_cli
from dsee_deploy.errors import DSEEError
from dsee_deploy.manifest import Manifest
from dsee_deploy.serve import Engine, ServeOptions, create_app
from dsee_deploy.serve.batching import MicroBatcher
from dsee_deploy.serve.load import run_load


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_manifest(engine_dir, **changes) -> None:
    """Edit manifest.json as a user with a text editor would (the digest is left as it was)."""
    path = engine_dir / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def negate_one_weight(model_path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(init).copy()
    array = -array  # all of it: one entry may sit in a row no input reads (the padding token's embedding)
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, str(model_path))


# --- item 4: the engine is verified against its manifest ----------------------------------------------------


def test_engine_load_refuses_tampered_swapped_or_escaping_engines(engines, tmp_path):
    cls, reg = engines["classification"], engines["regression"]
    negated = copy(cls, tmp_path / "negated")
    negate_one_weight(negated / "model.onnx")
    swapped = copy(cls, tmp_path / "swapped")
    shutil.copy(reg / "model.onnx", swapped / "model.onnx")
    foreign = copy(cls, tmp_path / "foreign-manifest")
    shutil.copy(reg / "manifest.json", foreign / "manifest.json")
    task = copy(cls, tmp_path / "task")
    edit_manifest(task, task="regression")
    escaping = copy(cls, tmp_path / "escaping")
    edit_manifest(escaping, engine="../negated/model.onnx")
    no_config = copy(cls, tmp_path / "no-config")
    (no_config / "config.json").unlink()
    cases = [
        (negated, "model.onnx is not the file that was exported"),
        (swapped, "model.onnx is not the file that was exported"),
        (foreign, "is not the file that was exported"),
        (task, "was edited after export"),
        (escaping, "outside the engine directory"),
        (no_config, "is missing config.json"),
    ]
    for path, message in cases:
        with pytest.raises(DSEEError, match=message) as err:
            Engine.load(path)
        assert "\n" not in str(err.value)
    # The opt-out skips the hashes only: paths are still confined and config.json still required.
    with pytest.raises(DSEEError, match="outside the engine directory"):
        Engine.load(escaping, verify=False)
    with pytest.raises(DSEEError, match="has no config.json"):
        Engine.load(no_config, verify=False)
    tampered = Engine.load(negated, verify=False)
    assert not np.allclose(tampered.run(TEXTS[:4]), Engine.load(cls).run(TEXTS[:4]))


def test_a_label_count_that_does_not_match_the_graph_is_refused_at_load(engines, tmp_path, capsys):
    three = copy(engines["classification"], tmp_path / "three-labels")
    config = json.loads((three / "config.json").read_text())
    config["id2label"] = {"0": "neg", "1": "neutral", "2": "pos"}
    (three / "config.json").write_text(json.dumps(config))
    with pytest.raises(DSEEError, match="gives 2 outputs per input, but its classification task"):
        Engine.load(three, verify=False)  # past verification, which refuses the edited config.json first
    code = serve_cli([str(three), "--no-verify", "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "gives 2 outputs" in err[0]


# --- item 5: an engine that failed its checks is refused by Engine, dsee-serve and dsee-bench ---------------


def test_engines_that_failed_their_checks_are_refused_everywhere(engines, tmp_path, capsys):
    # An export by an earlier version that recorded a failed validation and still wrote the engine:
    old = copy(engines["classification"], tmp_path / "old-failed")
    manifest = Manifest.read(old)
    manifest.validation = {**manifest.validation, "passed": False}
    manifest.write(old)
    with pytest.raises(DSEEError, match="fp32 validation against PyTorch did not pass.*export again"):
        Engine.load(old)
    code = serve_cli([str(old), "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "failed its export checks" in err[0]
    out = tmp_path / "bench"
    code, _, err = run_cli(
        bench, ["--baseline", engines["classification"], "--engine", old, "--output", out], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "failed its export checks" in err
    assert not out.exists()


# --- item 6: one bad input fails only its own request -------------------------------------------------------


def test_engine_predict_refuses_a_lone_surrogate_as_bad_input(classifier):
    with pytest.raises(DSEEError, match=r"inputs\[1\] is not valid Unicode text"):
        classifier.predict(["good", "bad \ud800"])


def test_a_failing_batch_is_rerun_per_input_so_only_the_culprit_fails():
    runs = []

    def fn(xs: list) -> list:
        runs.append(len(xs))
        if "poison" in xs:
            raise ValueError("poisoned")
        return [x.upper() for x in xs]

    async def scenario():
        batcher = MicroBatcher(fn, max_batch_size=8, max_wait_ms=50)
        batcher.start()
        results = await asyncio.gather(
            *(batcher.submit([x]) for x in ["a", "b", "poison", "c"]), return_exceptions=True
        )
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert results[0] == ["A"] and results[1] == ["B"] and results[3] == ["C"]
    assert isinstance(results[2], ValueError)
    assert runs[0] == 4 and runs[1:] == [1, 1, 1, 1]  # the batch, then each input alone


def test_a_poisoned_batch_answers_every_good_request(engines, classifier):
    good = [json.dumps({"inputs": [t]}).encode() for t in TEXTS[:31]]
    bad = b'{"inputs": ["bad \\ud800"]}'  # valid JSON, a lone surrogate
    with served(engines["classification"], "--threads", "1", "--max-wait-ms", "20") as (port, _):
        requests = [("/v1/predict", body) for _ in range(20) for body in [*good[:15], bad, *good[15:]]]
        replies, _ = run_load("127.0.0.1", port, requests, concurrency=32)
    statuses = [r.status for r in replies]
    bad_replies = [r for (_, body), r in zip(requests, replies, strict=True) if body == bad]
    assert statuses.count(200) == 620 and [r.status for r in bad_replies] == [422] * 20
    assert "lone surrogate" in json.loads(bad_replies[0].body)["error"]
    first = json.loads(replies[0].body)["predictions"]
    assert_same_predictions(first, classifier.predict([TEXTS[0]]))


# --- items 7-10: parsing, limits, timeouts, flags -------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_deep_json_wrong_methods_and_routes_answer_with_an_error_field(classifier):
    from fastapi.testclient import TestClient

    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with TestClient(create_app(classifier)) as client:
        r = client.post("/v1/predict", content=deep)
        assert r.status_code == 400 and "nests JSON too deeply" in r.json()["error"]
        r = client.get("/v1/predict")
        assert r.status_code == 405 and "POST" in r.json()["error"]
        r = client.get("/nowhere")
        assert r.status_code == 404 and "error" in r.json()


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(60)  # a server that has not answered in a minute hangs
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_chunked_body_over_the_limit_is_refused_before_it_is_read_in_full(engines):
    options = ServeOptions()
    limit = options.max_inputs * (2 * options.max_chars * 12 + 16) + 1024  # the app's max_body, ~3 MB
    with served(engines["classification"], "--threads", "1") as (port, _):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        sent, reply = 0, b""
        while sent < 300 * 2**20:  # what the issue sent: 300 MB
            if select.select([sock], [], [], 0)[0]:
                reply = _read_reply(sock)
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                reply = _read_reply(sock)
                break
            sent += 65536
        sock.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < limit + 8 * 2**20  # refused once past the limit, not after 300 MB


def half_sent(port: int, n: int) -> list[socket.socket]:
    """`n` connections that send a request head and a tenth of the body they announce, then stall."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b'POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"inputs"')
        socks.append(s)
    return socks


def test_slow_clients_are_cut_and_connections_are_capped(engines):
    args = ("--threads", "1", "--body-timeout", "2", "--max-connections", "8", "--graceful-timeout", "20")
    with served(engines["classification"], *args) as (port, process):
        # Connections beyond --max-connections are answered 503 while the others hold theirs.
        held = half_sent(port, 12)
        time.sleep(0.3)
        refused = run_load("127.0.0.1", port, [("/v1/predict", b'{"inputs": ["a"]}')], 1)[0][0]
        assert refused.status == 503
        # Slow bodies are cut after --body-timeout (408), and the connection closes.
        replies = [_read_reply(s) for s in held]
        assert sum(r.startswith(b"HTTP/1.1 408") for r in replies) >= 4, [r[:40] for r in replies]
        assert all(r.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")) for r in replies)
        assert run_load("127.0.0.1", port, [("/v1/predict", b'{"inputs": ["a"]}')], 1)[0][0].status == 200
        slow = half_sent(port, 6)
        process.send_signal(signal.SIGTERM)  # with half-sent bodies still open
        assert process.wait(15) == 0
        stderr = process.stderr.read()
        for s in [*slow, *held]:
            s.close()
    assert "Traceback" not in stderr, stderr[-2000:]


def test_dsee_serve_refuses_bad_flags_and_a_port_in_use_before_it_loads(engines, capsys):
    engine = str(engines["classification"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        cases = [
            (["--max-length", "-5"], "max_length=-5 is too short"),
            (["--max-length", "0"], "max_length=0 is too short"),
            (["--max-length", "5000"], "beyond the model's 64 positions"),
            (["--body-timeout", "0"], "body_timeout_s = 0"),
            (["--port", port], f"cannot listen on 127.0.0.1:{port}"),
        ]
        for argv, message in cases:
            code = serve_cli([engine, *(["--port", "0"] if "--port" not in argv else []), *argv])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 2 and len(err) == 1 and message in err[0], (argv, err)
            assert "serving" not in " ".join(err)
