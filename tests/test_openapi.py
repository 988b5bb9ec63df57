"""The HTTP API fuzzed from its own schema (issue 40, item 5): schemathesis reads a real dsee-serve's
/openapi.json and sends what it generates from it, valid and invalid, to every route, for each kind of engine
(predict, embed, generate). It fails on any 5xx, any answer (status, content type, body) the document does not
give, and any body the document refuses that the server accepts. Bounded: a fixed seed and --max-examples per
route (about a minute in all); SCHEMATHESIS_SEED and SCHEMATHESIS_EXAMPLES widen a run by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_serve import served

import dsee_deploy as dd
from dsee_deploy.serve.load import Connection

pytest.importorskip("schemathesis")
CONFIG = Path(__file__).parent / "schemathesis.toml"
# positive_data_acceptance is left out: a body the document allows can still be refused for what no schema can
# say (a prompt and max_new_tokens beyond the model's positions, a lone surrogate that is no Unicode text).
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
]


@pytest.fixture(scope="module")
def served_engines(engines, tiny_bases, tmp_path_factory) -> dict:
    generator = tmp_path_factory.mktemp("openapi") / "gpt2"
    dd.export(tiny_bases["gpt2"], generator)
    found = {"predict": engines["classification"], "generate": generator}
    if "feature-extraction" in engines:
        found["embed"] = engines["feature-extraction"]
    return found


@pytest.mark.parametrize("endpoint", ["predict", "embed", "generate"])
def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_schema(served_engines, endpoint, tmp_path):
    if endpoint not in served_engines:
        pytest.skip("no feature-extraction engine among the test engines")
    with served(served_engines[endpoint], "--threads", "1") as (port, process):
        with Connection("127.0.0.1", port) as c:
            document = json.loads(c.request("/openapi.json").body)
        # every route of the app is in the document, the engine's own with its answer
        assert set(document["paths"]) >= {"/v1/predict", "/v1/embed", "/v1/generate", "/v1/model", "/healthz"}
        assert "200" in document["paths"][f"/v1/{endpoint}"]["post"]["responses"]
        st = Path(sys.executable).parent / "st"
        cmd = [
            str(st),
            "--config-file",
            str(CONFIG),
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--checks",
            ",".join(CHECKS),
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            os.environ.get("SCHEMATHESIS_EXAMPLES", "50"),
            "--seed",
            os.environ.get("SCHEMATHESIS_SEED", "40"),
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--report-dir",
            str(tmp_path),
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert process.poll() is None, "the server died under the fuzzer"
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout and "Traceback" not in run.stdout
