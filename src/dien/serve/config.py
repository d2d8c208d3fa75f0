"""The scoring service's settings: limits, batching and the scoring mode."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """How ``dien serve`` answers ``POST /v1/score``.

    ``max_history`` None means the history limit the run was trained with
    (``data.max_history``). A longer history is rejected with 422 unless
    ``truncate_history``, which keeps its most recent ``max_history`` behaviours instead.
    Requests that arrive within ``batch_window_ms`` of the first waiting one are scored in
    one pass of the model, up to ``max_batch_candidates`` candidates in all (a single request
    is never split). ``shared_history=False`` scores every candidate as a full sample that
    repeats the history work: the naive baseline of the load test, not for production.
    """

    max_candidates: int = 1000
    max_history: int | None = None
    truncate_history: bool = False
    batch_window_ms: float = 2.0
    max_batch_candidates: int = 4096
    shared_history: bool = True

    def __post_init__(self) -> None:
        for name in ("max_candidates", "max_batch_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_history is not None and self.max_history < 0:
            raise ValueError(f"max_history must be >= 0, got {self.max_history}")
        if self.batch_window_ms < 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}")
