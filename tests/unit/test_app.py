"""What making the gateway's app does, in process (no server, no TorchServe): nothing outside the app."""

from __future__ import annotations

import asyncio
import logging

from gateway.main import create_app
from gateway.settings import Settings
from gateway.upstream import TorchServeClient


def test_making_an_app_leaves_the_processs_logging_alone() -> None:
    """Logging is the entry point's (gateway/__main__.py): an app made in a test, a benchmark or a tool leaves the
    root logger and uvicorn's loggers as they were."""
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
    loggers = [logging.getLogger(name) for name in names]
    before = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    create_app(Settings(api_key_hashes=["a" * 64], log_level="DEBUG"))
    assert [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers] == before


def test_the_lifespan_gives_the_torchserve_client_the_apps_metrics() -> None:
    """The client the lifespan makes counts into the app's own metrics (its upstream latency and slots), not
    into a registry of its own; it is closed when the app stops."""
    app = create_app(Settings(api_key_hashes=["a" * 64]))

    async def run() -> TorchServeClient:
        async with app.router.lifespan_context(app):
            upstream = app.state.upstream
            assert upstream.metrics is app.state.metrics
            assert not upstream.session.closed
        return upstream

    assert asyncio.run(run()).session.closed
