"""An archive of its own classes, end to end: the test model's backbone with a head of four classes and new labels
(tests/testmodel.py's OWN_CLASSES), built by the CLI with `--labels`, served by a real TorchServe behind the real
gateway and answered over HTTP (/v1, v2, explanations, embeddings, /v1/models), evaluated in process and through
the gateway on a folder and on a list. Nothing here knows 1000: N is the archive's, 4."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from reference import reference
from support import API_KEY, PYTHON, Gateway, assert_problem, gateway_env, post, start_torchserve
from testmodel import LABELS, OWN_CLASSES, OWN_LABELS_FILE, PHOTOS, Reference, own_sources, photo

from gateway.keys import key_hash
from handlers.maps import class_maps
from handlers.resnet_outputs import ResNetWithMaps
from modelserver.evaluate import EvaluationError, evaluate
from modelserver.mar import archive_info, archive_labels
from modelserver.torchserve import TorchServe

OWN = list(OWN_CLASSES.values())  # by class id
N = len(OWN)
HEADERS = {"X-API-Key": API_KEY}
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def own_torchserve(own_classes_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    with start_torchserve(tmp_path_factory.mktemp("ts-own"), own_classes_store) as server:
        yield server


@pytest.fixture(scope="module")
def own_gateway(own_torchserve: TorchServe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = gateway_env(own_torchserve, [key_hash(API_KEY)], rate_limit_rps="1000", rate_limit_burst="1000")
    with Gateway(tmp_path_factory.mktemp("gw-own") / "gateway.log", env) as server:
        yield server


def predict(gateway: Gateway, name: str, path: str = "/v1/predict", **params: str) -> httpx.Response:
    return post(gateway, API_KEY, path, content=photo(name), headers=JPEG, params=params)


def test_the_archive_carries_the_labels_and_says_where_they_came_from(own_classes_store: Path) -> None:
    mar = own_classes_store / "resnet50.mar"
    assert archive_labels(mar) == OWN
    meta, settings = archive_info(mar)
    assert (meta["classes"], meta["labels_source"]) == (N, f"file:{OWN_LABELS_FILE}")
    with zipfile.ZipFile(mar) as archive:
        assert np.load(io.BytesIO(archive.read("fc_weight.npy"))).shape == (N, 2048)
        assert {"gate_set.npz", "model.onnx"} <= set(archive.namelist())  # the worker-start gate's set, N wide
        with np.load(io.BytesIO(archive.read("gate_set.npz"))) as gate_set:
            assert gate_set["logits"].shape[1] == N


def test_each_photo_gets_its_own_label(own_gateway: Gateway) -> None:
    for name, label in OWN_CLASSES.items():
        body = predict(own_gateway, name).json()
        assert body["decision"]["label"] == label, (name, body)
        assert [p["label"] for p in body["predictions"]][0] == label
        assert sorted(p["label"] for p in body["predictions"]) == sorted(OWN)  # the default 5, clamped to N
        assert sum(p["score"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-4)


def test_top_k_is_checked_against_the_models_classes(own_gateway: Gateway) -> None:
    body = assert_problem(predict(own_gateway, "coffee", top_k=str(N + 1)), 422, "invalid-request")
    assert body["detail"] == f"top_k must be from 1 to {N} (the model has {N} classes)"
    assert_problem(predict(own_gateway, "coffee", "/v1/explain", top_k=str(N + 1)), 422, "invalid-request")
    assert len(predict(own_gateway, "coffee", top_k=str(N)).json()["predictions"]) == N
    assert len(predict(own_gateway, "coffee", top_k="2").json()["predictions"]) == 2


def test_the_allow_list_and_unknown_below_use_the_archives_labels(own_gateway: Gateway) -> None:
    body = predict(own_gateway, "rocket", classes="Rocket, CAT").json()
    assert {p["label"] for p in body["predictions"]} == {"rocket", "cat"}
    assert body["decision"]["label"] == "rocket"
    assert sum(p["score"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-4)
    by_normalised = predict(own_gateway, "coffee", classes="Café_Crème,space shuttle").json()
    assert by_normalised["decision"]["label"] == "café crème"
    refused = assert_problem(predict(own_gateway, "coffee", classes="tabby,cat,4"), 422, "invalid-request")
    assert refused["unknown_classes"] == ["tabby", "4"]  # ImageNet's labels and ids beyond N are no classes here
    unsure = predict(own_gateway, "coffee", unknown_below="1.0").json()
    assert unsure["decision"]["label"] == "unknown" and unsure["predictions"][0]["label"] == "café crème"


def test_explanations_map_the_models_classes(own_gateway: Gateway, seeing_model: Reference) -> None:
    """The maps of the four classes are the backbone's layer4 map weighed by the head's rows: the test model's
    maps for the ImageNet classes the rows came from (handlers/maps.py), computed here in eager PyTorch."""
    response = predict(own_gateway, "chelsea", "/v1/explain")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [e["class_id"] for e in body["explanations"]] == [p["class_id"] for p in body["predictions"]]
    assert sorted(e["class_id"] for e in body["explanations"]) == list(range(N))
    with torch.inference_mode():
        _, features, _ = ResNetWithMaps(seeing_model.model)(reference(photo("chelsea"))[None])
    rows = [LABELS.index(PHOTOS[name]) for name in OWN_CLASSES]
    weight = seeing_model.model.fc.weight.detach().numpy()[rows]
    for explanation in body["explanations"]:
        expected = class_maps(features[0].numpy(), weight, [explanation["class_id"]])[0]
        got = np.asarray(explanation["cam"])
        assert got.shape == (7, 7)
        assert np.abs(got - expected).max() <= 1e-3 * max(1.0, float(np.abs(expected).max()))
    assert_problem(predict(own_gateway, "chelsea", "/v1/explain", class_id=str(N)), 422, "invalid-request")
    png = predict(own_gateway, "coffee", "/v1/explain", format="png", class_id="1")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-explained-class-id"] == "1"
    assert png.headers["x-explained-label"] == quote("café crème", safe=" ") == "caf%C3%A9 cr%C3%A8me"
    assert Image.open(io.BytesIO(png.content)).format == "PNG"


def test_embeddings_are_the_backbones(own_gateway: Gateway, seeing_model: Reference) -> None:
    """A new head leaves the backbone's pooled vector, the embedding, as it was."""
    response = post(own_gateway, API_KEY, "/v1/embed", content=photo("rocket"), headers=JPEG)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dimensions"] == 2048
    with torch.inference_mode():
        _, _, pooled = ResNetWithMaps(seeing_model.model)(reference(photo("rocket"))[None])
    expected = pooled[0].numpy() / np.linalg.norm(pooled[0].numpy())
    assert float(np.dot(np.asarray(body["embedding"]), expected)) > 0.9999


