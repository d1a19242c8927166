"""The INT8 and OpenVINO engines: built by the real CLI from the test model that sees, gated against fp32 at
build and again at worker start, served for real.

Known answers come from the test model (tests/testmodel.py): fp32 gives each of its twelve photos the label
it was fitted to, so evaluate's top-1 on a folder of them is exactly 1.0, and INT8 is held to that photo by
photo. The gate is shown to refuse a real bad quantisation: calibrated on flat images unlike its gate photos;
the worker-start gate, a corrupted INT8 model (fp32 is served instead). Each engine is held to the bounds of
its precision (handlers/gate.py's LIMITS), not to numbers measured on one CPU.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import yaml
from imagegen import encode
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from support import API_KEY, PYTHON, Gateway, gateway_env, metrics_url, start_torchserve
from testmodel import LABELS, PHOTOS, PROB_TOLERANCE, TEST_MODEL_FILE, photo

from gateway.keys import key_hash
from handlers.cpu_features import present, this_cpu_flags
from handlers.engine_choice import AUTO, FALLBACK, POLICY_ENV, PRECISION, plan
from handlers.engine_start import REFUSED_METRIC, start
from handlers.engines import INT8_ONNX_FILE, OnnxEngine, load_engine, softmax
from handlers.gate import GATE_FILE, LIMITS, compare, min_cosine
from handlers.imaging import decode, preprocess
from modelserver.__main__ import main
from modelserver.archive import ArchiveError, ServingConfig, reconfigured
from modelserver.evaluate import classes, evaluate
from modelserver.mar import archive_info, unpack
from modelserver.quantize import GateReport, Thresholds
from modelserver.torchserve import TorchServe

WNIDS = {label: wnid for wnid, label in classes()}


def build(weights: Path, output: Path, *extra: str, engine: str = "onnx-int8") -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "modelserver", "build", "--weights", str(weights), "--engine", engine, "--output", str(output)]
    cmd += extra
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


# --- every engine against fp32, and the gate at worker start ----------------------------------------------


def test_each_engine_agrees_with_fp32_within_its_precisions_bounds(
    int8_build: tuple[Path, str], tmp_path: Path
) -> None:
    """On the test model's twelve photos every engine gives logits and pooled vectors; its probabilities and
    embeddings stay within its precision's limits of fp32's (the gate's largest probability difference and
    smallest cosine), and fp32 engines within the suite's tolerance.
    bf16 runs wherever OpenVINO can compute it (AVX-512 emulates it; handlers/engine_choice.py still never
    serves it without bf16 in hardware)."""
    model_dir = unpack(int8_build[0] / "resnet50.mar", tmp_path)
    images = np.stack([preprocess(decode(photo(name), 10**8)) for name in PHOTOS])
    fp32_logits, fp32_pooled = OnnxEngine(model_dir, threads=2).run_outputs(images, ["logits", "pooled"])
    fp32 = softmax(fp32_logits)
    assert list(fp32.argmax(axis=1)) == [LABELS.index(label) for label in PHOTOS.values()]
    for name in ("openvino-fp32", "openvino-bf16", "openvino-int8", "onnx-int8"):
        engine = load_engine(name, model_dir, threads=2)
        assert {"logits", "pooled", "features"} <= set(engine.outputs)
        logits, pooled = engine.run_outputs(images, ["logits", "pooled"])
        assert logits.shape == (12, 1000) and pooled.shape == (12, 2048)
        top1, _, diff = compare(fp32, softmax(logits))  # top-5 overlap is the gate's, on its larger set
        limits = LIMITS[PRECISION[name]]
        assert top1 >= 11 / 12, name  # at most one photo of twelve changes its label
        assert diff <= limits.max_prob_diff, (name, diff)
        assert min_cosine(fp32_pooled, pooled) >= limits.min_pooled_cosine, name
        if PRECISION[name] == "fp32":
            assert top1 == 1.0 and diff <= PROB_TOLERANCE, (name, diff)


def corrupted(mar: Path, store: Path) -> Path:
    """A copy of `mar` in `store` whose INT8 model has every int8 convolution weight negated: a model that loads,
    runs and answers wrongly, as a damaged or mis-converted file would."""
    with zipfile.ZipFile(mar) as source, zipfile.ZipFile(store / "resnet50.mar", "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == INT8_ONNX_FILE:
                model = onnx.load_from_string(data)
                for tensor in model.graph.initializer:
                    if tensor.data_type == onnx.TensorProto.INT8 and len(tensor.dims) == 4:
                        values = onnx.numpy_helper.to_array(tensor)
                        tensor.CopyFrom(onnx.numpy_helper.from_array(-np.maximum(values, -127), tensor.name))
                data = model.SerializeToString()
            target.writestr(item, data)
    return store


def describe(server: TorchServe) -> dict:
    auth = {"Authorization": f"Bearer {server.keys()['management']}"}
    url = f"{server.management_url}/models/resnet50?customized=true"
    return httpx.get(url, headers=auth, timeout=30).json()[0]["customizedMetadata"]


def refused_counts(server: TorchServe) -> list[float]:
    """REFUSED_METRIC's samples on TorchServe's metrics port, once it shows them."""
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(f"{metrics_url(server)}/metrics", timeout=30).text
        samples = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == REFUSED_METRIC]
        if samples or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


def test_a_corrupted_int8_model_is_refused_at_worker_start_and_fp32_served(
    int8_build: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The archive passed the build's gate; its INT8 model is damaged afterwards. Each worker checks it on its
    CPU at start, refuses it and serves fp32, and says so: in its log, in /v1/models and in a metric."""
    intact_dir = unpack(int8_build[0] / "resnet50.mar", tmp_path_factory.mktemp("intact"))
    settings = archive_info(int8_build[0] / "resnet50.mar")[1]
    intact = start(intact_dir, settings, False, 1, {}, this_cpu_flags())
    assert intact.engine.name == "onnx-int8", intact.record  # intact, it passes its gate on this CPU
    store = corrupted(int8_build[0] / "resnet50.mar", tmp_path_factory.mktemp("corrupted"))
    with start_torchserve(tmp_path_factory.mktemp("ts-corrupted"), store) as server:
        env = gateway_env(server, [key_hash(API_KEY)], rate_limit_rps="1000", rate_limit_burst="1000")
        with Gateway(tmp_path_factory.mktemp("gw-corrupted") / "gateway.log", env) as gateway:
            headers = {"X-API-Key": API_KEY, "Content-Type": "image/jpeg"}
            (model,) = httpx.get(f"{gateway.url}/v1/models", headers=headers, timeout=30).json()["models"]
            answer = httpx.post(f"{gateway.url}/v1/predict", content=photo("chelsea"), headers=headers, timeout=60)
        counts = refused_counts(server)
        log = (server.workdir / "logs" / "model_log.log").read_text()
    assert (model["engine"], model["precision"], model["int8_gate"]) == (FALLBACK, "fp32", None)
    assert model["outputs"] == ["embedding", "cam"]  # fp32's, maps included
    refusal = model["engine_choice"]["refused"]["onnx-int8"]
    assert refusal["passed"] is False and refusal["failures"] and refusal["engine"] == "onnx-int8"
    assert model["engine_choice"]["asked"] == "onnx-int8"
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "tabby"
    assert log.count("engine onnx-int8 REFUSED on this CPU") == 2  # each of the two workers decided alone
    assert log.count("serving engine onnx (asked: onnx-int8, FELL BACK to fp32)") == 2
    assert counts and sum(counts) == 2


