"""The HTTP scoring service: ``POST /v1/score`` over a trained run (FastAPI and uvicorn).

The web layer (:mod:`dien.serve.app`) is imported only when a server starts, so the scoring
core needs neither FastAPI nor uvicorn.
"""

from __future__ import annotations

from dien.serve.config import ServeConfig
from dien.serve.scorer import EncodedRequest, RequestError, ScoredRequest, Scorer

__all__ = [
    "EncodedRequest",
    "RequestError",
    "ScoredRequest",
    "Scorer",
    "ServeConfig",
    "run_server",
]


def run_server(scorer: Scorer, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``scorer`` until interrupted (uvicorn, one process, one model thread)."""
    import uvicorn

    from dien.serve.app import create_app

    uvicorn.run(create_app(scorer), host=host, port=port, log_level="warning", access_log=False)