def test_models_says_n_the_labels_and_their_source(own_gateway: Gateway) -> None:
    (model,) = httpx.get(f"{own_gateway.url}/v1/models", headers=HEADERS, timeout=30).json()["models"]
    assert (model["labels"], model["label_names"]) == (N, OWN)
    assert model["labels_source"] == f"file:{OWN_LABELS_FILE}"
    assert model["engine_choice"]["verdict"]["passed"], model["engine_choice"]  # the start gate ran, N wide


def test_v2_is_as_wide_as_the_models_classes(own_gateway: Gateway) -> None:
    meta = httpx.get(f"{own_gateway.url}/v2/models/resnet50", headers=HEADERS, timeout=30).json()
    assert meta["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, N]}
    names = list(OWN_CLASSES)
    data = [base64.b64encode(photo(name)).decode() for name in names]
    request = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(data)], "data": data}]}
    response = httpx.post(f"{own_gateway.url}/v2/models/resnet50/infer", json=request, headers=HEADERS, timeout=60)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["shape"] == [len(names), N]
    probabilities = np.asarray(output["data"]).reshape(len(names), N)
    assert list(probabilities.argmax(axis=1)) == list(range(N))  # each photo its own class, in OWN_CLASSES order
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    request["outputs"] = [{"name": "probabilities", "parameters": {"classification": N + 1}}]
    refused = httpx.post(f"{own_gateway.url}/v2/models/resnet50/infer", json=request, headers=HEADERS, timeout=60)
    assert refused.status_code == 422 and refused.json()["error"].endswith(f"from 1 to {N}")
    request["outputs"] = [{"name": "probabilities", "parameters": {"classification": 2}}]
    ranked = httpx.post(f"{own_gateway.url}/v2/models/resnet50/infer", json=request, headers=HEADERS, timeout=60)
    assert ranked.json()["outputs"][0]["shape"] == [len(names), 2]
    assert ranked.json()["outputs"][0]["data"][0].endswith(":0:cat")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The photos in class folders named by their labels as a user might spell them, and as a list file (relative
    paths and one absolute) in train-head's `path<TAB>label` format."""
    root = tmp_path_factory.mktemp("own-labelled")
    folder, lines = root / "folder", []
    for name, label in OWN_CLASSES.items():
        (folder / label.upper().replace(" ", "_")).mkdir(parents=True)
        (folder / label.upper().replace(" ", "_") / f"{name}.jpg").write_bytes(photo(name))
        lines.append(f"folder/{label.upper().replace(' ', '_')}/{name}.jpg\t{label}")
    lines[0] = f"{folder.resolve() / 'CAT' / 'chelsea.jpg'}\tcat"
    listing = root / "held-apart.tsv"
    listing.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return folder, listing


