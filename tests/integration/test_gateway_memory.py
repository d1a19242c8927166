"""The gateway's memory and the per-image rate limit, against real gateway processes over HTTP.

Request bodies share a byte budget (GATEWAY_MAX_BUFFERED_BYTES): a request that would pass it gets 503
`server-busy` with Retry-After, from its head when it declares a Content-Length; the budget is released
however a request ends; with the defaults it admits `imgcls` at its defaults (4 requests of 8 files in flight).
The rate limit charges a token per image: one at the head (the early 429), the rest once the count is known.

The uploads here are files of zeros: the gateway reads each one whole, then refuses it as no image (415, inside
the batch's 200), so no model is needed: the gateways point at ports where nothing listens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support import Gateway, PeakRss, assert_problem, free_port, gateway_env

from gateway.keys import key_hash
from gateway.problems import TYPE_BASE
from gateway.settings import Settings
from modelserver.gateway_process import Upstream

KEY = "ica_gateway-memory-test-key"
MiB = 1024 * 1024
TIGHT_BUDGET = 160 * MiB  # room for two of the 62.4 MiB batches below at once
BOUNDARY = "memory-test-boundary"


def nowhere(workdir: Path) -> Upstream:
    return Upstream(f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}", workdir / "none.json")


def start(tmp_path_factory: pytest.TempPathFactory, name: str, keys: list[str], **settings: str) -> Gateway:
    workdir = tmp_path_factory.mktemp(name)
    return Gateway(workdir / "gw.log", gateway_env(nowhere(workdir), [key_hash(k) for k in keys], **settings))


@pytest.fixture(scope="module")
def default_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The default settings (budget, 8 MiB per file, 32 files), except a rate limit that never interferes."""
    with start(tmp_path_factory, "gw-default", [KEY], rate_limit_rps="1000", rate_limit_burst="1000") as server:
        yield server


@pytest.fixture(scope="module")
def tight_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A budget of TIGHT_BUDGET and batches of at most 8 files (64 MiB)."""
    settings = {"max_batch_files": "8", "max_buffered_bytes": str(TIGHT_BUDGET)}
    with start(
        tmp_path_factory, "gw-tight", [KEY], rate_limit_rps="1000", rate_limit_burst="1000", **settings
    ) as server:
        yield server


def multipart(files: int, size: int) -> tuple[bytes, str]:
    """A batch body of `files` files of `size` zero bytes, and its content type."""
    disposition = 'Content-Disposition: form-data; name="files"; filename="zeros.bin"'
    part = f"--{BOUNDARY}\r\n{disposition}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
    body = b"".join(part + bytes(size) + b"\r\n" for _ in range(files)) + f"--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def head(path: str, content_type: str, length: int | None, key: str = KEY) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"X-API-Key: {key}", f"Content-Type: {content_type}", framing]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines if line)
    body = await reader.readexactly(int(headers["content-length"]))
    return Answer(int(status_line.split()[1]), headers, body)


async def answer_to_head(port: int, request_head: bytes) -> Answer:
    """The answer to a request of which only the head is sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_head)
    try:
        return await asyncio.wait_for(read_answer(reader), 15)
    finally:
        writer.close()


class Upload:
    """One request on a connection of its own, its head sent first and its body when asked."""

    def __init__(self, port: int, head: bytes, body: bytes) -> None:
        self.port, self.head, self.body = port, head, body

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(self.head)
        await self.writer.drain()
        self.answer = asyncio.ensure_future(read_answer(self.reader))

    async def finish(self) -> Answer:
        """Send the body (until the answer comes: an early answer ends the upload), then the answer."""
        view = memoryview(self.body)
        try:
            for start in range(0, len(view), MiB):
                if self.answer.done():
                    break
                self.writer.write(view[start : start + MiB])
                await self.writer.drain()
        except ConnectionError:
            pass  # the gateway answered early and stopped reading
        try:
            return await asyncio.wait_for(self.answer, 60)
        finally:
            self.writer.close()


async def heads_then_bodies(uploads: list[Upload], first_answer_s: float = 0.0) -> list[Answer]:
    """Every head first, so that every request is in flight before any body is whole; then, after the first
    answer (within `first_answer_s`, when given), every body at once."""
    for upload in uploads:
        await upload.open()
    if first_answer_s:
        await asyncio.wait([u.answer for u in uploads], timeout=first_answer_s, return_when=asyncio.FIRST_COMPLETED)
    return list(await asyncio.gather(*(upload.finish() for upload in uploads)))


