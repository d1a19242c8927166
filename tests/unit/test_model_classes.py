"""The gateway in front of a model of its own N classes (the fake TorchServe's labels): the class count and the
labels come from the served model's description, asked once, never from a constant. `top_k` is checked against
N with a 422 problem (its maximum is not in the schema), its default clamped to N; the `classes` allow-list
names the model's labels; v2's metadata and tensors are N wide; /v1/models says N, the labels and their source;
/v1/explain's class id is bound by N. Real TorchServe with a real N-class archive: tests/integration/
test_model_classes.py."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from fake_torchserve import scores
from imagegen import png
from in_process import API_KEY, gateway
from support import assert_problem

from contract.wire import TOP_K_HEADER

pytestmark = pytest.mark.anyio
IMAGE = png(64, 48)
LABELS = ["cat", "Coffee", "rocket"]
HEADERS = {"X-API-Key": API_KEY}


async def predict(client: httpx.AsyncClient, query: str = "", path: str = "/v1/predict") -> httpx.Response:
    return await client.post(f"{path}{query}", files={"file": ("photo.png", IMAGE, "image/png")}, headers=HEADERS)


def descriptions(served) -> list:
    return [s for s in served.torchserve.seen if s.query.get("customized") == "true"]


async def test_the_default_top_k_is_clamped_to_the_models_classes(tmp_path: Path) -> None:
    async with gateway(tmp_path, labels=LABELS) as served:
        response = await predict(served.client)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [p["label"] for p in body["predictions"]] == LABELS
        assert body["decision"] == {"label": "cat", "class_id": 0, "score": scores(3)[0]}
        assert served.torchserve.predictions()[0].headers[TOP_K_HEADER] == "3"


@pytest.mark.parametrize("top_k", ["4", "20"])
async def test_top_k_beyond_the_models_classes_is_a_422_naming_them(tmp_path: Path, top_k: str) -> None:
    async with gateway(tmp_path, labels=LABELS) as served:
        body = assert_problem(await predict(served.client, f"?top_k={top_k}"), 422, "invalid-request")
        assert body["detail"] == "top_k must be from 1 to 3 (the model has 3 classes)"
        assert_problem(await predict(served.client, f"?top_k={top_k}", "/v1/explain"), 422, "invalid-request")
        assert served.torchserve.predictions() == []
        assert (await predict(served.client, "?top_k=3")).status_code == 200


async def test_the_description_is_asked_once_not_per_request(tmp_path: Path) -> None:
    async with gateway(tmp_path, labels=LABELS) as served:
        for _ in range(3):
            assert (await predict(served.client, "?top_k=2")).status_code == 200
        assert len(descriptions(served)) == 1


async def test_an_answer_from_another_model_makes_the_gateway_ask_again(tmp_path: Path) -> None:
    """TorchServe now serves another archive under the same name: its answers name other weights, and the next
    request is checked against the new model's classes."""
    async with gateway(tmp_path, labels=LABELS) as served:
        assert (await predict(served.client, "?top_k=3")).status_code == 200
        served.torchserve.labels = ["cat", "coffee", "rocket", "moon"]
        served.torchserve.model["weights"] = "file:other.pth"
        assert (await predict(served.client, "?top_k=3")).status_code == 200  # checked against the old N
        assert (await predict(served.client, "?top_k=4")).status_code == 200  # against the new one
        assert len(descriptions(served)) == 2


async def test_the_allow_list_names_the_models_labels(tmp_path: Path) -> None:
    async with gateway(tmp_path, labels=LABELS) as served:
        body = (await predict(served.client, "?classes=coffee,ROCKET")).json()
        assert [(p["class_id"], p["label"]) for p in body["predictions"]] == [(1, "Coffee"), (2, "rocket")]
        assert sum(p["score"] for p in body["predictions"]) == pytest.approx(1.0)
        assert served.torchserve.predictions()[0].headers[TOP_K_HEADER] == "3"  # all N, to renormalise
        unknown = assert_problem(await predict(served.client, "?classes=cat,tabby,3"), 422, "invalid-request")
        assert unknown["unknown_classes"] == ["tabby", "3"]


async def test_unknown_below_decides_unknown_for_any_model(tmp_path: Path) -> None:
    async with gateway(tmp_path, labels=LABELS) as served:
        body = (await predict(served.client, "?unknown_below=0.9")).json()
        assert body["decision"] == {"label": "unknown", "class_id": None, "score": scores(3)[0]}


async def test_models_says_n_the_labels_and_their_source(tmp_path: Path) -> None:
    async with gateway(tmp_path, labels=LABELS) as served:
        served.torchserve.labels_source = "file:labels.txt"
        (model,) = (await served.client.get("/v1/models", headers=HEADERS)).json()["models"]
        assert (model["labels"], model["label_names"], model["labels_source"]) == (3, LABELS, "file:labels.txt")


async def test_explain_class_id_is_bound_by_the_models_classes(tmp_path: Path) -> None:
    async with gateway(tmp_path, labels=LABELS) as served:
        body = assert_problem(await predict(served.client, "?class_id=3", "/v1/explain"), 422, "invalid-request")
        assert body["detail"] == "class_id must be from 0 to 2 (the model has 3 classes)"
        assert served.torchserve.predictions() == []


async def test_v2_metadata_and_tensors_are_as_wide_as_the_models_classes(tmp_path: Path) -> None:
    async with gateway(tmp_path, labels=LABELS) as served:
        meta = (await served.client.get("/v2/models/resnet50", headers=HEADERS)).json()
        assert meta["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
        images = {"name": "images", "datatype": "BYTES", "shape": [2], "data": [base64.b64encode(IMAGE).decode()] * 2}
        response = await served.client.post("/v2/models/resnet50/infer", json={"inputs": [images]}, headers=HEADERS)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert output["shape"] == [2, 3] and output["data"] == pytest.approx(scores(3) * 2)
        too_many = {"name": "probabilities", "parameters": {"classification": 4}}
        refused = await served.client.post(
            "/v2/models/resnet50/infer", json={"inputs": [images], "outputs": [too_many]}, headers=HEADERS
        )
        assert refused.status_code == 422 and refused.json()["error"].endswith("from 1 to 3")