def test_evaluate_names_classes_by_the_archives_labels(own_classes_store: Path, labelled: tuple[Path, Path]) -> None:
    folder, listing = labelled
    mar = own_classes_store / "resnet50.mar"
    on_folder = evaluate(folder, mar, progress=False)
    on_list = evaluate(None, mar, progress=False, listing=listing)
    for result in (on_folder, on_list):
        assert (result["images"], result["classes"], result["top1"], result["top_k"]) == (N, N, 1.0, N - 1)
        assert result["model"]["labels_source"] == f"file:{OWN_LABELS_FILE}"
        assert set(result["per_class"]) == set(OWN) and result["errors"] == {}
    assert on_list["list"] == str(listing) and on_folder["folder"] == str(folder)
    assert list(on_folder["per_class"]) == OWN  # keyed by label (no WordNet ids), in class-id order


def test_evaluate_through_the_gateway_matches_in_process(
    own_gateway: Gateway, own_classes_store: Path, labelled: tuple[Path, Path]
) -> None:
    _, listing = labelled
    served = evaluate(None, gateway_url=own_gateway.url, api_key=API_KEY, progress=False, listing=listing)
    local = evaluate(None, own_classes_store / "resnet50.mar", progress=False, listing=listing)
    assert served["model"]["label_names"] == OWN
    keys = ("images", "top_k", "top1", "top5", "per_class", "errors")
    assert {k: served[k] for k in keys} == {k: local[k] for k in keys}


def test_evaluate_refuses_imagenet_names_for_an_archive_of_its_own(own_classes_store: Path, tmp_path: Path) -> None:
    (tmp_path / "n02123045").mkdir()
    (tmp_path / "n02123045" / "chelsea.jpg").write_bytes(photo("chelsea"))
    with pytest.raises(EvaluationError, match=r"1 class folder\(s\) name no class of the model \(its labels: cat,"):
        evaluate(tmp_path, own_classes_store / "resnet50.mar", progress=False)
    listing = tmp_path / "list.tsv"
    listing.write_text("n02123045/chelsea.jpg\ttabby\n")
    with pytest.raises(EvaluationError, match=r"1 line\(s\) of .* name no class of the model .*: tabby"):
        evaluate(None, own_classes_store / "resnet50.mar", progress=False, listing=listing)


def test_int8_of_a_small_model_is_gated_on_its_top_k(own_classes_store: Path, tmp_path: Path) -> None:
    """INT8's build gate on a model of 4 classes compares the top min(5, N - 1) = 3, and says so: its top-5 would
    always be all 4 classes. Whether INT8 passes is the CPU's kernels' to decide (a head of few classes on generic
    photos lies near its boundaries): a refusal must name the same measure."""
    weights, labels = own_sources(own_classes_store)
    build = [PYTHON, "-m", "modelserver", "build", "--weights", str(weights), "--labels", str(labels)]
    build += ["--engine", "onnx-int8", "--output", str(tmp_path / "x.mar")]
    done = subprocess.run(build, capture_output=True, text=True, timeout=900)
    assert re.search(rf"top-{N - 1} overlap \d\.\d{{3}}", done.stdout), done.stdout + done.stderr
    if done.returncode != 0:
        assert "INT8 accuracy gate failed" in done.stderr, done.stderr
        assert not (tmp_path / "x.mar").exists()
        return
    gate = archive_info(tmp_path / "x.mar")[0]["int8_gate"]
    assert gate["top_k"] == N - 1
    assert f"top-{N - 1} overlap {gate['top5_overlap']:.3f}" in done.stdout
    assert json.loads(zipfile.ZipFile(tmp_path / "x.mar").read("index_to_name.json")) == {
        str(i): label for i, label in enumerate(OWN)
    }
