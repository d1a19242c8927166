"""Loading weights and their labels: every bad input is refused with one clear line, never a traceback; a state
dict of N classes needs N labels of its own (unless N is ImageNet's 1000), which must follow contract/labels.py's
rules."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from support import PYTHON
from torchvision.models import resnet18, resnet50

from contract.labels import MAX_CLASSES
from modelserver.weights import IMAGENET_LABELS, WeightsError, from_file, from_seed


def build_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "modelserver", "build", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def good_state_dict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(from_seed(3).model.state_dict(), path)
    return path


def test_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(os.urandom(4096))
    done = build_cli("--weights", str(bad), "--output", str(tmp_path / "x.mar"))
    assert_one_line_error(done, "corrupt.pth", "not a readable torch state dict")
    assert not (tmp_path / "x.mar").exists()


def test_truncated_file(tmp_path: Path, good_state_dict: Path) -> None:
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good_state_dict.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="not a readable torch state dict"):
        from_file(bad)


def test_wrong_architecture(tmp_path: Path) -> None:
    other = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), other)
    done = build_cli("--weights", str(other), "--output", str(tmp_path / "x.mar"))
    assert_one_line_error(done, "does not fit ResNet50", "missing", "unexpected")


def test_wrong_shapes(tmp_path: Path) -> None:
    state_dict = resnet50(weights=None, num_classes=10).state_dict()
    state_dict["fc.bias"] = torch.zeros(7)  # a final layer of 10 outputs with 7 biases
    path = tmp_path / "ten_classes.pth"
    torch.save(state_dict, path)
    with pytest.raises(WeightsError, match="does not fit ResNet50 .0 missing, 0 unexpected keys.*size mismatch"):
        from_file(path)


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "three.pth"
    torch.save(resnet50(weights=None, num_classes=3).state_dict(), path)
    return path


def test_a_state_dict_of_n_classes_with_its_labels(three_classes: Path) -> None:
    weights = from_file(three_classes, labels=["cat", " coffee", "rocket"], labels_source="file:labels.txt")
    assert weights.model.fc.out_features == 3
    assert weights.labels == ("cat", "coffee", "rocket") and weights.labels_source == "file:labels.txt"
    expected = torch.load(three_classes, weights_only=True)
    assert all(torch.equal(expected[k], v) for k, v in weights.model.state_dict().items())


def test_imagenet_labels_for_1000_classes(good_state_dict: Path) -> None:
    weights = from_file(good_state_dict)
    assert weights.labels == IMAGENET_LABELS and len(weights.labels) == 1000
    assert weights.labels_source == "torchvision ImageNet-1K" == from_seed().labels_source


def test_n_classes_need_n_labels(tmp_path: Path, three_classes: Path) -> None:
    done = build_cli("--weights", str(three_classes), "--output", str(tmp_path / "x.mar"))
    assert_one_line_error(done, f"weights file {three_classes} has 3 classes; pass --labels FILE with 3 labels")
    labels = tmp_path / "two.txt"
    labels.write_text("cat\ncoffee\n")
    done = build_cli("--weights", str(three_classes), "--labels", str(labels), "--output", str(tmp_path / "x.mar"))
    assert_one_line_error(done, f"weights file {three_classes} has 3 classes but 2 labels were given (file:two.txt)")
    assert not (tmp_path / "x.mar").exists()


def test_imagenet_weights_with_labels_of_another_count(tmp_path: Path) -> None:
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["cat", "coffee", "rocket"]))
    done = build_cli("--weights", "random", "--labels", str(labels), "--output", str(tmp_path / "x.mar"))
    assert_one_line_error(done, "random-seed-0 has 1000 classes but 3 labels were given (file:labels.json)")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("cat\ncoffee,tea\nrocket\n", "label 2 ('coffee,tea') has a comma"),
        ("cat\n7\nrocket\n", "label 2 ('7') is all digits"),
        ("cat\nUnknown\nrocket\n", "label 2 ('Unknown') is reserved"),
        ("cat\nCat\nrocket\n", "labels 1 ('cat') and 2 ('Cat') are the same label once normalised"),
        ("cat\n\nrocket\n", "label 2 is empty"),
    ],
)
def test_each_label_rule_is_refused_by_the_build(tmp_path: Path, three_classes: Path, text: str, why: str) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text(text)
    done = build_cli("--weights", str(three_classes), "--labels", str(labels), "--output", str(tmp_path / "x.mar"))
    assert_one_line_error(done, f"labels file {labels}: {why}")
    assert not (tmp_path / "x.mar").exists()


def test_too_many_classes(tmp_path: Path) -> None:
    state_dict = resnet50(weights=None).state_dict()
    state_dict["fc.weight"], state_dict["fc.bias"] = torch.zeros(MAX_CLASSES + 1, 2048), torch.zeros(MAX_CLASSES + 1)
    path = tmp_path / "many.pth"
    torch.save(state_dict, path)
    with pytest.raises(WeightsError, match=f"has {MAX_CLASSES + 1} classes; an archive has 2 to {MAX_CLASSES}$"):
        from_file(path)


def test_not_a_state_dict(tmp_path: Path) -> None:
    pickled_module = tmp_path / "module.pth"
    torch.save(resnet18(weights=None), pickled_module)
    with pytest.raises(WeightsError, match="not a readable torch state dict: Weights only load failed"):
        from_file(pickled_module)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(WeightsError, match="is not a ResNet50 state dict"):
        from_file(a_list)


def test_missing_file(tmp_path: Path) -> None:
    done = build_cli("--weights", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "x.mar"))
    assert_one_line_error(done, "does not exist")


def test_hash_mismatch(tmp_path: Path, good_state_dict: Path) -> None:
    done = build_cli("--weights", str(good_state_dict), "--sha256", "0" * 64, "--output", str(tmp_path / "x.mar"))
    assert_one_line_error(done, "has sha256", "expected " + "0" * 64)


def test_matching_hash_loads_the_file(good_state_dict: Path) -> None:
    digest = hashlib.sha256(good_state_dict.read_bytes()).hexdigest()
    weights = from_file(good_state_dict, digest.upper())
    assert weights.source_sha256 == digest
    assert weights.name == "file:resnet50.pth" and not weights.untrained
    expected = torch.load(good_state_dict, weights_only=True)
    assert all(torch.equal(expected[k], v) for k, v in weights.model.state_dict().items())


def test_offline_imagenet_names_the_alternatives(tmp_path: Path) -> None:
    """With the network unreachable (a proxy on a closed loopback port), the download fails clearly."""
    unreachable = "http://127.0.0.1:9"
    env = {"https_proxy": unreachable, "HTTPS_PROXY": unreachable, "http_proxy": unreachable, "no_proxy": ""}
    done = build_cli("--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "x.mar"), env=env)
    assert_one_line_error(done, "could not download https://download.pytorch.org/models/resnet50-11ad3fa6.pth")
    assert "--weights PATH" in done.stderr and "--weights random" in done.stderr


def test_random_weights_are_deterministic() -> None:
    first, second = from_seed().model.state_dict(), from_seed().model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert from_seed().untrained
    assert not torch.equal(from_seed(1).model.state_dict()["fc.weight"], first["fc.weight"])


def test_offline_fallback_builds_untrained_archive_loudly(tmp_path: Path) -> None:
    unreachable = "http://127.0.0.1:9"
    env = {"https_proxy": unreachable, "HTTPS_PROXY": unreachable, "no_proxy": ""}
    out = tmp_path / "resnet50.mar"
    done = build_cli("--cache-dir", str(tmp_path / "c"), "--offline-fallback", "--output", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert "FALLING BACK TO RANDOM WEIGHTS" in done.stdout and "UNTRAINED" in done.stdout
    with zipfile.ZipFile(out) as mar:
        assert json.loads(mar.read("metadata.json"))["untrained"] is True