def assert_read_and_refused(answer: Answer, files: int) -> None:
    """A batch answered 200 whose every file was read whole and refused as no image."""
    assert answer.status == 200, answer.body[:500]
    results = answer.json()["results"]
    assert len(results) == files
    assert {r["error"]["type"] for r in results} == {TYPE_BASE + "unsupported-media-type"}


def assert_busy(answer: Answer) -> None:
    assert answer.status == 503, answer.body[:500]
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"] == TYPE_BASE + "server-busy"
    assert int(answer.headers["retry-after"]) >= 1


def test_concurrent_bodies_beyond_the_budget_get_503_and_memory_stays_bounded(tight_gateway: Gateway) -> None:
    """Eight 62.4 MiB batches at once against a 160 MiB budget (before: every one held, in 2-3 copies: ~1.5 GiB
    of RSS). Those beyond the budget are refused from their heads; the gateway's RSS stays within the budget
    of its start (plus the allocator's slack)."""
    body, content_type = multipart(8, int(7.8 * MiB))
    assert tight_gateway.process is not None
    with PeakRss(tight_gateway.process.pid) as rss:
        start = rss.peak
        request_head = head("/v1/predict/batch", content_type, len(body))
        uploads = [Upload(tight_gateway.port, request_head, body) for _ in range(8)]
        answers = asyncio.run(heads_then_bodies(uploads))
    busy = [a for a in answers if a.status == 503]
    for answer in busy:
        assert_busy(answer)
    for answer in answers:
        if answer.status != 503:
            assert_read_and_refused(answer, 8)
    assert len(busy) >= 5, [a.status for a in answers]  # two fit at once (a third if one ends before the last head)
    grown = (rss.peak - start) / MiB
    assert grown < TIGHT_BUDGET / MiB + 64, f"RSS grew by {grown:.0f} MiB for a budget of {TIGHT_BUDGET / MiB:.0f}"


def test_the_budget_is_released_however_a_request_ends(tight_gateway: Gateway) -> None:
    """Requests that reserved most of the budget and then failed (malformed, too large while streaming) or
    were abandoned by their client leave nothing reserved: a batch that needs most of the budget passes next.
    (Not a defect of the old code, which had no budget: a guard on the budget's own release.)"""
    body, content_type = multipart(8, int(7.8 * MiB))
    port = tight_gateway.port

    async def failing() -> list[Answer]:
        malformed = Upload(port, head("/v1/predict/batch", "multipart/form-data; boundary=other", len(body)), body)
        larger, _ = multipart(8, int(8.5 * MiB))  # 68 MiB, above the 64 MiB cap, sent without a length
        chunked = b"".join(b"%x\r\n%s\r\n" % (MiB, larger[i : i + MiB]) for i in range(0, 68 * MiB, MiB))
        too_large = Upload(port, head("/v1/predict/batch", content_type, None), chunked)
        return await heads_then_bodies([malformed, too_large])

    malformed, too_large = asyncio.run(failing())
    assert malformed.status == 422 and too_large.status == 413, (malformed.body, too_large.body)

    async def abandon() -> None:
        upload = Upload(port, head("/v1/predict/batch", content_type, len(body)), body)
        await upload.open()
        upload.writer.write(body[: 20 * MiB])
        await upload.writer.drain()
        upload.writer.close()

    for _ in range(2):  # the two would fill the budget if their reservations stayed
        asyncio.run(abandon())

    async def full() -> Answer:
        return (await heads_then_bodies([Upload(port, head("/v1/predict/batch", content_type, len(body)), body)]))[0]

    deadline = time.monotonic() + 30  # the gateway notices the abandoned uploads within moments
    while (answer := asyncio.run(full())).status == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert_read_and_refused(answer, 8)


def test_imgcls_defaults_are_admitted_and_the_budget_holds_beyond(default_gateway: Gateway) -> None:
    """With the default budget, batches of 8 files of the largest size (8 MiB) of one key are all in flight at
    once as long as they fit in its share, at least 4 (imgcls's defaults: 4 requests of 8 files), and are served;
    one more at the same time gets 503 from its head (before: admitted)."""
    body, content_type = multipart(8, 8 * MiB)
    fit = Settings().key_share_bytes // len(body)  # one key: its share of the budget
    assert fit >= 4
    request_head = head("/v1/predict/batch", content_type, len(body))
    uploads = [Upload(default_gateway.port, request_head, body) for _ in range(fit + 1)]
    answers = asyncio.run(heads_then_bodies(uploads, first_answer_s=15))
    assert sorted(a.status for a in answers) == [200] * fit + [503]
    for answer in answers:
        if answer.status == 503:
            assert_busy(answer)
        else:
            assert_read_and_refused(answer, 8)


