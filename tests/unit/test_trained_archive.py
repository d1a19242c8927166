"""modelserver/trained_archive.py: which archives hold classes of their own (and so must never be rebuilt as
ImageNet's behind the user's back by `make mar`, `make run` or `make images`), and the one-line refusal that
says how to rebuild one. Archives here are stand-ins with the metadata a build writes; a real one: tests/
integration/test_archive.py."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from modelserver.paths import REPO_ROOT
from modelserver.trained_archive import main, own_classes, refusal


def archive(path: Path, metadata: dict[str, object]) -> Path:
    with zipfile.ZipFile(path, "w") as mar:
        mar.writestr("metadata.json", json.dumps(metadata))
    return path


def test_own_classes_are_those_of_labels_not_imagenets(tmp_path: Path) -> None:
    own = archive(tmp_path / "own.mar", {"classes": 3, "labels_source": "file:labels.txt"})
    trained = archive(tmp_path / "head.mar", {"classes": 5, "labels_source": "train-head:photos"})
    assert own_classes(own) == "3 classes from file:labels.txt"
    assert own_classes(trained) == "5 classes from train-head:photos"
    imagenet = archive(tmp_path / "imagenet.mar", {"classes": 1000, "labels_source": "torchvision ImageNet-1K"})
    older = archive(tmp_path / "older.mar", {"weights": "ResNet50_Weights.IMAGENET1K_V2"})  # before custom labels
    (tmp_path / "broken.mar").write_bytes(b"half a download")
    for path in (imagenet, older, tmp_path / "broken.mar", tmp_path / "missing.mar"):
        assert own_classes(path) is None, path


def test_the_refusal_is_one_line_that_says_how_to_rebuild(tmp_path: Path) -> None:
    message = refusal(tmp_path / "resnet50.mar", "3 classes from file:labels.txt", "ImageNet's for engine eager", "run")
    assert "\n" not in message
    assert message == (
        f"{tmp_path / 'resnet50.mar'} holds your own classes (3 classes from file:labels.txt), not rebuilt as "
        "ImageNet's for engine eager: rebuild it from its weights (make run WEIGHTS=PATH LABELS=FILE ...), or "
        "FORCE=1 to replace it with ImageNet's classes"
    )


def test_the_images_guard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    own = archive(tmp_path / "own.mar", {"classes": 3, "labels_source": "file:labels.txt"})
    assert main([str(own)]) == 2
    expected = refusal(own, "3 classes from file:labels.txt", "ImageNet images", "images")
    assert capsys.readouterr().err == f"images: {expected}\n"
    imagenet = archive(tmp_path / "imagenet.mar", {"classes": 1000, "labels_source": "torchvision ImageNet-1K"})
    assert main([str(imagenet)]) == 0 and main([str(tmp_path / "none.mar")]) == 0
    assert capsys.readouterr().err == ""


def test_the_guard_runs_on_the_standard_library_alone(tmp_path: Path) -> None:
    """docker/images.sh runs it with the host's python3, from the repository root, without the virtualenv."""
    own = archive(tmp_path / "own.mar", {"classes": 3, "labels_source": "file:labels.txt"})
    code = (
        f"import runpy, sys; sys.path.insert(0, {str(REPO_ROOT)!r}); "
        "runpy.run_module('modelserver.trained_archive', run_name='__main__')"
    )
    isolated = [sys.executable, "-I", "-S", "-c", code]  # no site-packages: the standard library alone
    done = subprocess.run([*isolated, str(own)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith(f"images: {own} holds your own classes"), done.stderr
