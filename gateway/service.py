"""The service layer: what every wire protocol asks of the model, in plain values.

`Inference` (one per request, from gateway/deps.py) takes checked images (gateway/validation.py's
CheckedImage; each protocol's router reads them out of its request through gateway/uploads.py), the options
and the caller, never the request itself. It asks TorchServe for the scores and the extras a route needs
(gateway/upstream.py: classify, embed, explain; one image, a tensor of several, or a batch whose files are
answered each on its own) and times them. The outcome of an image is counted where it is known: `ask` counts
every image TorchServe classified, whatever the route; a refused image is counted by `Metrics.image_refused`,
from the app's Problem handler (gateway/errors.py) or, for a file of a batch, here. The routers shape the
answers for their protocol. The readiness probes have a service of their own (gateway/readiness.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from contract.wire import CAM, EMBEDDING, EXPLAIN_CLASSES_HEADER, OUTPUT_HEADER, ItemAnswer
from gateway import uploads
from gateway.auth import Caller
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


Result = TypeVar("Result")
# One file of a batch, once checked (its filename, its image) → the model block and the file's result.
FileWork = Callable[[str | None, CheckedImage], Awaitable[tuple[ModelBlock, Result]]]
# The result of a file that was refused, from keywords `filename` and `error` (the problem's body): the
# route's result model itself.
FileRefused = Callable[..., Result]


@dataclass(frozen=True)
class BatchAnswer(Generic[Result]):
    """A batch's results in input order, and the model block of the first file answered (None if none was)."""

    model: ModelBlock | None
    results: list[Result]


class Inference:
    def __init__(self, settings: Settings, upstream: TorchServeClient, metrics: Metrics, request_id: str) -> None:
        self.settings = settings
        self.upstream = upstream
        self.metrics = metrics
        self.request_id = request_id
        self.started = time.perf_counter()  # when the route began (after auth)

    def timing_ms(self, upstream_s: float) -> Timing:
        total = time.perf_counter() - self.started
        return {"total": round(total * 1000, 2), "upstream": round(upstream_s * 1000, 2)}

    async def ask(self, image: CheckedImage, top_k: int, extra_headers: dict[str, str] | None = None) -> Asked:
        """Send one checked image upstream: the handler's answer (the image counted as classified), or a Problem."""
        started = time.perf_counter()
        try:
            answer = await self.upstream.predict(image.data, top_k, self.request_id, extra_headers)
        finally:
            self.metrics.upstream_latency.observe(time.perf_counter() - started)
        self.metrics.images.labels("classified").inc()
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
        return [each.answer for each in asked]

    async def batch(
        self,
        files: Sequence[uploads.Upload],
        caller: Caller,
        work: FileWork[Result],
        refused: FileRefused[Result],
    ) -> BatchAnswer[Result]:
        """A multipart batch's files (gateway/uploads.py's batch_uploads), charged to `caller`, each read, checked
        and passed to `work` concurrently; a file refused becomes its `refused` result, the others unaffected."""
        caller.charge_images(len(files))
        done = await asyncio.gather(*(self._batch_file(upload, work, refused) for upload in files))
        models = [model for model, _ in done if model is not None]
        return BatchAnswer(models[0] if models else None, [result for _, result in done])

    async def _batch_file(
        self, upload: uploads.Upload, work: FileWork[Result], refused: FileRefused[Result]
    ) -> tuple[ModelBlock | None, Result]:
        filename = None if isinstance(upload, str) else upload.filename
        try:
            return await work(filename, await uploads.batch_image(upload, self.settings))
        except Problem as problem:
            self.metrics.image_refused(problem.status, problem.slug)
            return None, refused(filename=filename, error=problem.body(self.request_id))
