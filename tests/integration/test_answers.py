"""Confidence-aware answers: an explicit 'unknown' decision, and allow-lists with renormalised scores."""

from __future__ import annotations

import pytest
from imagegen import jpeg, png
from support import Gateway, assert_problem, post
from torchvision.models import ResNet50_Weights

LABELS = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
JPEG = {"Content-Type": "image/jpeg"}


def predict(gateway: Gateway, api_key: str, **params) -> dict:
    response = post(gateway, api_key, content=jpeg(seed=21), headers=JPEG, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_decision_is_the_top_class_by_default(gateway: Gateway, api_key: str) -> None:
    body = predict(gateway, api_key)
    top = body["predictions"][0]
    assert body["decision"] == {"label": top["label"], "class_id": top["class_id"], "score": top["score"]}


def test_unknown_below_the_threshold(gateway: Gateway, api_key: str) -> None:
    # The test model's scores depend on the CPU it was fitted on: the thresholds are taken from the score
    # itself (halfway to 1 and halfway to 0), so the test holds for any top score strictly inside (0, 1).
    raw = predict(gateway, api_key)
    best = raw["predictions"][0]["score"]
    assert 0.0 < best < 1.0, f"a top score of {best} leaves no threshold on one side"
    below = predict(gateway, api_key, unknown_below=(best + 1.0) / 2)
    assert below["decision"] == {"label": "unknown", "class_id": None, "score": pytest.approx(best)}
    assert below["predictions"] == raw["predictions"]  # the raw predictions stay
    above = predict(gateway, api_key, unknown_below=best / 2)
    assert above["decision"]["label"] == raw["predictions"][0]["label"]


def test_allow_list_by_id_renormalises(gateway: Gateway, api_key: str) -> None:
    full = {p["class_id"]: p["score"] for p in predict(gateway, api_key, top_k=20)["predictions"]}
    allowed = list(full)[5:8]  # three classes outside the top 5
    body = predict(gateway, api_key, classes=",".join(map(str, allowed)))
    ids = [p["class_id"] for p in body["predictions"]]
    assert sorted(ids) == sorted(allowed)
    scores = {p["class_id"]: p["score"] for p in body["predictions"]}
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
    total = sum(full[c] for c in allowed)
    for class_id in allowed:
        assert scores[class_id] == pytest.approx(full[class_id] / total, rel=1e-4)
    assert body["decision"]["class_id"] == ids[0]


def test_allow_list_by_label_name(gateway: Gateway, api_key: str) -> None:
    body = predict(gateway, api_key, classes="Tench, goldfish ,crane", top_k=10)
    expected = {0, 1, LABELS.index("crane")}  # names match case-insensitively, spaces around commas ignored
    assert {p["class_id"] for p in body["predictions"]} == expected


def test_unknown_class_names_are_listed(gateway: Gateway, api_key: str) -> None:
    response = post(gateway, api_key, content=jpeg(), headers=JPEG, params={"classes": "tench,unicorn,1000,dragon"})
    body = assert_problem(response, 422, "invalid-request")
    assert body["unknown_classes"] == ["unicorn", "1000", "dragon"]
    assert "unicorn" in body["detail"] and "dragon" in body["detail"]


@pytest.mark.parametrize("params", [{"unknown_below": 1.5}, {"unknown_below": -1}, {"classes": ""}])
def test_bounds(gateway: Gateway, api_key: str, params: dict) -> None:
    assert_problem(post(gateway, api_key, content=jpeg(), headers=JPEG, params=params), 422, "invalid-request")


def test_batch_applies_the_same_options(gateway: Gateway, api_key: str) -> None:
    files = [("files", ("a.jpg", jpeg(seed=1), "image/jpeg")), ("files", ("b.png", png(), "image/png"))]
    threshold = 0.999
    response = post(
        gateway, api_key, "/v1/predict/batch", files=files, params={"classes": "0,1,2", "unknown_below": threshold}
    )
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        assert {p["class_id"] for p in result["predictions"]} <= {0, 1, 2}
        top = result["predictions"][0]
        # whatever the (CPU-dependent) renormalised score is, the decision follows it exactly
        expected = "unknown" if top["score"] < threshold else LABELS[top["class_id"]]
        assert result["decision"]["label"] == expected


def test_unknown_decision_in_a_batch_keeps_its_null_class(gateway: Gateway, api_key: str) -> None:
    files = [("files", ("a.jpg", jpeg(seed=1), "image/jpeg")), ("files", ("bad.txt", b"nope", "text/plain"))]
    response = post(gateway, api_key, "/v1/predict/batch", files=files, params={"unknown_below": 1.0})
    ok, bad = response.json()["results"]
    assert ok["decision"]["label"] == "unknown" and ok["decision"]["class_id"] is None
    assert set(bad) == {"filename", "error"}
