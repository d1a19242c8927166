"""Answers given while the client is still uploading (401, 413, 415, 429) reach it: never a connection reset,
and nothing it sends after such an answer is taken for a request.

The gateway answers these from the request head alone. Closing a socket with the rest of the upload unread
would make the kernel reset the connection and destroy the answer on its way (httpx: ReadError; behind a
load balancer: 502), and the unread upload must not be parsed as the next request on the connection.
These refusals need no model: the gateway here points at ports where nothing listens.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from support import Gateway, free_port, gateway_env

from gateway.early import DRAIN_BYTES
from gateway.keys import key_hash
from gateway.problems import TYPE_BASE
from modelserver.gateway_process import Upstream

# Every key gets one request, then 429 for 11 days: one key for each use.
KEYS = {use: f"ica_early-answers-{use}" for use in ("413", "415", "limited")}
LIMITED = KEYS["limited"]
UPLOAD = b"\xff\xd8\xff" + bytes(400_000)  # a JPEG's magic, then junk: 422 if it ever gets past the limit
CLIENTS = 100


@pytest.fixture(scope="module")
def early_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway (one process, as in its container) that allows each key one request."""
    workdir = tmp_path_factory.mktemp("gw-early")
    nowhere = Upstream(f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}", workdir / "none.json")
    hashes = [key_hash(key) for key in KEYS.values()]
    env = gateway_env(nowhere, hashes, rate_limit_rps="0.000001", rate_limit_burst="1")
    with Gateway(workdir / "gw.log", env) as server:
        yield server


def exhaust(gateway: Gateway) -> None:
    """Spend LIMITED's one token (b"x" is no image: 415 while a token is left, 429 once it is spent)."""
    headers = {"X-API-Key": LIMITED, "Content-Type": "image/jpeg", "Connection": "close"}
    response = httpx.post(f"{gateway.url}/v1/predict", content=b"x", headers=headers, timeout=30)
    assert response.status_code in (415, 429), response.text


async def flood(gateway: Gateway, multipart: bool) -> tuple[Counter, list[httpx.Response]]:
    """CLIENTS concurrent uploads, each on a connection of its own: the failures by type, and the answers."""
    headers = {"X-API-Key": LIMITED}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits) as client:

        async def upload() -> httpx.Response | str:
            try:
                if multipart:
                    return await client.post("/v1/predict", headers=headers, files={"file": ("a.jpg", UPLOAD)})
                return await client.post(
                    "/v1/predict", headers={**headers, "Content-Type": "image/jpeg"}, content=UPLOAD
                )
            except httpx.TransportError as exc:
                return type(exc).__name__

        results = await asyncio.gather(*(upload() for _ in range(CLIENTS)))
    failures = Counter(result for result in results if isinstance(result, str))
    return failures, [result for result in results if isinstance(result, httpx.Response)]


@pytest.mark.parametrize("multipart", [False, True], ids=["raw-body", "multipart"])
def test_every_rate_limited_upload_gets_its_429(early_gateway: Gateway, multipart: bool) -> None:
    exhaust(early_gateway)
    failures, answers = asyncio.run(flood(early_gateway, multipart))
    assert not failures, f"{sum(failures.values())} of {CLIENTS} uploads got no HTTP answer: {dict(failures)}"
    statuses = Counter(response.status_code for response in answers)
    assert statuses == {429: CLIENTS}, statuses
    for response in answers:
        if response.status_code == 429:
            assert response.json()["type"] == TYPE_BASE + "rate-limited"
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["connection"] == "close"  # the upload was cut short: the connection ends


def read_answer(sock: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """One HTTP answer from `sock`: status line, lower-cased headers, body (by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole answer head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status, *lines = head.split(b"\r\n")
    headers = dict(line.decode().lower().split(": ", 1) for line in lines)
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed before the whole answer body"
        body += chunk
    return status, headers, body


def read_to_end(sock: socket.socket) -> bytes:
    """Everything until the gateway closes; a reset (ConnectionResetError) fails the test."""
    rest = b""
    while chunk := sock.recv(65536):
        rest += chunk
    return rest


REFUSALS = {
    "401": (401, "unauthorized", "X-API-Key: ica_not-a-key\r\nContent-Type: image/jpeg", len(UPLOAD)),
    "413": (413, "payload-too-large", f"X-API-Key: {KEYS['413']}\r\nContent-Type: image/jpeg", 9 * 1024 * 1024),
    "415": (415, "unsupported-media-type", f"X-API-Key: {KEYS['415']}\r\nContent-Type: text/plain", len(UPLOAD)),
    "429": (429, "rate-limited", f"X-API-Key: {LIMITED}\r\nContent-Type: image/jpeg", len(UPLOAD)),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_upload_after_an_early_answer_is_discarded_not_parsed(early_gateway: Gateway, refusal: str) -> None:
    """The answer comes from the head alone; the upload sent after it, and a request behind that, are read
    and thrown away: no second answer (before: a 431 for the upload taken as a head), no reset."""
    status, slug, headers, length = REFUSALS[refusal]
    if refusal == "429":
        exhaust(early_gateway)
    with socket.create_connection(("127.0.0.1", early_gateway.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: x\r\n{headers}\r\nContent-Length: {length}\r\n\r\n".encode())
        line, answer_headers, body = read_answer(sock)
        assert line.startswith(f"HTTP/1.1 {status} ".encode()), line
        assert slug in body.decode()
        assert answer_headers["connection"] == "close"
        sock.sendall(UPLOAD + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert read_to_end(sock) == b"", "something after the early answer was taken for a request"


@pytest.mark.parametrize("size", [0, 1000, DRAIN_BYTES])
def test_small_refused_upload_keeps_the_connection(early_gateway: Gateway, size: int) -> None:
    """Only answers that cut a large upload short close the connection: the rest of a small body is read
    first (sent here after the head, as clients do), and the connection serves the next request."""
    with socket.create_connection(("127.0.0.1", early_gateway.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        sock.sendall(bytes(size))
        line, headers, _ = read_answer(sock)
        assert line.startswith(b"HTTP/1.1 401 ") and "connection" not in headers
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        line, _, body = read_answer(sock)
        assert line.startswith(b"HTTP/1.1 200 ") and body == b'{"status":"ok"}'
