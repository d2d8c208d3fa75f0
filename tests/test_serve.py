"""The scoring service: request mapping, batching, and the server end to end over HTTP."""

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_data import make_tiny_dataset, train_tiny_dien

from dien.data.batch import Batch
from dien.data.format import PreparedDataset
from dien.serve import RequestError, Scorer, ServeConfig
from dien.serve.batcher import MicroBatcher
from dien.serve.scorer import length_groups
from dien.train.inference import load_run, score_split


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return train_tiny_dien(root, sizes=(256, 64, 64), batch_size=128)


@pytest.fixture(scope="module")
def dataset(run_dir):
    return PreparedDataset.open(load_run(run_dir).config.data.path)


def raw_request(dataset: PreparedDataset, index: int, split: str = "test") -> dict:
    """The JSON request for one prepared sample, in raw ids."""
    a = dataset.split(split)
    users, items, cats = (dataset.vocab(n) for n in ("users", "items", "categories"))
    lo, hi = a.hist_offsets[index], a.hist_offsets[index + 1]
    history = [
        {"item": items[i], "category": cats[c]}
        for i, c in zip(a.hist_items[lo:hi], a.hist_cats[lo:hi], strict=True)
    ]
    target = {"item": items[a.item[index]], "category": cats[a.category[index]]}
    return {"user": users[a.user[index]], "history": history, "candidates": [target]}


def pairs(entries: list[dict]) -> list[tuple]:
    return [(e["item"], e.get("category")) for e in entries]


def encode(scorer: Scorer, request: dict):
    return scorer.encode(
        request.get("user"),
        pairs(request["history"]),
        pairs(request["candidates"]),
        request.get("return_attention", False),
    )


