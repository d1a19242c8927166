"""A stand-in for TorchServe, for the fast tier's tests of the gateway where TorchServe is not the subject.

It serves TorchServe's inference and management routes that the gateway calls (`POST /predictions/<model>`,
`GET /models/<model>` with and without `customized=true`, `POST /token?type=<kind>`) on a loopback port, in
the test's own event loop, answering as the handler does (contract/wire.py). It keeps TorchServe's token
rules: it writes `key_file.json`, refuses a wrong key with 400 InvalidKeyException, and renews a key with the
file's API key. A test scripts the faults it needs: the next answers (`script`), an expired key (`expire`),
a delay (`delay_s`); and reads what the gateway sent (`seen`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from contract.wire import REQUEST_ID_HEADER, TOP_K_HEADER

MODEL = {"name": "resnet50", "version": "1.0", "weights": "file:fake.pth", "untrained": False, "engine": "onnx"}
IMAGENET_CLASSES = 1000  # the fake's model has ImageNet's class count unless a test gives it labels of its own
# ImageNet has labels that name two classes ("crane", "maillot"); so do these: classes 0 and 1 are "crane".
LABELS = ["crane", "crane", *(f"class {i}" for i in range(2, IMAGENET_CLASSES))]
INVALID_KEY = b'{"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."}'


def scores(classes: int = IMAGENET_CLASSES) -> list[float]:
    """The fake model's probabilities: class i gets a share proportional to 1 / (i + 1), so class 0 is best."""
    weights = [1.0 / (i + 1) for i in range(classes)]
    total = sum(weights)
    return [w / total for w in weights]


SCORES = scores()


def answer(
    top_k: int, request_id: str | None, labels: list[str] = LABELS, model: dict[str, object] = MODEL
) -> dict[str, object]:
    """The handler's 200 answer for one image of a model of `labels`: the `top_k` best classes, best first."""
    shares = scores(len(labels))
    predictions = [{"class_id": i, "label": labels[i], "score": shares[i]} for i in range(top_k)]
    return {"request_id": request_id, "model": model, "predictions": predictions}


@dataclass
class Seen:
    """A request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeTorchServe:
    key_file: Path
    url: str = ""
    keys: dict[str, str] = field(default_factory=dict)  # what it accepts, by kind
    script: list[tuple[int, bytes]] = field(default_factory=list)  # the next prediction answers, in order
    delay_s: float = 0.0  # before each prediction answer
    workers: list[str] = field(default_factory=lambda: ["READY"])
    labels: list[str] = field(default_factory=lambda: LABELS)  # the served model's, by class id
    labels_source: str | None = None
    model: dict[str, object] = field(default_factory=lambda: dict(MODEL))  # the model block of its answers
    seen: list[Seen] = field(default_factory=list)

    def write_keys(self) -> None:
        self.key_file.write_text(json.dumps({kind: {"key": key} for kind, key in self.keys.items()}))

    def expire(self, kind: str) -> None:
        """The `kind` key expires: refused from now on, still in the file (as TorchServe leaves it)."""
        self.keys[kind] = "expired-" + secrets.token_hex(4)

    def predictions(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/predictions/")]

    def _authorized(self, request: web.Request, kind: str) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.keys[kind]}"

    async def _record(self, request: web.Request) -> None:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, dict(request.query), dict(request.headers), body))

    async def predict(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._authorized(request, "inference"):
            return web.Response(status=400, body=INVALID_KEY, content_type="application/json")
        await asyncio.sleep(self.delay_s)
        if self.script:
            status, body = self.script.pop(0)
            return web.Response(status=status, body=body, content_type="application/json")
        top_k = int(request.headers.get(TOP_K_HEADER, "5"))
        if not 1 <= top_k <= len(self.labels):  # as the handler refuses it
            error = {"code": "bad_top_k", "detail": f"X-Top-K must be an integer from 1 to {len(self.labels)}"}
            return web.json_response({"request_id": None, "model": self.model, "error": error}, status=422)
        return web.json_response(answer(top_k, request.headers.get(REQUEST_ID_HEADER), self.labels, self.model))

    async def describe(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._authorized(request, "management"):
            return web.Response(status=400, body=INVALID_KEY, content_type="application/json")
        if request.query.get("customized") == "true":
            classes = len(self.labels)
            description = {
                **self.model,
                "labels": classes,
                "label_names": self.labels,
                "labels_source": self.labels_source,
            }
            description |= {"int8_gate": None, "outputs": []}
            description |= {"max_pixels": 40_000_000, "default_top_k": min(5, classes), "max_top_k": classes}
            return web.json_response([{"customizedMetadata": json.dumps(description)}])
        return web.json_response([{"workers": [{"status": status} for status in self.workers]}])

    async def renew(self, request: web.Request) -> web.Response:
        await self._record(request)
        if request.headers.get("Authorization") != f"Bearer {self.keys['API']}":
            return web.Response(status=400, body=INVALID_KEY, content_type="application/json")
        self.keys[request.query["type"]] = secrets.token_hex(8)
        self.write_keys()
        return web.json_response({"message": "renewed"})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeTorchServe]:
        """Listening on a free loopback port for the block."""
        self.keys = {kind: secrets.token_hex(8) for kind in ("inference", "management", "API")}
        self.write_keys()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/predictions/{model}", self.predict)
        app.router.add_get("/models/{model}", self.describe)
        app.router.add_post("/token", self.renew)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()
