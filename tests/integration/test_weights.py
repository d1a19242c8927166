"""Loading weights: every bad input is refused with one clear line, never a traceback."""

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

from modelserver.weights import WeightsError, from_file, from_seed


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
    model = resnet50(weights=None, num_classes=10)
    path = tmp_path / "ten_classes.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit ResNet50 .0 missing, 0 unexpected keys.*size mismatch"):
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
