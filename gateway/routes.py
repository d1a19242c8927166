"""The public API: /v1/predict, /v1/predict/batch, /v1/models, /healthz, /readyz, /metrics
(/v1/explain and /v1/embed live in gateway/explain.py and gateway/embed.py, on this module's helpers).

A request's path: this module → validation.py (caps, sniffing, header check) → upstream.py (TorchServe)
→ handlers/image_handler.py inside the TorchServe worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from gateway import schemas
from gateway.answers import AnswerOptions, answer_options, shape
from gateway.auth import authenticate, charge_images
from gateway.budget import hold_of
from gateway.digits import ascii_int
from gateway.problems import Problem
from gateway.settings import Settings
from gateway.upstream import TorchServeClient
from gateway.validation import ENVELOPE_BYTES, CheckedImage, capped, check_image, read_capped

router = APIRouter()
Authenticated = Annotated[str, Depends(authenticate)]
Options = Annotated[AnswerOptions, Depends(answer_options)]


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def upstream_of(request: Request) -> TorchServeClient:
    return request.app.state.upstream


def declared_length(request: Request) -> int | None:
    """The request's Content-Length, if it has one (ASCII digits only)."""
    return ascii_int(request.headers.get("content-length", ""))


def reserve_body(request: Request, limit: int, copies: int = 1) -> None:
    """From the head alone: 413 for a declared body above `limit`, 503 for one the body budget cannot hold
    now (`copies` bytes for each byte of it), else its reservation. Undeclared bodies reserve as they arrive."""
    declared = declared_length(request)
    if declared is None:
        return
    if declared > limit:
        raise Problem("payload-too-large", f"the upload exceeds the limit of {limit} bytes")
    hold_of(request).cover(declared * copies)


class InMemoryParts(MultiPartParser):
    """Starlette's multipart parser with every file part kept in memory, where the body budget counts it:
    never spooled to a file (in the container /tmp is a tmpfs, memory too, that no budget would count)."""

    spool_max_size = 0  # a SpooledTemporaryFile without a max size never rolls over to disk


async def read_form(request: Request, limit: int, max_files: int) -> FormData:
    """Parse a multipart body as it arrives, under `limit` bytes: only the parts are kept, not the body."""
    stream = capped(request.stream(), limit, hold_of(request))
    try:
        return await InMemoryParts(request.headers, stream, max_files=max_files, max_fields=16).parse()
    except MultiPartException as exc:
        raise Problem("invalid-request", f"malformed multipart body: {exc.message}") from None


async def file_bytes(upload: UploadFile | str, limit: int, name: str) -> bytes:
    """A file part's bytes; the part's own buffer is freed, so only the bytes returned are kept."""
    if isinstance(upload, str):
        raise Problem("invalid-request", f"field {name!r} must be a file, not text")
    try:
        data = await upload.read(limit + 1)
    finally:
        await upload.close()
    if len(data) > limit:
        raise Problem("payload-too-large", f"file {upload.filename!r} exceeds the limit of {limit} bytes")
    return data


def model_block(result: dict[str, Any]) -> dict[str, Any]:
    model = result.get("model") or {}
    return {key: model.get(key) for key in ("name", "version", "weights", "untrained")}


