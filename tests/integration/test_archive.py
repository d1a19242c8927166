"""The built archive: contents, metadata, ONNX verification, and ONNX/eager engine parity."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from imagegen import FORMATS, in_format, jpeg
from onnx import numpy_helper
from testmodel import LABELS, PHOTOS, PROB_TOLERANCE, max_difference, photo
from torchvision.models import ResNet50_Weights

from handlers.engines import EagerEngine, OnnxEngine
from handlers.image_handler import softmax
from handlers.imaging import decode, preprocess
from modelserver.__main__ import main, parser
from modelserver.archive import ServingConfig
from modelserver.onnx_export import VerificationError, verify
from modelserver.paths import REPO_ROOT
from modelserver.trained_archive import own_classes
from modelserver.weights import from_seed


def test_archive_contents(model_store: Path) -> None:
    with zipfile.ZipFile(model_store / "resnet50.mar") as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    assert {"model.onnx", "resnet50.pth", "index_to_name.json", "metadata.json", "model-config.yaml"} <= names
    assert {"image_handler.py", "handlers/imaging.py", "handlers/engines.py", "contract/bounds.py"} <= names
    assert manifest["model"]["modelName"] == "resnet50"
    assert manifest["model"]["handler"] == "image_handler.py"


def test_metadata_flags_random_weights_as_untrained(model_dir: Path) -> None:
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["untrained"] is True
    assert meta["weights"] == "random-seed-0"
    assert meta["weights_sha256"] == hashlib.sha256((model_dir / "resnet50.pth").read_bytes()).hexdigest()
    assert meta["engine"] == "onnx" and meta["int8_gate"] is None
    assert 0 <= meta["onnx_max_abs_logit_diff"] < 1e-3
    assert (meta["model_name"], meta["model_version"]) == ("resnet50", "1.0")


def test_labels_come_from_torchvision(model_dir: Path) -> None:
    labels = json.loads((model_dir / "index_to_name.json").read_text())
    categories = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    assert len(labels) == 1000
    assert [labels[str(i)] for i in range(1000)] == categories


def test_model_config(model_dir: Path) -> None:
    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    assert {"minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"} <= set(config)
    assert config["handler"]["engine"] == "onnx"
    assert config["handler"]["default_top_k"] == 5
    assert config["handler"]["jpeg_draft"] == 1  # every image decoded in full: the reference pipeline


def test_jpeg_draft_is_a_build_setting() -> None:
    assert ServingConfig(jpeg_draft=4).as_yaml()["handler"]["jpeg_draft"] == 4
    assert parser().parse_args(["build", "--jpeg-draft", "8"]).jpeg_draft == 8
    with pytest.raises(ValueError, match="jpeg_draft"):
        ServingConfig(jpeg_draft=3).as_yaml()


def test_if_missing_rebuilds_over_an_unreadable_file(
    model_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`build --if-missing` keeps a good archive and rebuilds over a file that is not one (here the rebuild then
    stops at once on weights that do not exist, so no model is built)."""
    assert main(["build", "--if-missing", "--output", str(model_store / "resnet50.mar")]) == 0
    assert "exists; not rebuilding" in capsys.readouterr().out
    not_zip, no_config = tmp_path / "not-zip.mar", tmp_path / "no-config.mar"
    not_zip.write_bytes(b"half a download")
    with zipfile.ZipFile(no_config, "w") as archive:
        archive.writestr("metadata.json", "{}")
    for bad in (not_zip, no_config):
        missing = tmp_path / "missing.pth"
        assert main(["build", "--if-missing", "--weights", str(missing), "--output", str(bad)]) == 2
        out, err = capsys.readouterr()
        assert out.startswith(f"{bad} is not a readable model archive (") and out.rstrip().endswith(": rebuilding")
        assert err.rstrip().endswith(f"error: weights file {missing} does not exist")


def make_dry_run(target: str, given: list[str], command: str) -> str:
    """The line of `command` in make's dry run of the real Makefile's `target` with the variables `given` (the
    environment's own ENGINE, WEIGHTS, FORCE and LABELS left out)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ENGINE", "WEIGHTS", "FORCE", "LABELS")}
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", target, *given],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return next(line for line in done.stdout.replace("\\\n", " ").splitlines() if command in line)


@pytest.mark.parametrize(
    ("given", "engine", "if_missing"),
    [
        ([], None, True),
        (["ENGINE=onnx-int8"], "onnx-int8", True),
        (["WEIGHTS=random"], None, False),
        (["FORCE=1"], None, False),
        (["WEIGHTS=head.pth", "LABELS=labels.txt"], None, False),
    ],
)
def test_make_mar_keeps_the_archive_unless_asked(given: list[str], engine: str | None, if_missing: bool) -> None:
    """`make run`/`make bench` build the archive only when it is missing, of whatever engine it is; ENGINE asks
    for an engine (an archive of another one is rebuilt), WEIGHTS and FORCE always rebuild. Read from make's
    dry run of the real Makefile."""
    words = make_dry_run("mar", given, "modelserver build").split()
    assert words[words.index("--engine") + 1] == engine if engine else "--engine" not in words
    assert ("--if-missing" in words) == if_missing
    labels = next((g.removeprefix("LABELS=") for g in given if g.startswith("LABELS=")), None)
    assert words[words.index("--labels") + 1] == labels if labels else "--labels" not in words


@pytest.mark.parametrize(
    ("given", "kept"), [([], "model_store/resnet50.mar"), (["WEIGHTS=h.pth", "LABELS=l.txt"], ""), (["FORCE=1"], "")]
)
def test_make_images_refuses_over_an_archive_of_own_classes_unless_asked(given: list[str], kept: str) -> None:
    """`make images` builds the archive from WEIGHTS inside the image: unless WEIGHTS, LABELS or FORCE is given it
    has docker/images.sh refuse while model_store holds an archive of your own classes (KEEP_OWN_CLASSES)."""
    assert f"KEEP_OWN_CLASSES={kept} " in make_dry_run("images", given, "docker/images.sh")
    assert 'python3 -m modelserver.trained_archive "$KEEP_OWN_CLASSES"' in (REPO_ROOT / "docker/images.sh").read_text()


def own_classes_archive(path: Path, engine: str = "onnx") -> Path:
    """A stand-in for an archive built with labels of its own: the metadata and config `build --if-missing` reads."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"engine": engine, "classes": 3, "labels_source": "file:l.txt"}))
        archive.writestr("model-config.yaml", yaml.safe_dump({"handler": {"engine": engine}}))
    return path


