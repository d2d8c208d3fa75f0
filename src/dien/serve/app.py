"""The HTTP scoring service: FastAPI routes, request schemas and Prometheus metrics.

Routes:

- ``POST /v1/score``: one user's behaviour sequence and N candidate items -> a click
  probability per candidate, and on request the attention weights over the history per
  candidate. Raw ids as in the input data; unknown ids score as the unknown id 0.
- ``GET /healthz``: ``{"status": "ok", "model": ...}`` once the model is loaded.
- ``GET /metrics``: Prometheus text: requests by route and status, request latency,
  requests and candidates per model batch.
- ``GET /openapi.json``, ``/docs``: the schema FastAPI derives from the models below.

A request that is not JSON gets 400; one that breaks the schema (wrong types, unknown fields)
or a limit (no candidates, too many, a history over the limit) gets 422. Either way ``detail``
says what is wrong, in one line, and the service keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from dien import __version__
from dien.serve.batcher import MicroBatcher
from dien.serve.scorer import EncodedRequest, RequestError, ScoredRequest, Scorer

logger = logging.getLogger(__name__)

RawId = Annotated[
    StrictStr | StrictInt, Field(description="A raw id as in the input data (string or integer).")
]
ROUTES = ("/v1/score", "/healthz", "/metrics")
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Item(BaseModel):
    """An item of the behaviour sequence, or a candidate target item."""

    model_config = ConfigDict(extra="forbid")
    item: RawId
    category: RawId | None = Field(
        None, description="Raw category id; default: the item's category in the dataset."
    )


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: RawId | None = Field(None, description="Raw user id; null or unknown: id 0.")
    history: list[Item] = Field(
        default_factory=list, description="The user's behaviour sequence, oldest first."
    )
    candidates: list[Item] = Field(description="Candidate target items to score (at least 1).")
    return_attention: StrictBool = Field(
        False, description="Also return attention weights over the history per candidate."
    )


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="Click probability of each candidate, in order.")
    attention: list[list[float]] | None = Field(
        None,
        description="Per candidate, the attention weight of each behaviour of the (possibly "
        "truncated) history; null unless asked for, or when the model has no attention.",
    )
    model: str


class ErrorResponse(BaseModel):
    detail: str = Field(description="What is wrong with the request, in one line.")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not JSON."},
    422: {"model": ErrorResponse, "description": "The body breaks the schema or a limit."},
}


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dien_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dien_request_latency_seconds",
            "Time from request to response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "dien_batch_requests",
            "Requests scored together in one pass of the model.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.batch_candidates = Histogram(
            "dien_batch_candidates",
            "Candidates scored together in one pass of the model.",
            buckets=(1, 10, 100, 1000, 10000),
            registry=self.registry,
        )

    def observe_batch(self, requests: int, candidates: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_candidates.observe(candidates)


def create_app(scorer: Scorer) -> FastAPI:
    """The FastAPI application serving ``scorer``'s model."""
    config = scorer.config
    metrics = Metrics()
    batcher: MicroBatcher[EncodedRequest, ScoredRequest] = MicroBatcher(
        scorer.score,
        weight=lambda r: len(r.items),
        window_s=config.batch_window_ms / 1000,
        max_weight=config.max_batch_candidates,
        on_batch=metrics.observe_batch,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="dien scoring service",
        version=__version__,
        summary=f"Click-through rates of candidate items from a {scorer.model_name} model.",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]):
        start = time.perf_counter()
        route = request.url.path if request.url.path in ROUTES else "other"
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.requests.labels(route, str(status)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - start)

    @app.post("/v1/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
    async def score(body: ScoreRequest) -> ScoreResponse:
        """Click probabilities of the candidates for this user and behaviour sequence."""
        try:
            encoded = scorer.encode(
                body.user,
                [(b.item, b.category) for b in body.history],
                [(c.item, c.category) for c in body.candidates],
                body.return_attention,
            )
        except RequestError as error:
            raise HTTPException(status_code=422, detail=str(error)) from error
        result = await batcher.submit(encoded)
        attention = None if result.attention is None else result.attention.tolist()
        return ScoreResponse(
            scores=result.probabilities.tolist(), attention=attention, model=scorer.model_name
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "model": scorer.model_name}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        malformed = any(e.get("type") == "json_invalid" for e in error.errors())
        return JSONResponse({"detail": describe_errors(error.errors())}, 400 if malformed else 422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(error).__name__}"}, 500)

    return app


def describe_errors(errors: Sequence[dict[str, Any]]) -> str:
    """Pydantic's errors as one line: ``candidates.0.item: Input should be ...; ...``.

    The two branches of a raw id (string or integer) fail together; they are said once.
    """
    lines: list[str] = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "str", "int")]
        where = ".".join(loc) or "body"
        message = e.get("msg", "invalid")
        if e.get("type") in ("string_type", "int_type") and e["loc"][-1] in ("str", "int"):
            message = "Input should be a string or an integer id"
        if e.get("type") == "json_invalid":
            where, message = "body", f"malformed JSON: {e.get('ctx', {}).get('error', message)}"
        line = f"{where}: {message}"
        if line not in lines:
            lines.append(line)
    return "; ".join(lines)
