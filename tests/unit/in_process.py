"""The gateway app in process, in front of the fake TorchServe (fake_torchserve.py): requests go through
`httpx.ASGITransport`, so a test exercises routing, auth, validation, the service layer, the real upstream
client and the error shapes without a server process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fake_torchserve import FakeTorchServe
from fastapi import FastAPI

from gateway.keys import key_hash
from gateway.main import create_app
from gateway.settings import Settings

API_KEY = "ica_unit-test-key"
OTHER_KEY = "ica_unit-other-key"


@dataclass
class InProcess:
    app: FastAPI
    client: httpx.AsyncClient
    torchserve: FakeTorchServe


@asynccontextmanager
async def gateway(tmp_path: Path, labels: list[str] | None = None, **settings: object) -> AsyncIterator[InProcess]:
    """The app with `settings` (GATEWAY_* names, lower case) over the fake TorchServe, its lifespan running; the
    fake's model has `labels` (default: ImageNet's class count)."""
    fake = FakeTorchServe(tmp_path / "key_file.json")
    if labels is not None:
        fake.labels = labels
    async with fake.running() as torchserve:
        app = create_app(
            Settings(
                inference_url=torchserve.url,
                management_url=torchserve.url,
                key_file=torchserve.key_file,
                api_key_hashes=[key_hash(API_KEY), key_hash(OTHER_KEY)],
                **settings,  # type: ignore[arg-type]
            )
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
                yield InProcess(app, client, torchserve)
