"""Ranking the handler's scores as the client asked: the `predictions` and `decision` of an answer.

- `top_k` and `min_score` cut the ranked list.
- `classes` (comma-separated class ids or label names) restricts the answer to an allow-list; the scores
  are renormalised over it, so they still sum to 1 across the allowed classes.
- `unknown_below`: when the best score is below it, the `decision` says "unknown" explicitly; the raw
  predictions stay next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Query

from contract.labels import UNKNOWN, normalise
from contract.wire import CLASSES, ItemAnswer
from gateway.digits import ascii_int
from gateway.problems import Problem
from gateway.schemas import Decision, Ranked

MAX_TOP_K = 20


@dataclass(frozen=True)
class RankOptions:
    top_k: int
    min_score: float | None
    unknown_below: float | None
    classes: frozenset[int] | None

    @property
    def upstream_top_k(self) -> int:
        """How many scores to ask TorchServe for: all of them when renormalising over an allow-list."""
        return CLASSES if self.classes else self.top_k


def resolve_classes(raw: str, labels: list[str]) -> frozenset[int]:
    """Class ids or label names (matched as contract/labels.py normalises them) → ids; unknown entries → 422
    listing them."""
    by_name: dict[str, list[int]] = {}
    for class_id, label in enumerate(labels):
        by_name.setdefault(normalise(label), []).append(class_id)
    ids: set[int] = set()
    unknown = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        number = ascii_int(entry)
        if number is not None and number < len(labels):
            ids.add(number)
        elif normalise(entry) in by_name:
            ids.update(by_name[normalise(entry)])
        else:
            unknown.append(entry)
    if unknown:
        raise Problem("invalid-request", f"unknown classes: {', '.join(unknown)}", unknown_classes=unknown)
    if not ids:
        raise Problem("invalid-request", "classes is empty")
    return frozenset(ids)


@dataclass(frozen=True)
class RankQuery:
    """The ranking parameters as the client sent them; gateway/deps.py makes them RankOptions (`classes` resolved
    against the served model's labels)."""

    top_k: int
    min_score: float | None
    unknown_below: float | None
    classes: str | None


async def rank_query(
    top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K, description="number of classes to return")] = 5,
    min_score: Annotated[float | None, Query(ge=0.0, le=1.0, description="drop predictions below this")] = None,
    unknown_below: Annotated[
        float | None, Query(ge=0.0, le=1.0, description="decide 'unknown' when the best score is below this")
    ] = None,
    classes: Annotated[
        str | None, Query(max_length=20000, description="allow-list: comma-separated class ids or label names")
    ] = None,
) -> RankQuery:
    return RankQuery(top_k, min_score, unknown_below, classes)


def ranked(answer: ItemAnswer, options: RankOptions) -> tuple[list[Ranked], Decision]:
    """(ranked predictions, decision) for one image."""
    scored = answer["predictions"]
    if options.classes is not None:
        kept = [p for p in scored if p["class_id"] in options.classes]
        total = sum(p["score"] for p in kept) or 1.0
        scored = [{**p, "score": p["score"] / total} for p in kept]
    best = scored[0] if scored else None
    decision: Decision
    if best is None or (options.unknown_below is not None and best["score"] < options.unknown_below):
        decision = {"label": UNKNOWN, "class_id": None, "score": best["score"] if best else None}
    else:
        decision = {"label": best["label"], "class_id": best["class_id"], "score": best["score"]}
    cut = [p for p in scored[: options.top_k] if options.min_score is None or p["score"] >= options.min_score]
    return [{"rank": i + 1, **p} for i, p in enumerate(cut)], decision