def eager(scorer: Scorer, request: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities and attention of the eager model on rows that each repeat the history."""
    e = encode(scorer, request)
    N, L = len(e.items), len(e.hist_items)
    batch = Batch(
        user=torch.full((N,), e.user),
        item=torch.from_numpy(e.items),
        category=torch.from_numpy(e.categories),
        hist_items=torch.from_numpy(e.hist_items).expand(N, L),
        hist_cats=torch.from_numpy(e.hist_cats).expand(N, L),
        hist_lengths=torch.full((N,), L),
    )
    with torch.no_grad():
        out = scorer.model(batch)
    return torch.sigmoid(out.logit.double()).numpy(), out.attention.double().numpy()


def many_candidates(dataset: PreparedDataset, index: int, n: int) -> dict:
    request = raw_request(dataset, index)
    items = dataset.vocab("items")
    request["candidates"] = [{"item": items[k]} for k in range(1, n + 1)]
    return request


def test_scorer_maps_raw_ids_and_defaults_categories(run_dir, dataset):
    scorer = Scorer.from_run(run_dir)
    request = raw_request(dataset, 3)
    e = encode(scorer, request)
    a = dataset.split("test")
    lo, hi = a.hist_offsets[3], a.hist_offsets[4]
    assert e.user == a.user[3] and e.items.tolist() == [a.item[3]]
    np.testing.assert_array_equal(e.hist_items, a.hist_items[lo:hi])
    np.testing.assert_array_equal(e.hist_cats, a.hist_cats[lo:hi])
    # no category: the item's own; unknown raw ids and None: id 0
    e = scorer.encode("nobody", [("i5", None), ("nothing", "c2")], [("i7", None), (7, None)])
    assert e.user == 0 and e.hist_items.tolist() == [5, 0]
    assert e.hist_cats.tolist() == [dataset.item_category[5], 2]
    assert e.items.tolist() == [7, 0] and e.categories.tolist() == [dataset.item_category[7], 0]
    assert scorer.encode(None, [], [("i1", None)]).user == 0


def test_scorer_limits(run_dir):
    scorer = Scorer.from_run(run_dir, config=ServeConfig(max_candidates=3, max_history=4))
    with pytest.raises(RequestError, match="empty"):
        scorer.encode(None, [], [])
    with pytest.raises(RequestError, match="4 candidates, more than .* limit of 3"):
        scorer.encode(None, [], [("i1", None)] * 4)
    with pytest.raises(RequestError, match="5 behaviours, more than .* limit of 4"):
        scorer.encode(None, [("i1", None)] * 5, [("i1", None)])
    truncating = Scorer.from_run(run_dir, config=ServeConfig(max_history=4, truncate_history=True))
    history = [(f"i{k}", None) for k in range(1, 8)]
    e = truncating.encode(None, history, [("i1", None)])
    assert e.hist_items.tolist() == [4, 5, 6, 7]  # the most recent four


@pytest.mark.parametrize("shared", [True, False])
def test_batched_requests_score_like_the_eager_model_alone(run_dir, dataset, shared):
    scorer = Scorer.from_run(run_dir, config=ServeConfig(shared_history=shared))
    requests = [many_candidates(dataset, i, n) for i, n in ((0, 3), (5, 1), (9, 6), (2, 4))]
    for r in requests:
        r["return_attention"] = True
    results = scorer.score([encode(scorer, r) for r in requests])  # one batch
    alone = scorer.score([encode(scorer, requests[2])])  # one row, expand()
    np.testing.assert_allclose(alone[0].probabilities, results[2].probabilities, atol=1e-6)
    for r, result in zip(requests, results, strict=True):
        want_p, want_a = eager(scorer, r)
        L = len(r["history"])
        np.testing.assert_allclose(result.probabilities, want_p, atol=1e-6)
        assert result.attention.shape == (len(r["candidates"]), L)
        np.testing.assert_allclose(result.attention, want_a[:, :L], atol=1e-6)
        if L:
            np.testing.assert_allclose(result.attention.sum(axis=1), 1.0, atol=1e-6)


def test_length_groups_partition_requests_and_keep_long_histories_apart():
    lengths = [10, 100, 12, 0, 11, 95, 3]
    groups = length_groups(lengths, [100] * len(lengths))
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [[lengths[i] for i in g] for g in groups] == [[0], [3], [10, 11, 12], [95, 100]]
    assert length_groups([5, 5, 5], [1, 1, 1]) == [[0, 1, 2]]
    assert length_groups([0, 100], [1, 1]) == [[0], [1]]
    assert length_groups([], []) == []


def test_batcher_returns_each_result_to_its_caller_and_respects_the_weight_limit():
    batches = []

    def run(items):
        batches.append(list(items))
        if "boom" in items:
            raise RuntimeError("boom")
        return [f"<{i}>" for i in items]

    async def scenario():
        batcher = MicroBatcher(run, weight=len, window_s=0.05, max_weight=6)
        batcher.start()
        words = ["ab", "cde", "f", "ghij", "kl", "m", "nopqr", "st"]
        results = await asyncio.gather(*(batcher.submit(w) for w in words))
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit("boom")
        after = await batcher.submit("xy")
        await batcher.stop()
        return words, results, after

    words, results, after = asyncio.run(scenario())
    assert results == [f"<{w}>" for w in words] and after == "<xy>"
    assert sorted(w for b in batches for w in b) == sorted([*words, "boom", "xy"])
    assert all(sum(map(len, b)) <= 6 for b in batches)


def test_batcher_starts_again_after_a_stop():
    # an app's lifespan may run twice (schemathesis starts one per test): found by the fuzz tests
    async def scenario():
        batcher = MicroBatcher(lambda items: [i * 2 for i in items], len, 0.0, 8)
        answers = []
        for _ in range(2):
            batcher.start()
            answers.append(await batcher.submit("ab"))
            await batcher.stop()
        return answers

    assert asyncio.run(scenario()) == ["abab", "abab"]


def test_batcher_refuses_items_when_not_running():
    async def scenario():
        batcher = MicroBatcher(lambda items: list(items), len, 0.0, 8)
        await batcher.stop()  # stopping a batcher that never started does nothing
        with pytest.raises(RuntimeError, match="start"):
            await batcher.submit("ab")
        batcher.start()
        await batcher.stop()
        with pytest.raises(RuntimeError, match="start"):
            await batcher.submit("ab")

    asyncio.run(scenario())


# --- the server as a process -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body: str | bytes | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"content-type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("log") / "serve.log"
    command = [sys.executable, "-m", "dien", "serve", "--run", str(run_dir), "--port", str(port)]
    command += ["--max-candidates", "8", "--max-history", "20"]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if call(port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dien serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield port
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def test_server_scores_match_dien_predict_on_the_same_samples(server, run_dir, dataset):
    expected, _ = score_split(load_run(run_dir), dataset, "test")
    indices = range(24)
    requests = [json.dumps(raw_request(dataset, i)) for i in indices]
    with ThreadPoolExecutor(8) as pool:  # concurrent, so the server batches them
        answers = list(pool.map(lambda body: call(server, "POST", "/v1/score", body), requests))
    for i, (status, text) in zip(indices, answers, strict=True):
        assert status == 200, text
        reply = json.loads(text)
        assert reply["model"] == "dien" and reply["attention"] is None
        assert reply["scores"] == pytest.approx([expected[i]], abs=1e-5)


def test_server_returns_attention_per_candidate(server, run_dir, dataset):
    scorer = Scorer.from_run(run_dir)
    request = {**many_candidates(dataset, 9, 5), "return_attention": True}
    status, text = call(server, "POST", "/v1/score", json.dumps(request))
    assert status == 200, text
    reply = json.loads(text)
    want_p, want_a = eager(scorer, request)
    L = len(request["history"])
    assert L > 0 and np.array(reply["attention"]).shape == (5, L)
    np.testing.assert_allclose(reply["scores"], want_p, atol=1e-5)
    np.testing.assert_allclose(reply["attention"], want_a, atol=1e-5)


BAD_REQUESTS = [
    ("{not json", 400, "malformed JSON"),
    ('{"candidates": [{"item": 1.5}]}', 422, "candidates.0.item: Input should be a string"),
    ('{"candidates": [{"item": "i1"}], "return_attention": "yes"}', 422, "return_attention"),
    ('{"candidates": [{"item": "i1"}], "histroy": []}', 422, "histroy: Extra inputs"),
    ('{"history": []}', 422, "candidates: Field required"),
    ('["i1"]', 422, "body: Input should be a valid dictionary"),
    ('{"candidates": []}', 422, "candidates is empty"),
    (json.dumps({"candidates": [{"item": "i1"}] * 9}), 422, "9 candidates, more than"),
    (
        json.dumps({"candidates": [{"item": "i1"}], "history": [{"item": "i2"}] * 21}),
        422,
        "21 behaviours, more than this service's limit of 20",
    ),
]


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(server, dataset):
    good = json.dumps(raw_request(dataset, 1))
    status, before = call(server, "POST", "/v1/score", good)
    assert status == 200
    _, metrics = call(server, "GET", "/metrics")
    errors_before = counter(metrics, "/v1/score", "422") + counter(metrics, "/v1/score", "400")
    for body, want_status, want_message in BAD_REQUESTS:
        status, text = call(server, "POST", "/v1/score", body)
        assert status == want_status, (body, text)
        assert want_message in json.loads(text)["detail"], text
    status, after = call(server, "POST", "/v1/score", good)
    assert status == 200 and json.loads(after) == json.loads(before)
    _, metrics = call(server, "GET", "/metrics")
    errors = counter(metrics, "/v1/score", "422") + counter(metrics, "/v1/score", "400")
    assert errors - errors_before == len(BAD_REQUESTS)
    assert counter(metrics, "/v1/score", "500") == 0
    assert "dien_request_latency_seconds_bucket" in metrics


def counter(metrics: str, route: str, status: str) -> float:
    key = f'dien_requests_total{{route="{route}",status="{status}"}} '
    return sum(float(line[len(key) :]) for line in metrics.splitlines() if line.startswith(key))


def test_health_and_openapi(server):
    status, text = call(server, "GET", "/healthz")
    assert status == 200 and json.loads(text) == {"status": "ok", "model": "dien"}
    status, text = call(server, "GET", "/openapi.json")
    schema = json.loads(text)
    assert status == 200 and "/v1/score" in schema["paths"]
    request = schema["components"]["schemas"]["ScoreRequest"]
    assert set(request["properties"]) == {"user", "history", "candidates", "return_attention"}


def test_openapi_documents_the_error_bodies_and_the_metrics_text(run_dir):
    # the schema said 422 bodies hold a list of errors and /metrics JSON: found by schemathesis
    pytest.importorskip("fastapi")
    from dien.serve.app import create_app

    schema = create_app(Scorer.from_run(run_dir)).openapi()
    responses = schema["paths"]["/v1/score"]["post"]["responses"]
    for status in ("400", "422"):
        body = responses[status]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/ErrorResponse"}
    detail = schema["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]
    assert detail["type"] == "string"
    assert list(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]


def test_unknown_ids_score_as_the_unknown_id(server):
    base = {"history": [{"item": "i3"}], "candidates": [{"item": "zzz"}, {"item": "i4"}]}
    _, a = call(server, "POST", "/v1/score", json.dumps({**base, "user": "no-such-user"}))
    _, b = call(server, "POST", "/v1/score", json.dumps({**base, "user": None}))
    assert json.loads(a)["scores"] == json.loads(b)["scores"]
    _, c = call(server, "POST", "/v1/score", json.dumps(replace_first(base, "<unknown>")))
    assert json.loads(c)["scores"][0] == json.loads(b)["scores"][0]


def replace_first(request: dict, item: str) -> dict:
    return {**request, "candidates": [{"item": item}, *request["candidates"][1:]]}


def test_scorer_refuses_a_dataset_with_other_vocabularies(run_dir, tmp_path):
    other = make_tiny_dataset(tmp_path / "other", sizes=(50, 10, 10))
    loaded = load_run(run_dir)
    smaller = replace(loaded, vocab=replace(loaded.vocab, items=loaded.vocab.items + 1))
    with pytest.raises(ValueError, match="vocabulary sizes"):
        Scorer(smaller, other)