def test_if_missing_never_rebuilds_own_classes_as_imagenet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`make mar`/`make run` (build --if-missing) keep an archive of your own classes, and for another ENGINE
    refuse in one line that says how to rebuild it, instead of building ImageNet's over it."""
    mar = own_classes_archive(tmp_path / "resnet50.mar")
    before = mar.read_bytes()
    assert main(["build", "--if-missing", "--output", str(mar)]) == 0
    assert "exists; not rebuilding (engine onnx)" in capsys.readouterr().out
    assert main(["build", "--if-missing", "--engine", "onnx-int8", "--output", str(mar)]) == 2
    out, err = capsys.readouterr()
    assert "rebuilding" not in out
    assert err.strip() == (
        f"error: {mar} holds your own classes (3 classes from file:l.txt), not rebuilt as ImageNet's for engine "
        "onnx-int8: rebuild it from its weights (make mar WEIGHTS=PATH LABELS=FILE ...), or FORCE=1 to replace it "
        "with ImageNet's classes"
    )
    assert mar.read_bytes() == before


def test_a_built_imagenet_archive_is_not_one_of_own_classes(model_store: Path, tmp_path: Path) -> None:
    """What a real build writes (metadata.json's labels_source) tells ImageNet's archives from those of your own
    classes (tests/unit/test_trained_archive.py has the rules); the guard lets `make images` go on."""
    assert own_classes(model_store / "resnet50.mar") is None
    assert own_classes(own_classes_archive(tmp_path / "own.mar")) == "3 classes from file:l.txt"


def test_serving_defaults_per_engine() -> None:
    """Each engine's measured defaults; a flag given overrides its own setting only."""
    int8 = ServingConfig.for_engine("onnx-int8", workers=None, batch_size=2).as_yaml()
    assert (int8["minWorkers"], int8["batchSize"], int8["handler"]["engine"]) == (2, 2, "onnx-int8")
    fp32 = ServingConfig.for_engine("onnx").as_yaml()
    assert (fp32["minWorkers"], fp32["batchSize"], fp32["handler"]["decode_threads"]) == (1, 8, 2)
    with pytest.raises(ValueError, match="unknown engine"):
        ServingConfig.for_engine("tensorrt")


def test_onnx_and_eager_agree(seeing_model_dir: Path) -> None:
    """The test model's two engines give the same probabilities (within PROB_TOLERANCE) for its photos
    and every format; each photo keeps its label."""
    images = (
        [photo(name) for name in PHOTOS] + [jpeg(320, 240, seed=s) for s in range(3)] + [in_format(f) for f in FORMATS]
    )
    batch = np.stack([preprocess(decode(data, 10**8)) for data in images])
    onnx_probabilities = softmax(OnnxEngine(seeing_model_dir, threads=2).run(batch))
    eager_probabilities = softmax(EagerEngine(seeing_model_dir, threads=2).run(batch))
    assert onnx_probabilities.shape == eager_probabilities.shape == (len(images), 1000)
    assert max_difference(onnx_probabilities, eager_probabilities) <= PROB_TOLERANCE
    labels = [LABELS[i] for i in onnx_probabilities[: len(PHOTOS)].argmax(axis=1)]
    assert labels == list(PHOTOS.values())


def test_verification_accepts_the_packaged_export(model_dir: Path) -> None:
    assert verify(from_seed().model, model_dir / "model.onnx") < 1e-3


def test_verification_refuses_tampered_weights(model_dir: Path, tmp_path: Path) -> None:
    graph = onnx.load(str(model_dir / "model.onnx"))
    bias = next(t for t in graph.graph.initializer if numpy_helper.to_array(t).shape == (1000,))
    values = numpy_helper.to_array(bias).copy()
    values[17] += 0.5
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    tampered = tmp_path / "model.onnx"
    onnx.save(graph, str(tampered))
    with pytest.raises(VerificationError, match="max abs logit difference"):
        verify(from_seed().model, tampered)


def test_verification_refuses_a_corrupt_file(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    shutil.copy(model_dir / "model.onnx", broken)
    broken.write_bytes(broken.read_bytes()[: 1 << 20])
    with pytest.raises(VerificationError, match="cannot load"):
        verify(from_seed().model, broken)


def test_verification_refuses_other_weights(model_dir: Path) -> None:
    with pytest.raises(VerificationError):
        verify(from_seed(5).model, model_dir / "model.onnx")
