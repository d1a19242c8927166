"""Reading a request's images from its body: one image (multipart field `file`, or the raw body with an
image/* type), a batch (repeated multipart field `files`) or the encoded images of v2's tensor, under the size
limits and the body budget (gateway/budget.py), each image checked before anything is forwarded
(gateway/validation.py). The routers call it to turn a request into the service's plain values."""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from gateway.budget import Hold, hold_of
from gateway.digits import ascii_int
from gateway.problems import Problem
from gateway.settings import ENVELOPE_BYTES, Settings
from gateway.validation import CheckedImage, check_image

Upload = UploadFile | str  # a multipart part: a file, or text where a file was expected


async def capped(
    chunks: AsyncIterator[bytes], limit: int, hold: Hold, what: str = "the upload", copies: int = 1
) -> AsyncGenerator[bytes]:
    """The chunks of a streamed body, each reserved in the request's `hold` (`copies` bytes for each byte
    the route will hold) before it is passed on; 413 as soon as the body passes `limit` (Content-Length or not)."""
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise Problem("payload-too-large", f"{what} exceeds the limit of {limit} bytes")
        hold.cover(received * copies)
        yield chunk


async def read_capped(
    chunks: AsyncIterator[bytes], limit: int, hold: Hold, what: str = "the upload", copies: int = 1
) -> bytes:
    """Collect a streamed body as `capped` passes it on. A BytesIO grows in place and hands its buffer over
    without a copy (a bytearray would be copied into the bytes)."""
    body = io.BytesIO()
    async for chunk in capped(chunks, limit, hold, what, copies):
        body.write(chunk)
    return body.getvalue()


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


async def read_body(request: Request, limit: int, what: str = "the upload", copies: int = 1) -> bytes:
    """The request's whole body, at most `limit` bytes, reserved in the body budget (`copies` bytes for each
    byte) from its declared length, else as it arrives."""
    reserve_body(request, limit, copies)
    return await read_capped(request.stream(), limit, hold_of(request), what, copies)


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


async def file_bytes(upload: Upload, limit: int, name: str) -> bytes:
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


async def single_image(request: Request, settings: Settings) -> CheckedImage:
    """The one image of a request: multipart field `file`, or the raw body with an image/* type; checked."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        limit = settings.max_upload_bytes + ENVELOPE_BYTES
        reserve_body(request, limit)
        form = await read_form(request, limit, max_files=1)
        if "file" not in form:
            raise Problem("invalid-request", "the multipart body has no field named 'file'")
        data = await file_bytes(form["file"], settings.max_upload_bytes, "file")
    elif content_type.startswith(("image/", "application/octet-stream")):
        data = await read_body(request, settings.max_upload_bytes)
    else:
        raise Problem(
            "unsupported-media-type",
            "send multipart/form-data with a field 'file', or the image as the body with an image/* type",
        )
    return check_image(data, settings)


async def batch_uploads(request: Request, settings: Settings) -> list[Upload]:
    """The parts of a multipart batch (repeated field `files`), not yet read or checked."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise Problem("unsupported-media-type", "send multipart/form-data with one or more fields 'files'")
    limit = settings.max_body_bytes
    reserve_body(request, limit)
    form = await read_form(request, limit, max_files=settings.max_batch_files)
    uploads = form.getlist("files")
    if not uploads:
        raise Problem("invalid-request", "the multipart body has no field named 'files'")
    return uploads


async def batch_image(upload: Upload, settings: Settings) -> CheckedImage:
    """One file of a batch, read and checked."""
    return check_image(await file_bytes(upload, settings.max_upload_bytes, "files"), settings)


def tensor_images(elements: list[bytes], settings: Settings) -> list[CheckedImage]:
    """The encoded images of a tensor (v2's BYTES input), each within the per-image limit and checked; the first
    refusal fails them all and names the image's index."""
    checked: list[CheckedImage] = []
    for index, data in enumerate(elements):
        if len(data) > settings.max_upload_bytes:
            raise Problem("payload-too-large", f"image {index} exceeds {settings.max_upload_bytes} bytes")
        try:
            checked.append(check_image(data, settings))
        except Problem as problem:
            problem.detail = f"image {index}: {problem.detail}"
            raise
    return checked
