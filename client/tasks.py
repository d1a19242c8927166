"""What a run asks the gateway for, one type per route, so that each carries only the options its route
honours: `Classify` (`/v1/predict`, with `top_k` and `min_score`) or `Embed` (`/v1/embed`, which has
neither). `imgcls classify` builds the first, `imgcls embed` the second; the sender takes either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from client.records import Record
from client.wire import embedding_of, predictions_of


@dataclass(frozen=True)
class Classify:
    """`/v1/predict`: each file's top classes, at most `top_k` of them (None: the gateway's default, 5 or the
    model's classes if fewer), none scoring below `min_score`."""

    top_k: int | None = None
    min_score: float | None = None
    route: ClassVar[str] = "/v1/predict"
    field: ClassVar[Literal["predictions"]] = "predictions"

    def params(self) -> dict[str, int | float]:
        params: dict[str, int | float] = {}
        if self.top_k is not None:
            params["top_k"] = self.top_k
        if self.min_score is not None:
            params["min_score"] = self.min_score
        return params

    def record(self, path: str, answer: object, request_id: str | None) -> Record | None:
        """The file's record from its answer (single, or one batch result); None when it has no predictions."""
        predictions = predictions_of(answer)
        if predictions is None:
            return None
        return {"path": path, "status": "ok", "predictions": predictions, "request_id": request_id}


@dataclass(frozen=True)
class Embed:
    """`/v1/embed`: each file's embedding, as base64 (what the .npy writer stores); no other option."""

    route: ClassVar[str] = "/v1/embed"
    field: ClassVar[Literal["embedding"]] = "embedding"

    def params(self) -> dict[str, str]:
        return {"encoding": "base64"}

    def record(self, path: str, answer: object, request_id: str | None) -> Record | None:
        """The file's record from its answer (single, or one batch result); None when it has no embedding."""
        embedding = embedding_of(answer)
        if embedding is None:
            return None
        return {"path": path, "status": "ok", "embedding": embedding, "request_id": request_id}


Task = Classify | Embed
