"""Fuzz tests of the HTTP service, in process: schemathesis over its OpenAPI schema, and
hypothesis over adversarial JSON bodies of ``POST /v1/score``.

No response may be a 5xx; a 4xx carries ``detail``, a one-line message; a 200 of
``/v1/score`` holds one finite probability in [0, 1] per candidate; the responses match the
schema the service publishes; and the service still answers ``/healthz`` afterwards. The ASGI
application is called in process (no network), with its lifespan (the batcher) running.
The requests sent and their outcomes are counted and printed after the tests.
"""

from __future__ import annotations

import json
import math

import pytest
from fuzz_tally import record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_data import train_tiny_dien

from dien.serve import Scorer, ServeConfig

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from dien.serve.app import create_app  # noqa: E402

FAST = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
SLOW = settings(FAST, max_examples=400)
MAX_CANDIDATES, MAX_HISTORY = 16, 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-serve")
    run = train_tiny_dien(root, sizes=(64, 16, 16), batch_size=64)
    limits = ServeConfig(max_candidates=MAX_CANDIDATES, max_history=MAX_HISTORY)
    app = create_app(Scorer.from_run(run, config=limits))
    # no constants mined from the source of every module the app imports (torch too): ~40 s
    config = schemathesis.Config.from_dict({"analysis": {"constants": {"enabled": False}}})
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)


def outcome(target: str, response) -> str:
    """Check the service's contract for one response; count and return its outcome."""
    status = response.status_code
    assert status < 500, response.text
    if status >= 400:
        detail = json.loads(response.text)["detail"]
        assert isinstance(detail, str) and detail.strip(), response.text
        kind = f"{status} with a message"
    else:
        kind = f"{status}"
    record(target, kind)
    return kind


def check_scores(body: object, response) -> None:
    """A 200 of /v1/score: one finite probability in [0, 1] per candidate."""
    if response.status_code != 200:
        return
    reply = json.loads(response.text)
    scores = reply["scores"]
    assert len(scores) == len(body["candidates"])
    assert all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in scores), scores
    if reply["attention"] is not None:
        assert len(reply["attention"]) == len(scores)
        for weights in reply["attention"]:
            assert len(weights) == len(body.get("history", []))
            assert all(math.isfinite(w) and 0.0 <= w <= 1.0 for w in weights), weights


# The two GET routes take no parameters: there is no invalid request of them to generate.
OPERATIONS = [
    ("/v1/score", "POST", GenerationMode.POSITIVE),
    ("/v1/score", "POST", GenerationMode.NEGATIVE),
    ("/healthz", "GET", GenerationMode.POSITIVE),
    ("/metrics", "GET", GenerationMode.POSITIVE),
]


@pytest.mark.parametrize("path, method, mode", OPERATIONS)
def test_schema_operations_never_fail_and_match_the_schema(schema, path, method, mode):
    fuzz_operation(schema, path, method, mode, FAST)


@pytest.mark.slow
@pytest.mark.parametrize("path, method, mode", OPERATIONS[:2])
def test_schema_operations_many(schema, path, method, mode):
    fuzz_operation(schema, path, method, mode, SLOW)


def fuzz_operation(schema, path: str, method: str, mode: GenerationMode, profile) -> None:
    operation = schema[path][method]

    @profile
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call()
        case.validate_response(response, checks=CHECKS)
        outcome(f"schemathesis {method} {path} ({mode.value})", response)
        if path == "/v1/score" and isinstance(case.body, dict):
            check_scores(case.body, response)

    check()
    assert_healthy(schema)


def assert_healthy(schema) -> None:
    response = schema["/healthz"]["GET"].Case().call()
    assert response.status_code == 200 and json.loads(response.text)["status"] == "ok"


# --- adversarial JSON bodies of POST /v1/score -------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
RAW_IDS = (
    st.sampled_from(["i1", "i7", "c2", "u3", "", "<unk>", "\u00e9\u4e2d", "\ud800", "\x00", " "])
    | st.text(max_size=8)
    | st.integers(-(2**70), 2**70)
)
BAD_IDS = st.sampled_from([1.5, float("nan"), float("inf"), True, [], {}]) | JSON_VALUES
ITEMS = st.fixed_dictionaries({"item": RAW_IDS}, optional={"category": RAW_IDS | st.none()})
# most bodies are nearly right, so that many are scored; the rest break every rule
NEARLY_RIGHT = st.fixed_dictionaries(
    {"candidates": st.lists(ITEMS, max_size=MAX_CANDIDATES + 2)},
    optional={
        "user": RAW_IDS | st.none(),
        "history": st.lists(ITEMS, max_size=MAX_HISTORY + 2),
        "return_attention": st.booleans(),
    },
)
WRONG_ITEMS = st.fixed_dictionaries(
    {}, optional={"item": RAW_IDS | BAD_IDS, "category": BAD_IDS, "extra": JSON_VALUES}
)
WRONG = (
    st.fixed_dictionaries(
        {},
        optional={
            "user": BAD_IDS,
            "history": st.lists(ITEMS | WRONG_ITEMS, max_size=4) | JSON_VALUES,
            "candidates": st.lists(ITEMS | WRONG_ITEMS, max_size=4) | JSON_VALUES,
            "return_attention": JSON_VALUES,
            "extra": JSON_VALUES,
        },
    )
    | JSON_VALUES
)
# depths past what a recursive JSON parser or validator takes
DEEP = st.integers(1, 100_000).map(lambda d: '{"candidates": ' + "[" * d + "]" * d + "}")


def to_bytes(body: object) -> bytes:
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


@st.composite
def score_bodies(draw) -> tuple[object, bytes]:
    """``(body, its bytes)``: JSON, or text that only looks like JSON (body ``None``)."""
    how = draw(st.sampled_from(["nearly right"] * 4 + ["wrong"] * 2 + ["deep", "cut"]))
    if how == "deep":
        return None, draw(DEEP).encode()
    body = draw(NEARLY_RIGHT if how == "nearly right" else WRONG)
    if how == "cut":
        data = to_bytes(body)
        return None, data[: draw(st.integers(0, len(data)))]
    return body, to_bytes(body)


def post_score(schema, data: bytes):
    case = schema["/v1/score"]["POST"].Case(body=data, media_type="application/json")
    return case.call()


def score_adversarial(schema, sent: tuple[object, bytes]) -> None:
    body, data = sent
    response = post_score(schema, data)
    kind = outcome("hypothesis POST /v1/score (adversarial JSON)", response)
    if kind == "200":
        check_scores(body if isinstance(body, dict) else json.loads(data), response)


@FAST
@given(sent=score_bodies())
def test_score_adversarial_bodies_get_scores_or_a_4xx_message(schema, sent):
    score_adversarial(schema, sent)


@pytest.mark.slow
@SLOW
@given(sent=score_bodies())
def test_score_adversarial_bodies_many(schema, sent):
    score_adversarial(schema, sent)


def test_the_service_still_answers_after_the_fuzzing(schema):
    assert_healthy(schema)
    good = {"user": "u1", "history": [{"item": "i2"}], "candidates": [{"item": "i3"}]}
    response = post_score(schema, to_bytes(good))
    assert response.status_code == 200, response.text
    check_scores(good, response)
