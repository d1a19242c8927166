"""What imgcls reads of the gateway's answers.

The answers are the gateway's public v1 API (docs/api.md; gateway/schemas.py declares them on the server
side, which the client does not import: it installs alone as `.[client]`). The TypedDicts below declare the
members imgcls reads; an answer is checked for them (`is_problem`, `is_batch`, `predictions_of`,
`embedding_of`) before they are read, and the rest of it is ignored.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict, TypeGuard


class Ranked(TypedDict):
    """One of `/v1/predict`'s predictions, written to the results as the gateway sent it."""

    rank: int
    class_id: int
    label: str
    score: float


class Problem(TypedDict):
    """An `application/problem+json` answer, or a batch result's `error`."""

    type: str
    detail: NotRequired[str]
    status: NotRequired[int]
    code: NotRequired[str]  # the per-image reason, e.g. "undecodable"


class Batch(TypedDict):
    """A `/v1/predict/batch` or `/v1/embed/batch` answer (its `request_id` is read by `request_id_of`)."""

    results: list[object]  # one per file, in input order: each is checked as it is read


def is_problem(body: object) -> TypeGuard[Problem]:
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return False
    members: tuple[tuple[str, type], ...] = (("detail", str), ("status", int), ("code", str))
    return all(name not in body or isinstance(body[name], kind) for name, kind in members)


def is_batch(body: object) -> TypeGuard[Batch]:
    return isinstance(body, dict) and isinstance(body.get("results"), list)


def is_ranked(item: object) -> TypeGuard[Ranked]:
    if not isinstance(item, dict):
        return False
    members: tuple[tuple[str, type | tuple[type, ...]], ...] = (
        ("rank", int),
        ("class_id", int),
        ("label", str),
        ("score", (int, float)),
    )
    return all(isinstance(item.get(name), kind) for name, kind in members)


def predictions_of(answer: object) -> list[Ranked] | None:
    """The `predictions` of a `/v1/predict` answer or batch result; None when it has none (or not as declared)."""
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if not isinstance(predictions, list):
        return None
    ranked = [item for item in predictions if is_ranked(item)]
    return ranked if len(ranked) == len(predictions) else None


def embedding_of(answer: object) -> str | None:
    """The base64 `embedding` of a `/v1/embed` answer or batch result; None when it has none."""
    embedding = answer.get("embedding") if isinstance(answer, dict) else None
    return embedding if isinstance(embedding, str) else None


def request_id_of(body: object, default: str | None) -> str | None:
    """The answer's `request_id`, else `default` (the X-Request-ID header)."""
    request_id = body.get("request_id") if isinstance(body, dict) else None
    return request_id if isinstance(request_id, str) else default
