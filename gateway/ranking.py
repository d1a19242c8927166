"""Ranking the handler's scores as the client asked: the `predictions` and `decision` of an answer.

- `top_k` and `min_score` cut the ranked list. `top_k` is 1 to min(MAX_TOP_K, N) for the served model's N
  classes (its description, gateway/upstream.py's model_info), checked here, not in the schema: N is the
  archive's; without it, DEFAULT_TOP_K clamped to N.
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
from contract.wire import ItemAnswer
from gateway.digits import ascii_int
from gateway.problems import Problem
from gateway.schemas import Decision, Ranked

MAX_TOP_K = 20
DEFAULT_TOP_K = 5


def top_k_within(asked: int | None, classes: int) -> int:
    """The `top_k` the client asked for (None: the default) for a model of `classes` classes; 422 beyond them."""
    limit = min(MAX_TOP_K, classes)
    if asked is None:
        return min(DEFAULT_TOP_K, limit)
    if not 1 <= asked <= limit:
        raise Problem("invalid-request", f"top_k must be from 1 to {limit} (the model has {classes} classes)")
    return asked


def class_id_within(class_id: int | None, classes: int) -> int | None:
    """A class id the client named, for a model of `classes` classes; 422 beyond them."""
    if class_id is not None and not 0 <= class_id < classes:
        raise Problem("invalid-request", f"class_id must be from 0 to {classes - 1} (the model has {classes} classes)")
    return class_id


@dataclass(frozen=True)
class RankOptions:
    top_k: int
    min_score: float | None
    unknown_below: float | None
    classes: frozenset[int] | None
    model_classes: int  # the served model's N

    @property
    def upstream_top_k(self) -> int:
        """How many scores to ask TorchServe for: all of them when renormalising over an allow-list."""
        return self.model_classes if self.classes else self.top_k


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

    top_k: int | None
    min_score: float | None
    unknown_below: float | None
    classes: str | None


def top_k_note(verb: str) -> str:
    """The OpenAPI description of a route's `top_k`: its bounds are checked by `top_k_within`, not the schema."""
    return f"number of classes to {verb}: 1 to {MAX_TOP_K}, at most the model's classes (default {DEFAULT_TOP_K})"


async def rank_query(
    top_k: Annotated[int | None, Query(ge=1, description=top_k_note("return"))] = None,
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
