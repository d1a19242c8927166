"""The INT8 engine: built by the real CLI from the test model that sees, gated against fp32, served for real.

Known answers come from the test model (tests/testmodel.py): fp32 gives each of its twelve photos the label
it was fitted to, so evaluate's top-1 on a folder of them is exactly 1.0, and INT8 is held to that photo by
photo. The gate is shown to refuse a real bad quantisation: calibrated on flat images unlike its gate photos.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest
import yaml
from imagegen import encode
from PIL import Image
from support import API_KEY, PYTHON, Gateway, gateway_env, start_torchserve
from testmodel import PHOTOS, TEST_MODEL_FILE, photo

from gateway.keys import key_hash
from modelserver.__main__ import main
from modelserver.evaluate import classes, evaluate
from modelserver.mar import archive_info
from modelserver.quantize import GateReport, Thresholds

WNIDS = {label: wnid for wnid, label in classes()}


def build(weights: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        PYTHON,
        "-m",
        "modelserver",
        "build",
        "--weights",
        str(weights),
        "--engine",
        "onnx-int8",
        "--output",
        str(output),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def weights(seeing_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model's state dict under its own name (the model block shows it)."""
    path = tmp_path_factory.mktemp("weights") / TEST_MODEL_FILE
    shutil.copy(seeing_model_dir / "resnet50.pth", path)
    return path


