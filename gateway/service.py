"""The service layer: what every router asks of the model, whatever its wire protocol.

`Inference` (one per request, from gateway/deps.py) reads the request's images (gateway/uploads.py), asks
TorchServe for the scores and the extras a route needs (gateway/upstream.py: classify, embed, explain; one
image, or a batch whose files are answered each on its own), counts the images' outcomes and times them.
The routers shape its answers for their protocol. Readiness (`ready`, `refuse_while_draining`) is the
probes' service: /readyz and v2's health routes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from fastapi import Request

from contract.wire import CAM, EMBEDDING, EXPLAIN_CLASSES_HEADER, OUTPUT_HEADER, ItemAnswer
from gateway import uploads
from gateway.auth import Caller
from gateway.drain import Drain
from gateway.metrics import Metrics
from gateway.problems import Problem
from gateway.schemas import ModelBlock, Timing
from gateway.settings import Settings
from gateway.upstream import TorchServeClient
from gateway.validation import CheckedImage

EMBEDDING_OUTPUT = {OUTPUT_HEADER: EMBEDDING}  # the handler's extras, asked for in its OUTPUT_HEADER


@dataclass(frozen=True)
class Asked:
    """The handler's answer for one image, and the seconds TorchServe took."""

    answer: ItemAnswer
    upstream_s: float


def model_block(answer: ItemAnswer) -> ModelBlock:
    """The model block of the gateway's answers: the handler's served model, without its engine."""
    model = answer.get("model")
    if model is None:
        return ModelBlock(name=None, version=None, weights=None, untrained=None)
    return ModelBlock(
        name=model.get("name"),
        version=model.get("version"),
        weights=model.get("weights"),
        untrained=model.get("untrained"),
    )


# One file of a batch, once checked: its part of the batch's answer (with its "model", lifted to the top).
ItemWork = Callable[[CheckedImage], Awaitable[dict[str, Any]]]


class Inference:
    def __init__(self, request: Request, settings: Settings, upstream: TorchServeClient, metrics: Metrics) -> None:
        self.request = request
        self.settings = settings
        self.upstream = upstream
        self.metrics = metrics
        self.started = time.perf_counter()  # when the route began (after auth)

    @property
    def request_id(self) -> str:
        request_id: str = self.request.state.request_id  # set by gateway/observe.py
        return request_id

    def timing_ms(self, upstream_s: float) -> Timing:
        total = time.perf_counter() - self.started
        return Timing(total=round(total * 1000, 2), upstream=round(upstream_s * 1000, 2))

    def classified(self, count: int = 1) -> None:
        self.metrics.images.labels("classified").inc(count)

    async def one_image(self) -> CheckedImage:
        return await uploads.single_image(self.request, self.settings)

    async def ask(self, image: CheckedImage, top_k: int, extra_headers: dict[str, str] | None = None) -> Asked:
        """Send one checked image upstream: the handler's answer, or a Problem."""
        started = time.perf_counter()
        try:
            answer = await self.upstream.predict(image.data, top_k, self.request_id, extra_headers)
        finally:
            self.metrics.upstream_latency.observe(time.perf_counter() - started)
        return Asked(answer, time.perf_counter() - started)

    async def classify(self, image: CheckedImage, top_k: int) -> Asked:
        return await self.ask(image, top_k)

    async def embed(self, image: CheckedImage) -> Asked:
        return await self.ask(image, 1, EMBEDDING_OUTPUT)

    async def explain(self, image: CheckedImage, top_k: int, class_id: int | None) -> Asked:
        """The scores with the class activation maps of the top `top_k` classes, and of `class_id` if given."""
        headers = {OUTPUT_HEADER: CAM}
        if class_id is not None:
            headers[EXPLAIN_CLASSES_HEADER] = str(class_id)
        return await self.ask(image, top_k, headers)

    async def classify_all(self, images: list[CheckedImage], top_k: int, embedding: bool) -> list[ItemAnswer]:
        """Several checked images at once (v2's tensor: one failure fails the request), with their embeddings
        if asked for."""
        extra = EMBEDDING_OUTPUT if embedding else None
        asked = await asyncio.gather(*(self.ask(image, top_k, extra) for image in images))
        self.classified(len(asked))
        return [each.answer for each in asked]

    async def batch(self, caller: Caller, work: ItemWork) -> dict[str, Any]:
        """A multipart batch (repeated field `files`), each file through `work`, concurrently; results in order.
        The model block of the first answer is lifted to the top."""
        files = await uploads.batch_uploads(self.request, self.settings)
        caller.charge_images(len(files))
        results = await asyncio.gather(*(self._batch_item(upload, work) for upload in files))
        models = [r["model"] for r in results if "model" in r]
        for result in results:
            result.pop("model", None)
        return {"request_id": self.request_id, "model": models[0] if models else None, "results": results}

    async def _batch_item(self, upload: uploads.Upload, work: ItemWork) -> dict[str, Any]:
        """One file of a batch: checked, then `work` (which asks upstream); a Problem becomes its `error`."""
        filename = None if isinstance(upload, str) else upload.filename
        try:
            answer = await work(await uploads.batch_image(upload, self.settings))
        except Problem as problem:
            self.metrics.image_refused(problem.status, problem.slug)
            return {"filename": filename, "error": problem.body(self.request_id)}
        self.classified()
        return {"filename": filename, **answer}


class ReadyBody(TypedDict):
    status: str
    detail: str
    workers_ready: int


def refuse_while_draining(drain: Drain) -> None:
    if drain.draining:
        raise Problem("draining", "this instance is leaving the rotation; it answers requests until it stops")


async def ready(upstream: TorchServeClient) -> ReadyBody:
    """A Problem unless TorchServe has a READY worker for the model."""
    readiness = await upstream.readiness()
    if not readiness.ready:
        raise upstream.unavailable(f"not ready: {readiness.reason}")
    return {"status": "ready", "detail": readiness.reason, "workers_ready": readiness.workers_ready}
