"""OpenAI's embeddings API (issue 43, item 6): the real `openai` client against a real dsee-serve on 127.0.0.1,
serving the tiny feature-extraction engine of the session (conftest's `engines`). What it answers is compared
with Engine.embed on the same directory, and the token counts with transformers' tokenizer."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import sentences
from test_serve import served

import dsee_deploy as dd
from dsee_deploy.serve import Engine
from dsee_deploy.serve.load import Connection

openai = pytest.importorskip("openai")

# The server batches an input with other inputs than Engine.embed does, so it meets other padding and GEMM
# shapes: fp32 rounding moves an embedding by ~1e-7, well inside this.
ATOL = 1e-6
MAX_INPUTS = 8
DOCS = Path(__file__).resolve().parents[1] / "docs" / "serving-production.md"
TEXTS = [s for s, _ in sentences(7, seed=21)] + ["a " * 80 + "film"]  # the last is truncated at max_length


@pytest.fixture(scope="module")
def fe_dir(engines):
    if "feature-extraction" not in engines:
        pytest.skip("this dsee-export has no --task feature-extraction")
    return engines["feature-extraction"]


@pytest.fixture(scope="module")
def engine(fe_dir) -> Engine:
    return Engine.load(fe_dir, threads=1)


@pytest.fixture(scope="module")
def port(fe_dir):
    with served(fe_dir, "--threads", "1", "--max-inputs", str(MAX_INPUTS)) as (port, _):
        yield port


def client(port: int):
    # no retries: every answer here is the server's first
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)


def rows(response) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    assert all(d.object == "embedding" for d in response.data)
    return np.array([d.embedding for d in response.data], np.float32)


def test_float_and_base64_answers_equal_engine_embed(port, engine):
    want = engine.embed(TEXTS)
    c = client(port)
    as_floats = c.embeddings.create(input=TEXTS, model="tiny", encoding_format="float")
    assert as_floats.object == "list" and as_floats.model == "tiny"
    np.testing.assert_allclose(rows(as_floats), want, atol=ATOL)
    # Without encoding_format the client asks for base64 and decodes it into floats itself.
    np.testing.assert_allclose(rows(c.embeddings.create(input=TEXTS, model="tiny")), want, atol=ATOL)
    # Asked for base64, it hands the strings over as they came: little-endian float32.
    raw = c.embeddings.create(input=TEXTS, model="tiny", encoding_format="base64")
    decoded = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in raw.data])
    assert decoded.shape == want.shape == (len(TEXTS), engine.width)
    np.testing.assert_allclose(decoded, want, atol=ATOL)


def test_a_list_keeps_its_order_and_a_lone_text_is_one_input(port, engine):
    c = client(port)
    forward = rows(c.embeddings.create(input=TEXTS, model="m", encoding_format="float"))
    backward = rows(c.embeddings.create(input=TEXTS[::-1], model="m", encoding_format="float"))
    np.testing.assert_allclose(backward, forward[::-1], atol=ATOL)
    alone = rows(c.embeddings.create(input=TEXTS[2], model="m", encoding_format="float"))
    np.testing.assert_allclose(alone, forward[2:3], atol=ATOL)


def test_token_ids_embed_as_their_text(port, engine):
    """Token arrays run as given: the tokenizer's ids, special tokens included, embed as the text does."""
    ids = [list(e.ids) for e in engine.encoder.encode(TEXTS[:3])]
    c = client(port)
    want = engine.embed(TEXTS[:3])
    many = c.embeddings.create(input=ids, model="m", encoding_format="float")
    np.testing.assert_allclose(rows(many), want, atol=ATOL)
    assert many.usage.prompt_tokens == sum(map(len, ids))
    one = c.embeddings.create(input=ids[1], model="m", encoding_format="float")
    np.testing.assert_allclose(rows(one), want[1:2], atol=ATOL)
    np.testing.assert_allclose(engine.embed([engine.encoder.token_ids(ids[0], "ids")]), want[:1], atol=ATOL)


def test_usage_counts_the_tokens_the_engine_ran(port, fe_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(fe_dir))
    max_length = dd.Manifest.read(fe_dir).max_length
    counts = [len(ids) for ids in tok(TEXTS, truncation=True, max_length=max_length)["input_ids"]]
    assert counts[-1] == max_length  # the long text counts as truncated, [CLS] and [SEP] included
    usage = client(port).embeddings.create(input=TEXTS, model="m").usage
    assert usage.prompt_tokens == usage.total_tokens == sum(counts)