@pytest.fixture(scope="module")
def auto_store(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An `auto` archive (its default policy, near-fp32), built by the real CLI."""
    store = tmp_path_factory.mktemp("auto_store")
    done = build(weights, store / "resnet50.mar", engine=AUTO)
    assert done.returncode == 0, done.stderr[-2000:]
    return store


def test_auto_serves_the_first_engine_that_passes_its_gate_on_this_cpu(
    auto_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The archive says near-fp32; the environment raises it to int8 at worker start. What is served is the first
    candidate for this CPU's flags that passed its gate here, and the description and the log name it."""
    meta, settings = archive_info(auto_store / "resnet50.mar")
    assert (meta["engine"], settings["engine"], settings["precision"]) == (AUTO, AUTO, "near-fp32")
    with zipfile.ZipFile(auto_store / "resnet50.mar") as mar:
        assert {INT8_ONNX_FILE, GATE_FILE} <= set(mar.namelist())
    with pytest.MonkeyPatch.context() as env:
        env.setenv(POLICY_ENV, "int8")
        with start_torchserve(tmp_path_factory.mktemp("ts-auto"), auto_store) as server:
            described = describe(server)
            log = (server.workdir / "logs" / "model_log.log").read_text()
    flags = this_cpu_flags()
    candidates = plan(AUTO, "int8", flags, has_int8_model=True).candidates
    choice, served = described["engine_choice"], described["engine"]
    assert served == next(name for name in candidates if name not in choice["refused"])
    assert all(not verdict["passed"] for verdict in choice["refused"].values())
    assert (described["precision"], described["precision_policy"]) == (PRECISION[served], "int8")
    assert described["cpu_features"] == present(flags)
    if served != FALLBACK:
        assert choice["verdict"]["passed"] and choice["verdict"]["engine"] == served
    assert f"serving engine {served} (asked: auto" in log and "policy int8" in log


def test_an_auto_archive_reconfigured_serves_the_engine_and_layout_it_names(
    auto_store: Path, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`make bench` serves each engine from one `auto` archive with that engine's model-config: TorchServe loads
    the rewritten archive with its workers, and each worker starts the engine it names (gated as any other).
    An archive without the INT8 model cannot become an INT8 one."""
    store = tmp_path_factory.mktemp("reconfigured")
    config = ServingConfig.for_engine("onnx-int8", workers=2, batch_size=2)
    reconfigured(auto_store / "resnet50.mar", config, store / "resnet50.mar")
    meta, settings = archive_info(store / "resnet50.mar")
    assert (meta["engine"], meta["precision"], settings["engine"], settings["precision"]) == (
        "onnx-int8",
        "int8",
        "onnx-int8",
        "int8",
    )
    with zipfile.ZipFile(auto_store / "resnet50.mar") as before, zipfile.ZipFile(store / "resnet50.mar") as after:
        changed = {"model-config.yaml", "metadata.json"}
        assert before.namelist() == after.namelist()
        assert all(before.read(n) == after.read(n) for n in before.namelist() if n not in changed)
    with start_torchserve(tmp_path_factory.mktemp("ts-reconfigured"), store) as server:
        described = describe(server)
        auth = {"Authorization": f"Bearer {server.keys()['management']}"}
        (model,) = httpx.get(f"{server.management_url}/models/resnet50", headers=auth, timeout=30).json()
    assert (model["minWorkers"], model["batchSize"], len(model["workers"])) == (2, 2, 2)
    assert described["engine_choice"]["asked"] == "onnx-int8"
    assert described["engine"] == "onnx-int8" or "onnx-int8" in described["engine_choice"]["refused"]
    with pytest.raises(ArchiveError, match="no model.int8.onnx"):
        reconfigured(model_store / "resnet50.mar", config, store / "int8-from-fp32.mar")