def test_a_v2_body_that_could_never_fit_is_refused_from_its_head(default_gateway: Gateway) -> None:
    """v2 holds its body twice (the body, the images split out of it): one above half the budget could never
    be held, so it gets 413 before its upload, not 503s to retry forever."""
    length = Settings().max_buffered_bytes // 2 + 1
    answer = asyncio.run(
        answer_to_head(default_gateway.port, head("/v2/models/resnet50/infer", "application/json", length))
    )
    assert answer.status == 413, answer.body
    assert "bytes of memory" in answer.json()["error"]


# --- slow bodies and one key's share ----------------------------------------------------------------------------

TRICKLER = "ica_memory-test-trickler"
PATIENT = "ica_memory-test-patient"
SMALL_FILE = 16 * 1024
SMALL_BATCH = 4
SHARE = SMALL_BATCH * SMALL_FILE + 64 * 1024  # a key's share: by default the largest body (batch + envelope)
PACE = {"body_rate_bytes_s": str(8 * 1024), "body_grace_s": "3"}


@pytest.fixture(scope="module")
def paced_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Small limits, so that a few trickling uploads fill a key's share (SHARE) and the test lasts seconds: a
    budget of two shares, a body that must keep up with 8 KiB/s after 3 s."""
    settings = {
        "max_upload_bytes": str(SMALL_FILE),
        "max_batch_files": str(SMALL_BATCH),
        "max_buffered_bytes": str(2 * SHARE),
        "rate_limit_rps": "1000",
        "rate_limit_burst": "1000",
        **PACE,
    }
    with start(tmp_path_factory, "gw-paced", [TRICKLER, PATIENT], **settings) as server:
        yield server


def full_share_batch() -> tuple[bytes, str]:
    """A batch body of exactly SHARE bytes: SMALL_BATCH files of zeros and a text field that pads it."""
    files, content_type = multipart(SMALL_BATCH, SMALL_FILE)
    pad_head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="pad"\r\n\r\n'.encode()
    pad = pad_head + b"x" * (SHARE - len(files) - len(pad_head) - 2) + b"\r\n"
    body = pad + files
    assert len(body) == SHARE
    return body, content_type


async def trickle(upload: Upload) -> Answer:
    """Send the body 100 bytes at a time, five times a second (500 bytes/s), until the answer comes."""
    await upload.open()
    sent = 0
    with contextlib.suppress(ConnectionError):
        while not upload.answer.done() and sent < len(upload.body):
            upload.writer.write(upload.body[sent : sent + 100])
            sent += 100
            await asyncio.wait([upload.answer], timeout=0.2)
    try:
        return await asyncio.wait_for(upload.answer, 30)
    finally:
        upload.writer.close()


def test_trickling_uploads_of_one_key_are_cut_and_other_keys_are_served(paced_gateway: Gateway) -> None:
    """One key opens twice as many uploads as its share holds (together: the whole budget) and sends each at
    500 bytes/s (the attack of issue 28, scaled down). Those beyond its share get 503 from their heads; another
    key's batch of a full share is served while the others trickle; each trickler gets 408 problem+json once it
    falls behind the pace, and its reservation is released with the answer: the same key's batch of a full
    share is served right after (before: the tricklers held the whole budget for as long as they trickled)."""
    port = paced_gateway.port
    single = head("/v1/predict", "image/jpeg", SMALL_FILE, TRICKLER)
    batch, content_type = full_share_batch()

    async def attack() -> None:
        tricklers = [asyncio.ensure_future(trickle(Upload(port, single, bytes(SMALL_FILE)))) for _ in range(16)]
        admitted = SHARE // SMALL_FILE  # 16 KiB each: 8 fill the share

        def busy() -> list[Answer]:
            return [t.result() for t in tricklers if t.done() and t.result().status == 503]

        deadline = time.monotonic() + 20
        while len(busy()) < 16 - admitted and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for answer in busy():
            assert_busy(answer)
            assert "share" in answer.json()["detail"]
        assert len(busy()) == 16 - admitted, [t.result().status for t in tricklers if t.done()]
        trickling = [t for t in tricklers if not t.done()]
        assert len(trickling) == admitted

        other = Upload(port, head("/v1/predict/batch", content_type, len(batch), PATIENT), batch)
        assert_read_and_refused((await heads_then_bodies([other]))[0], SMALL_BATCH)
        assert not any(t.done() for t in trickling), "the tricklers were cut before the other key was served"

        for answer in await asyncio.gather(*trickling):
            assert answer.status == 408, answer.body
            assert answer.headers["content-type"] == "application/problem+json"
            problem = answer.json()
            assert problem["type"] == TYPE_BASE + "request-timeout"
            assert problem["request_id"] == answer.headers["x-request-id"] and len(problem["request_id"]) == 32
        same = Upload(port, head("/v1/predict/batch", content_type, len(batch), TRICKLER), batch)
        assert_read_and_refused((await heads_then_bodies([same]))[0], SMALL_BATCH)

    asyncio.run(asyncio.wait_for(attack(), 60))


# --- the rate limit, per image -------------------------------------------------------------------------------

LIMITED = {use: f"ica_memory-test-{use}" for use in ("batch", "v2", "burst", "head")}
BURST = 8


@pytest.fixture(scope="module")
def limited_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """BURST tokens per key, never refilled while the tests run."""
    settings = {"rate_limit_rps": "0.0001", "rate_limit_burst": str(BURST)}
    with start(tmp_path_factory, "gw-limited", list(LIMITED.values()), **settings) as server:
        yield server


def batch_of(gateway: Gateway, key: str, files: int) -> httpx.Response:
    uploads = [("files", (f"{i}.bin", b"no image", "application/octet-stream")) for i in range(files)]
    return httpx.post(f"{gateway.url}/v1/predict/batch", files=uploads, headers={"X-API-Key": key}, timeout=30)


def single(gateway: Gateway, key: str) -> httpx.Response:
    headers = {"X-API-Key": key, "Content-Type": "image/jpeg"}
    return httpx.post(f"{gateway.url}/v1/predict", content=b"no image", headers=headers, timeout=30)


def v2_of(gateway: Gateway, key: str, images: int) -> httpx.Response:
    data = [base64.b64encode(b"no image").decode()] * images
    body = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [images], "data": data}]}
    return httpx.post(f"{gateway.url}/v2/models/resnet50/infer", json=body, headers={"X-API-Key": key}, timeout=30)


def test_a_batch_costs_a_token_per_image(limited_gateway: Gateway) -> None:
    """6 images of 8 tokens pass; the next 6 find 2 and get 429 (before: every request cost one token, so this
    key could send 8 batches of 32); a single image still passes on what is left."""
    key = LIMITED["batch"]
    first = batch_of(limited_gateway, key, 6)
    assert first.status_code == 200 and len(first.json()["results"]) == 6
    assert first.headers["ratelimit-remaining"] == "2"
    refused = batch_of(limited_gateway, key, 6)
    body = assert_problem(refused, 429, "rate-limited")
    assert "6 images" in body["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert_problem(single(limited_gateway, key), 415, "unsupported-media-type")  # past the limiter: 1 token left
    assert_problem(single(limited_gateway, key), 429, "rate-limited")


def test_a_v2_request_costs_a_token_per_image(limited_gateway: Gateway) -> None:
    key = LIMITED["v2"]
    first = v2_of(limited_gateway, key, 6)
    assert first.status_code == 415 and "image 0" in first.json()["error"]  # charged, then each image checked
    refused = v2_of(limited_gateway, key, 6)
    assert refused.status_code == 429 and "6 images" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) >= 1
    assert single(limited_gateway, key).status_code == 415


def test_more_images_than_the_burst_are_refused_for_good(limited_gateway: Gateway) -> None:
    """A request that no bucket could ever pay for is told so (413), not sent to retry forever."""
    body = assert_problem(batch_of(limited_gateway, LIMITED["burst"], BURST + 1), 413, "payload-too-large")
    assert f"at most {BURST} images per request" in body["detail"]


def test_the_head_token_still_answers_429_before_the_body(limited_gateway: Gateway) -> None:
    """With the bucket empty, a large batch gets its 429 from the head alone, while its body is unsent."""
    key = LIMITED["head"]
    while single(limited_gateway, key).status_code != 429:
        pass
    body, content_type = multipart(8, MiB)
    answer = asyncio.run(answer_to_head(limited_gateway.port, head("/v1/predict/batch", content_type, len(body), key)))
    assert answer.status == 429 and answer.json()["type"] == TYPE_BASE + "rate-limited"
    assert int(answer.headers["retry-after"]) >= 1