async def classify(request: Request, image: CheckedImage, top_k: int,
                   extra_headers: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:  # fmt: skip
    """Send one checked image upstream; the handler's answer and the upstream seconds."""
    metrics = request.app.state.metrics
    started = time.perf_counter()
    try:
        result = await upstream_of(request).predict(image.data, top_k, request.state.request_id, extra_headers)
    finally:
        metrics.upstream_latency.observe(time.perf_counter() - started)
    return result, time.perf_counter() - started


def single_route(on: APIRouter, path: str, response_model: type, summary: str, description: str,
                 responses: dict | None = None) -> Callable:  # fmt: skip
    """The decorator of a one-image route: multipart `file` or the raw body."""
    return on.post(path, response_model=response_model, responses=responses or schemas.ERRORS,
                   openapi_extra=schemas.SINGLE_BODY, summary=summary, description=description)  # fmt: skip


@single_route(router, "/v1/predict", schemas.Prediction, "Classify one image",
              "Send the image as multipart field `file`, or as the raw body with an `image/*` type.")  # fmt: skip
async def predict(request: Request, _: Authenticated, options: Options) -> dict:
    started = time.perf_counter()
    image = await single_image(request)
    result, upstream_s = await classify(request, image, options.upstream_top_k)
    request.app.state.metrics.images.labels("classified").inc()
    predictions, decision = shape(result, options)
    return {
        "request_id": request.state.request_id,
        "model": model_block(result),
        "predictions": predictions,
        "decision": decision,
        "timing_ms": timing_ms(started, upstream_s),
    }


def timing_ms(started: float, upstream_s: float) -> dict[str, float]:
    return {"total": round((time.perf_counter() - started) * 1000, 2), "upstream": round(upstream_s * 1000, 2)}


async def single_image(request: Request) -> CheckedImage:
    """The one image of a request: multipart field `file`, or the raw body with an image/* type; checked."""
    settings = settings_of(request)
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        limit = settings.max_upload_bytes + ENVELOPE_BYTES
        reserve_body(request, limit)
        form = await read_form(request, limit, max_files=1)
        if "file" not in form:
            raise Problem("invalid-request", "the multipart body has no field named 'file'")
        data = await file_bytes(form["file"], settings.max_upload_bytes, "file")
    elif content_type.startswith(("image/", "application/octet-stream")):
        reserve_body(request, settings.max_upload_bytes)
        data = await read_capped(request.stream(), settings.max_upload_bytes, hold_of(request))
    else:
        raise Problem(
            "unsupported-media-type",
            "send multipart/form-data with a field 'file', or the image as the body with an image/* type",
        )
    return check_image(data, settings)


ItemWork = Callable[[CheckedImage], Awaitable[dict[str, Any]]]


async def batch_item(request: Request, upload: UploadFile | str, work: ItemWork) -> dict:
    """One file of a batch: checked, then `work` (which asks upstream); a Problem becomes its `error`."""
    settings = settings_of(request)
    metrics = request.app.state.metrics
    filename = upload.filename if isinstance(upload, UploadFile) else None
    try:
        answer = await work(check_image(await file_bytes(upload, settings.max_upload_bytes, "files"), settings))
    except Problem as problem:
        outcome = "rejected" if problem.status < 500 else "failed"
        metrics.images.labels(outcome).inc()
        if outcome == "rejected":
            metrics.rejected.labels(problem.slug).inc()
        return {"filename": filename, "error": problem.body(request.state.request_id)}
    metrics.images.labels("classified").inc()
    return {"filename": filename, **answer}


async def run_batch(request: Request, work: ItemWork) -> dict:
    """A multipart batch (repeated field `files`), each file through `work`, concurrently; results in order.
    The model block of the first answer is lifted to the top."""
    settings = settings_of(request)
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise Problem("unsupported-media-type", "send multipart/form-data with one or more fields 'files'")
    limit = settings.max_batch_bytes + ENVELOPE_BYTES
    reserve_body(request, limit)
    form = await read_form(request, limit, max_files=settings.max_batch_files)
    uploads = form.getlist("files")
    if not uploads:
        raise Problem("invalid-request", "the multipart body has no field named 'files'")
    charge_images(request, len(uploads))
    results = await asyncio.gather(*(batch_item(request, upload, work) for upload in uploads))
    models = [r["model"] for r in results if "model" in r]
    for result in results:
        result.pop("model", None)
    return {"request_id": request.state.request_id, "model": models[0] if models else None, "results": results}


def batch_route(on: APIRouter, path: str, response_model: type, summary: str) -> Callable:
    """The decorator of a batch route: multipart `files`, results in input order."""
    return on.post(path, response_model=response_model, response_model_exclude_unset=True, responses=schemas.ERRORS,
                   openapi_extra=schemas.BATCH_BODY, summary=summary,
                   description="Repeated multipart field `files`. Results come in input order; a bad file never "
                               "fails the others.")  # fmt: skip


@batch_route(router, "/v1/predict/batch", schemas.BatchPrediction, "Classify several images")
async def predict_batch(request: Request, _: Authenticated, options: Options) -> dict:
    async def work(image: CheckedImage) -> dict[str, Any]:
        result, _ = await classify(request, image, options.upstream_top_k)
        predictions, decision = shape(result, options)
        return {"model": model_block(result), "predictions": predictions, "decision": decision}

    return await run_batch(request, work)


@router.get("/v1/models", response_model=schemas.Models, responses=schemas.ERRORS, summary="What is served")
async def models(request: Request, _: Authenticated) -> dict:
    info = await upstream_of(request).model_info()
    readiness = await upstream_of(request).readiness()
    fields = ("name", "version", "weights", "untrained", "labels", "engine", "int8_gate", "outputs")
    return {"models": [{**{k: info.get(k) for k in fields}, "workers_ready": readiness.workers_ready}]}


@router.get("/healthz", response_model=schemas.Health, summary="The gateway process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=schemas.Ready,
    responses={503: schemas.ERRORS[503]},
    summary="TorchServe has a READY worker for the model",
)
async def readyz(request: Request) -> dict:
    if request.app.state.drain.draining:
        raise Problem("draining", "this instance is leaving the rotation; it answers requests until it stops")
    return await upstream_ready(request)


async def upstream_ready(request: Request) -> dict:
    """/readyz's answer when not draining: a Problem unless TorchServe has a READY worker."""
    upstream = upstream_of(request)
    readiness = await upstream.readiness()
    if not readiness.ready:
        raise upstream.unavailable(f"not ready: {readiness.reason}")
    return {"status": "ready", "detail": readiness.reason, "workers_ready": readiness.workers_ready}


async def metrics_auth(request: Request, response: Response) -> None:
    if not settings_of(request).metrics_public:
        await authenticate(request, response)


@router.get("/metrics", dependencies=[Depends(metrics_auth)], summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
