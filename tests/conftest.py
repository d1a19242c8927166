"""Session fixtures of the integration and system tiers: the model archives (random weights; the test model
that sees), one real TorchServe, the gateway in front of it, the images. Built only when a test asks for
them; torch is imported only then, so the fast tier (tests/unit) never imports it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from containers import build_images
from support import API_KEY, OTHER_KEY, PYTHON, Gateway, gateway_env, group_alive, start_torchserve

from gateway.keys import key_hash
from modelserver.mar import unpack
from modelserver.torchserve import TorchServe

if TYPE_CHECKING:
    from testmodel import Reference


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding resnet50.mar built by the real CLI with deterministic random weights."""
    store = tmp_path_factory.mktemp("model_store")
    subprocess.run(
        [PYTHON, "-m", "modelserver", "build", "--weights", "random", "--output", str(store / "resnet50.mar")],
        check=True,
        timeout=600,
    )
    return store


@pytest.fixture(scope="session")
def model_dir(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive unpacked, as TorchServe unpacks it for a worker."""
    return unpack(model_store / "resnet50.mar", tmp_path_factory.mktemp("model_dir"))


@pytest.fixture(scope="session")
def seeing_model_store(request: pytest.FixtureRequest) -> Path:
    """A model store holding resnet50.mar of the test model that sees its input (tests/testmodel.py), built by
    the real CLI from a state dict; cached under the pytest cache dir, keyed by everything it is built from."""
    from testmodel import build_store

    return build_store(request.config.cache.mkdir("seeing-model"))


@pytest.fixture(scope="session")
def seeing_model_dir(seeing_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model's archive unpacked, as TorchServe unpacks it for a worker."""
    return unpack(seeing_model_store / "resnet50.mar", tmp_path_factory.mktemp("seeing_model_dir"))


@pytest.fixture(scope="session")
def own_classes_store(seeing_model_store: Path, request: pytest.FixtureRequest) -> Path:
    """A model store holding resnet50.mar of a model of its own four classes (tests/testmodel.py's OWN_CLASSES:
    the test model's backbone, a head of four of its rows, new labels), built by the real CLI with `--labels` for
    the openvino-fp32 engine, so that the archive carries the worker-start gate's set (N = 4 wide); cached like
    the test model."""
    from testmodel import build_own_classes_store

    return build_own_classes_store(request.config.cache.mkdir("own-classes-model"), seeing_model_store, "openvino-fp32")


@pytest.fixture(scope="session")
def seeing_model(seeing_model_dir: Path) -> Reference:
    """The test model in eager PyTorch behind torchvision's reference pipeline (what the service must answer)."""
    from testmodel import Reference

    return Reference(seeing_model_dir)


@pytest.fixture(scope="session")
def torchserve(seeing_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """A real TorchServe with token auth on, on free loopback ports, READY; stopped with all its processes.
    It serves the test model that sees its input, so answers through it can be checked against the reference."""
    with start_torchserve(tmp_path_factory.mktemp("torchserve"), seeing_model_store) as server:
        assert server.process is not None
        group = server.process.pid
        yield server
    assert not group_alive(group), "TorchServe left processes behind"


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def gateway(torchserve: TorchServe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The real gateway over HTTP in front of the session's TorchServe."""
    env = gateway_env(
        torchserve, [key_hash(API_KEY), key_hash(OTHER_KEY)], rate_limit_rps="1000", rate_limit_burst="1000"
    )
    with Gateway(tmp_path_factory.mktemp("gateway") / "gateway.log", env) as server:
        yield server


@pytest.fixture(scope="session")
def images(seeing_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Both images, built once per session by `make images`' script (WEIGHTS=PATH) with the test model's
    state dict under its own name, which the model block shows (warm layers: seconds; the test model is
    deterministic). Used by the container suites (tests/containers.py)."""
    from testmodel import TEST_MODEL_FILE

    weights = tmp_path_factory.mktemp("weights") / TEST_MODEL_FILE
    shutil.copyfile(seeing_model_dir / "resnet50.pth", weights)
    return build_images(weights)


TIERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its tier (its folder under tests/) and, in the system tier, with its system
    (the folder below that: docker, fleet, infra, ...), so `-m` selects across folders too."""
    root = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(root).parts
        if parts[0] in TIERS:
            item.add_marker(parts[0])
            if parts[0] == "system" and len(parts) > 2:
                item.add_marker(parts[1])
