"""gateway/ranking.py: how the handler's scores become an answer's `predictions` and `decision` (top_k,
min_score, the `classes` allow-list renormalised over its classes, `unknown_below`), and how an allow-list
is read (ids or names, a name that stands for several classes, unknown entries listed)."""

from __future__ import annotations

import pytest

from contract.wire import ItemAnswer
from gateway.problems import Problem
from gateway.ranking import RankOptions, ranked, resolve_classes

LABELS = ["crane", "Tabby", "crane", "espresso", "1"]


def answer(*scores: float) -> ItemAnswer:
    predictions = [{"class_id": i, "label": LABELS[i], "score": s} for i, s in enumerate(scores)]
    predictions.sort(key=lambda p: -p["score"])
    return {"request_id": "r", "model": {}, "predictions": predictions}  # type: ignore[typeddict-item]


def options(top_k: int = 5, min_score=None, unknown_below=None, classes=None) -> RankOptions:
    allowed = frozenset(classes) if classes is not None else None
    return RankOptions(top_k, min_score, unknown_below, allowed, model_classes=len(LABELS))


def test_classes_by_id_or_by_name_in_any_case() -> None:
    assert resolve_classes("3, tabby,CRANE", LABELS) == {0, 1, 2, 3}  # "crane" names two classes


def test_a_number_beyond_the_classes_is_read_as_a_name() -> None:
    assert resolve_classes("1", LABELS) == {1}  # an id first
    with pytest.raises(Problem) as refused:
        resolve_classes("5,unicorn,espresso", LABELS)
    assert refused.value.slug == "invalid-request"
    assert refused.value.extra["unknown_classes"] == ["5", "unicorn"]


def test_only_ascii_digits_are_ids() -> None:
    with pytest.raises(Problem) as refused:
        resolve_classes("\u0663", LABELS)  # ARABIC-INDIC DIGIT THREE
    assert refused.value.extra["unknown_classes"] == ["\u0663"]


@pytest.mark.parametrize("raw", ["", " , ,", ","])
def test_an_empty_allow_list_is_refused(raw: str) -> None:
    with pytest.raises(Problem, match="empty"):
        resolve_classes(raw, LABELS)


def test_top_k_and_min_score_cut_the_ranked_list() -> None:
    predictions, decision = ranked(answer(0.1, 0.5, 0.3, 0.1), options(top_k=3, min_score=0.2))
    assert [(p["rank"], p["class_id"]) for p in predictions] == [(1, 1), (2, 2)]
    assert decision == {"label": "Tabby", "class_id": 1, "score": 0.5}


def test_an_allow_list_renormalises_its_scores_to_sum_to_one() -> None:
    predictions, decision = ranked(answer(0.1, 0.5, 0.3, 0.1), options(classes={0, 2}))
    assert [p["class_id"] for p in predictions] == [2, 0]
    assert [p["score"] for p in predictions] == pytest.approx([0.75, 0.25])
    assert decision["class_id"] == 2 and decision["score"] == pytest.approx(0.75)
    assert options(classes={0}).upstream_top_k == len(LABELS) and options(top_k=3).upstream_top_k == 3


def test_unknown_below_decides_unknown_but_keeps_the_predictions() -> None:
    predictions, decision = ranked(answer(0.4, 0.35, 0.25), options(unknown_below=0.5))
    assert decision == {"label": "unknown", "class_id": None, "score": 0.4}
    assert [p["class_id"] for p in predictions] == [0, 1, 2]
    assert ranked(answer(0.4, 0.35, 0.25), options(unknown_below=0.4))[1]["class_id"] == 0  # at it: decided


def test_min_score_cuts_the_list_not_the_decision() -> None:
    predictions, decision = ranked(answer(0.9), options(min_score=0.95))
    assert predictions == []
    assert decision == {"label": "crane", "class_id": 0, "score": 0.9}


def test_no_scores_at_all_are_decided_unknown_without_a_score() -> None:
    empty: ItemAnswer = {"request_id": None, "model": {}, "predictions": []}  # type: ignore[typeddict-item]
    assert ranked(empty, options()) == ([], {"label": "unknown", "class_id": None, "score": None})