def test_model_and_user_are_taken_and_dimensions_must_be_the_width(port, engine):
    c = client(port)
    answer = c.embeddings.create(
        input="a film", model="text-embedding-3-small", dimensions=engine.width, user="someone"
    )
    assert answer.model == "text-embedding-3-small" and len(answer.data[0].embedding) == engine.width
    with pytest.raises(openai.BadRequestError) as caught:
        c.embeddings.create(input="a film", model="m", dimensions=7)
    assert caught.value.status_code == 400
    assert caught.value.body == (
        f'"dimensions" is 7, but this engine gives {engine.width}-dimensional embeddings and does not truncate '
        f'them: leave out "dimensions", or send {engine.width}'
    )


def test_too_many_inputs_is_the_servers_413(port):
    with pytest.raises(openai.APIStatusError) as caught:
        client(port).embeddings.create(input=["a film"] * (MAX_INPUTS + 1), model="m")
    assert caught.value.status_code == 413
    assert caught.value.body == (
        f'"input" holds {MAX_INPUTS + 1} inputs, over the limit of {MAX_INPUTS}: split the request, or start '
        f"dsee-serve with a larger --max-inputs"
    )


@pytest.mark.parametrize(
    "make_input, words",
    [
        (lambda e: [[1, 2], [], "a film"], "input[1] is an empty list of token ids"),
        (lambda e: ["a film", [1, e.encoder.vocab_size]], "input[1] has token id {vocab} at position 1"),
        (lambda e: [1] * (e.max_length + 1), "input[0] has {over} token ids, over the engine's max length"),
        (lambda e: ["a film", [1, "x"]], "input[1] is not a list of token ids"),
    ],
    ids=["empty", "outside-vocabulary", "too-long", "not-ids"],
)
def test_bad_token_ids_are_400_naming_the_input(port, engine, make_input, words):
    with pytest.raises(openai.BadRequestError) as caught:
        client(port).embeddings.create(input=make_input(engine), model="m")
    want = words.format(vocab=engine.encoder.vocab_size, over=engine.max_length + 1)
    assert want in caught.value.body and "\n" not in caught.value.body, caught.value.body


def test_embeddings_and_embed_share_batches_and_metrics(port, engine):
    """Concurrent requests to both routes all answer their own inputs; both are counted by endpoint."""
    want = engine.embed(TEXTS)
    c = client(port)

    def ask(i: int) -> np.ndarray:
        text = TEXTS[i % len(TEXTS)]
        if i % 2:
            return rows(c.embeddings.create(input=text, model="m", encoding_format="float"))[0]
        with Connection("127.0.0.1", port) as conn:
            answer = conn.request("/v1/embed", json.dumps({"inputs": [text]}).encode())
        assert answer.status == 200
        return np.array(json.loads(answer.body)["embeddings"][0], np.float32)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, range(32)))
    np.testing.assert_allclose(got, [want[i % len(TEXTS)] for i in range(32)], atol=ATOL)
    with Connection("127.0.0.1", port) as conn:
        metrics = conn.request("/metrics").body.decode()
    assert 'dsee_requests_total{endpoint="embeddings",status="200"}' in metrics
    assert 'dsee_requests_total{endpoint="embed",status="200"}' in metrics


def test_a_classification_engine_answers_404(engines):
    with served(engines["classification"], "--threads", "1") as (port, _):
        with pytest.raises(openai.NotFoundError) as caught:
            client(port).embeddings.create(input="a film", model="m")
    assert caught.value.body == (
        "engine 'classification' is a classification engine, so it has no embeddings: POST /v1/predict, or "
        "serve an engine exported with --task feature-extraction"
    )


def test_the_docs_example_runs_against_a_real_server(port, engine, fe_dir):
    """docs/serving-production.md's openai example, as a reader pastes it, with this server's port: it prints
    what the page shows, for the tiny engine (the page's numbers are the packaged all-MiniLM-L6-v2's)."""
    section = DOCS.read_text().split("## OpenAI's embeddings API", 1)[1]
    code = re.search(r"```python\n(.*?)\n```", section, re.S).group(1)
    assert 'base_url="http://127.0.0.1:8000/v1"' in code
    code = code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = done.stdout.splitlines()
    tokens = sum(len(e.ids) for e in engine.encoder.encode(["a gripping film", "a thrilling movie"]))
    assert first == f"2 {engine.width} Usage(prompt_tokens={tokens}, total_tokens={tokens})"
    np.testing.assert_allclose(json.loads(second), engine.embed(["a gripping film"])[0][:4], atol=ATOL)