@pytest.fixture(scope="module")
def int8_build(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(model store, build output) of the INT8 archive with the default calibration set."""
    store = tmp_path_factory.mktemp("int8_store")
    done = build(weights, store / "resnet50.mar")
    assert done.returncode == 0, done.stderr[-2000:]
    return store, done.stdout


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model's twelve photos in ImageFolder layout: half the class folders by WordNet id, half by
    label (spaces as underscores)."""
    root = tmp_path_factory.mktemp("photos")
    for n, (name, label) in enumerate(PHOTOS.items()):
        folder = root / (WNIDS[label] if n % 2 else label.replace(" ", "_"))
        folder.mkdir()
        (folder / f"{name}.jpg").write_bytes(photo(name))
    return root


def test_the_build_measures_int8_against_fp32_and_records_it(int8_build: tuple[Path, str]) -> None:
    store, output = int8_build
    gate = archive_info(store / "resnet50.mar")[0]["int8_gate"]
    assert gate["calibration_images"] == 80 and gate["gate_images"] == 80
    assert gate["calibration"] == "scikit-image sample photos (default set)"
    assert gate["thresholds"] == {"min_top1_agreement": 0.85, "min_top5_overlap": 0.7, "max_prob_diff": 0.6}
    assert GateReport(**gate).failures() == []
    assert 0 < gate["max_prob_diff"] <= 0.6  # INT8 is not fp32: some probability moved
    assert f"top-1 agreement {gate['top1_agreement']:.3f}, top-5 overlap {gate['top5_overlap']:.3f}" in output
    with zipfile.ZipFile(store / "resnet50.mar") as mar:
        names = set(mar.namelist())
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert {"model.onnx", "model.int8.onnx", "resnet50.pth"} <= names
    assert config["handler"]["engine"] == "onnx-int8"
    assert (config["minWorkers"], config["maxWorkers"], config["batchSize"]) == (2, 2, 4)  # INT8's defaults


def test_if_missing_without_an_engine_keeps_the_int8_archive(
    int8_build: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`make run` after `make mar ENGINE=onnx-int8` serves that archive: `build --if-missing` with no --engine
    keeps an archive of any engine (it used to rebuild it as fp32, here from weights it cannot download)."""
    archive = int8_build[0] / "resnet50.mar"
    before = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert main(["build", "--if-missing", "--output", str(archive)]) == 0
    assert "exists; not rebuilding (engine onnx-int8)" in capsys.readouterr().out
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == before


def test_evaluate_fp32_and_int8_on_the_test_models_photos(
    int8_build: tuple[Path, str], seeing_model_store: Path, photos: Path
) -> None:
    fp32 = evaluate(photos, seeing_model_store / "resnet50.mar", progress=False)
    int8 = evaluate(photos, int8_build[0] / "resnet50.mar", progress=False)
    assert fp32["model"]["engine"] == "onnx" and int8["model"]["engine"] == "onnx-int8"
    assert fp32["images"] == int8["images"] == 12 and fp32["classes"] == 12
    assert fp32["top1"] == 1.0 and fp32["top5"] == 1.0 and fp32["errors"] == {}
    assert int8["top1"] >= 11 / 12 and int8["top5"] == 1.0
    assert int8["model"]["int8_gate"] == archive_info(int8_build[0] / "resnet50.mar")[0]["int8_gate"]
    assert fp32["per_class"][WNIDS["tabby"]] == {"label": "tabby", "images": 1, "top1": 1.0, "top5": 1.0}


@pytest.fixture(scope="module")
def int8_gateway(int8_build: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with start_torchserve(tmp_path_factory.mktemp("ts-int8"), int8_build[0]) as server:
        env = gateway_env(server, [key_hash(API_KEY)], rate_limit_rps="1000", rate_limit_burst="1000")
        with Gateway(tmp_path_factory.mktemp("gw-int8") / "gateway.log", env) as gateway:
            yield gateway


def test_served_int8_shows_its_gate_and_evaluates_as_in_process(
    int8_build: tuple[Path, str], int8_gateway: Gateway, photos: Path
) -> None:
    models = httpx.get(f"{int8_gateway.url}/v1/models", headers={"X-API-Key": API_KEY}, timeout=30).json()
    (model,) = models["models"]
    assert model["engine"] == "onnx-int8" and model["weights"] == f"file:{TEST_MODEL_FILE}"
    assert model["int8_gate"] == archive_info(int8_build[0] / "resnet50.mar")[0]["int8_gate"]
    served = evaluate(photos, gateway_url=int8_gateway.url, api_key=API_KEY, progress=False)
    local = evaluate(photos, int8_build[0] / "resnet50.mar", progress=False)
    assert served["mode"] == "gateway" and served["model"]["engine"] == "onnx-int8"
    assert (served["top1"], served["top5"], served["per_class"]) == (local["top1"], local["top5"], local["per_class"])


def test_served_int8_gives_embeddings_and_says_clearly_it_gives_no_maps(int8_gateway: Gateway) -> None:
    headers = {"X-API-Key": API_KEY, "Content-Type": "image/jpeg"}
    (model,) = httpx.get(f"{int8_gateway.url}/v1/models", headers=headers, timeout=30).json()["models"]
    assert model["outputs"] == ["embedding"]
    refused = httpx.post(f"{int8_gateway.url}/v1/explain", content=photo("chelsea"), headers=headers, timeout=60)
    assert refused.status_code == 501 and refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["type"].endswith("/output-unavailable") and problem["code"] == "unsupported_output"
    assert "INT8" in problem["detail"] and problem["request_id"] == refused.headers["x-request-id"]
    embedded = httpx.post(f"{int8_gateway.url}/v1/embed", content=photo("chelsea"), headers=headers, timeout=60)
    assert embedded.status_code == 200 and embedded.json()["dimensions"] == 2048


def test_the_gate_refuses_int8_calibrated_on_images_unlike_its_traffic(weights: Path, tmp_path: Path) -> None:
    """--calibration DIR holds every 4th image apart: here flat grey images calibrate, the photos gate.
    Activation ranges from flat images clip everything a photo has, and the gate sees it."""
    folder = tmp_path / "calibration"
    folder.mkdir()
    names = list(PHOTOS)[:4]
    for n in range(16):
        path = folder / f"{n:02d}.png"
        if n % 4 == 3:
            path.with_suffix(".jpg").write_bytes(photo(names[n // 4]))
        else:
            path.write_bytes(encode(Image.new("RGB", (320, 240), (120 + n, 120, 120)), "PNG"))
    output = tmp_path / "store" / "resnet50.mar"
    done = build(weights, output, "--calibration", str(folder))
    assert done.returncode == 2, done.stdout[-2000:]
    assert "error: refusing to package: INT8 accuracy gate failed:" in done.stderr
    assert "calibrated on 12: " in done.stdout and "on 4 held-apart images" in done.stdout
    assert not output.exists()


def test_gate_report_failures_name_each_metric() -> None:
    limits = Thresholds(min_top1_agreement=0.9, min_top5_overlap=0.8, max_prob_diff=0.35)
    report = GateReport(
        "x", 10, 10, top1_agreement=0.85, top5_overlap=0.75, max_prob_diff=0.5, thresholds=asdict(limits)
    )
    assert report.failures() == [
        "top-1 agreement 0.850 < 0.9",
        "top-5 overlap 0.750 < 0.8",
        "max probability difference 0.500 > 0.35",
    ]
    assert GateReport("x", 10, 10, 0.9, 0.8, 0.35, asdict(limits)).failures() == []  # the limits themselves pass
