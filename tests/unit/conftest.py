"""The fast tier: pure units and the gateway in process. It must stay fast, so a run of this tier alone that
imported torch, TorchServe or ONNX Runtime (directly or through the code under test) fails."""

from __future__ import annotations

import sys

import pytest

HEAVY = ("torch", "torchvision", "ts", "onnxruntime", "onnx")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    tier = session.config.rootpath / "tests" / "unit"
    if not all(item.path.is_relative_to(tier) for item in session.items):
        return  # other tiers ran in the same process and may import them
    imported = [name for name in HEAVY if name in sys.modules]
    if imported:
        print(f"\nthe fast tier imported {', '.join(imported)}: it must not (tests/unit/conftest.py)", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def anyio_backend() -> str:
    """The event loop of the async tests (`@pytest.mark.anyio`): the gateway's own, asyncio."""
    return "asyncio"
