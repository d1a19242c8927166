"""Fuzzing: schemathesis against the live gateway's OpenAPI, and hypothesis against the validation layer.

The schemathesis run is budgeted for the suite (`FUZZ_MAX_EXAMPLES`, default 50 per operation); the long
run in docs/operations.md ("Reliability") is the same test with a larger budget.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagegen import jpeg, png
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import Gateway, post, slowest_answer_during
from uvicorn.config import Config
from uvicorn.server import ServerState

from contract.formats import ACCEPTED_FORMATS, IMAGE_FORMATS
from gateway.problems import PROBLEM_JSON, Problem
from gateway.protocol import ConnectionLimits, guarded_protocol
from gateway.settings import Settings
from gateway.validation import CheckedImage, check_image, sniff

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "50"))
BASE_CHECKS = [not_a_server_error, response_schema_conformance]
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


OPERATIONS = [
    ("POST", "/v1/predict"),
    ("GET", "/v1/models"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("POST", "/v1/predict/batch"),
]
CORE = {
    ("POST", "/v1/predict"),
    ("POST", "/v1/predict/batch"),
    ("GET", "/v1/models"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
}


@pytest.fixture(scope="module")
def live_schema(gateway: Gateway):
    return schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")


def fuzz_operation(schema, gateway: Gateway, api_key: str, method: str, path: str, checks=CHECKS) -> int:
    """Run schemathesis' generated cases for one operation through hypothesis; the number of cases sent."""
    operation = schema[path][method]
    sent = 0

    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy())
    def fuzz(case) -> None:
        nonlocal sent
        sent += 1
        response = case.call(base_url=gateway.url, headers={"X-API-Key": api_key}, timeout=60)
        case.validate_response(response, checks=checks)
        assert b"Traceback" not in response.content  # bytes: /v1/explain answers a PNG

    fuzz()
    print(f"\n{method} {path}: {sent} cases")
    return sent


# schemathesis' own pytest integration (`from_fixture`) fails under pytest 9 ('Function' object has no
# attribute '_nodeid'), so each operation's strategy is driven by hypothesis directly; the checks are its own.
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_api_conforms_and_never_5xx(live_schema, gateway: Gateway, api_key: str, method: str, path: str) -> None:
    assert fuzz_operation(live_schema, gateway, api_key, method, path) >= 1


def test_every_other_operation_in_the_schema(live_schema, gateway: Gateway, api_key: str) -> None:
    """Whatever else the live schema offers (routes added later) is fuzzed too, so nothing escapes: no 5xx,
    bodies as documented (status-code documentation is only enforced for the operations above)."""
    operations = {(op.method.upper(), op.path) for op in (r.ok() for r in live_schema.get_all_operations())}
    assert operations >= CORE
    for method, path in sorted(operations - CORE):
        assert fuzz_operation(live_schema, gateway, api_key, method, path, BASE_CHECKS) >= 1


# --- the validation layer, in process --------------------------------------------------------------------------

SETTINGS = Settings(api_key_hashes=["a" * 64])
MAGICS = st.one_of([st.from_regex(fmt["magic"], fullmatch=True) for fmt in IMAGE_FORMATS])
# Arbitrary bytes, and arbitrary bytes behind every accepted magic (so the header parsers are reached),
# and real images cut or flipped at random places.
REAL = [jpeg(40, 30), png(40, 30)]
hostile = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda m, tail: m + tail, MAGICS, st.binary(max_size=4096)),
    st.builds(lambda img, cut: img[:cut], st.sampled_from(REAL), st.integers(0, 4000)),
    st.builds(
        lambda img, pos, byte: img[: pos % len(img)] + bytes([byte]) + img[pos % len(img) + 1 :],
        st.sampled_from(REAL),
        st.integers(0, 10**6),
        st.integers(0, 255),
    ),
)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=1500, deadline=None)
@given(hostile)
def test_check_image_never_raises_anything_but_a_4xx_problem(data: bytes) -> None:
    try:
        checked = check_image(data, SETTINGS)
    except Problem as problem:
        assert 400 <= problem.status < 500, (problem.slug, problem.detail)
        return
    assert isinstance(checked, CheckedImage)
    assert checked.width >= 1 and checked.height >= 1 and checked.data == data


@settings(max_examples=1500, deadline=None)
@given(hostile)
def test_sniff_names_a_format_or_refuses_with_4xx(data: bytes) -> None:
    try:
        fmt = sniff(data)
    except Problem as problem:
        assert problem.slug in ("invalid-image", "unsupported-media-type") and problem.status in (415, 422)
        return
    assert fmt in ACCEPTED_FORMATS


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=hostile, content_type=st.sampled_from(["image/jpeg", "image/png", "application/octet-stream"]))
def test_raw_uploads_of_arbitrary_bytes_over_http(
    gateway: Gateway, api_key: str, data: bytes, content_type: str
) -> None:
    response = post(gateway, api_key, content=data, headers={"Content-Type": content_type})
    if response.status_code == 200:
        assert response.json()["predictions"]
        return
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.json()["status"] == response.status_code


def test_gateway_answers_normally_after_fuzzing(gateway: Gateway, api_key: str) -> None:
    assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
    assert post(gateway, api_key, content=jpeg(), headers={"Content-Type": "image/jpeg"}).status_code == 200


# --- fixed hostile examples over HTTP ----------------------------------------------------------------------------

BOUNDARY = "hostile-boundary"


def multipart(field: str, contents: list[bytes], part_headers: bytes = b"") -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="a.jpg"\r\n'.encode()
    parts = [head + part_headers + b"Content-Type: image/jpeg\r\n\r\n" + content + b"\r\n" for content in contents]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


HOSTILE_FORMS = {  # about 10 MB each: path, body, the status
    "8 MiB of CRLF, near-boundaries for the parser": ("/v1/predict", multipart("file", [b"\r\n--" * 2**21]), 415),
    "100 000 empty files": ("/v1/predict/batch", multipart("files", [b""] * 100_000), 422),
    "a part with 10 MB of headers": ("/v1/predict/batch", multipart("files", [b""], b"X: a\r\n" * 1_700_000), 422),
}


@pytest.mark.parametrize("name", HOSTILE_FORMS)
def test_hostile_multipart_is_refused_without_stalling_others(gateway: Gateway, api_key: str, name: str) -> None:
    """The multipart parser runs on the event loop: it is given the body in slices, others are served between.
    (A guard: at 10 MB the old code kept others waiting tens of milliseconds too; SECURITY.md has the figures.)"""
    path, body, status = HOSTILE_FORMS[name]
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    response, slowest = slowest_answer_during(
        f"{gateway.url}/healthz", lambda: post(gateway, api_key, path, content=body, headers=headers)
    )
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert slowest < 0.5, f"/healthz took {slowest:.2f} s while the body was parsed"


@pytest.mark.parametrize("value", ["²", "1¹", "٣", "+1", "1_0", "9" * 5000])
def test_class_ids_are_ascii_digits_only(gateway: Gateway, api_key: str, value: str) -> None:
    """`classes=²` passed str.isdigit() and failed int(): a 500. (5000 digits: past int()'s digit limit.)"""
    response = post(gateway, api_key, content=jpeg(), headers={"Content-Type": "image/jpeg"}, params={"classes": value})
    assert response.status_code == 422, response.text[:300]
    assert response.json()["unknown_classes"] == [value]


# --- the head limit's framing agrees with the HTTP parser, however the bytes arrive ------------------------------


async def echo_length(scope: dict, receive, send) -> None:
    """An ASGI app that answers 200 with the length of the body it read."""
    length, more = 0, True
    while more:
        message = await receive()
        length, more = length + len(message.get("body", b"")), message.get("more_body", False)
    body = str(length).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


class Socket(asyncio.Transport):
    """What the protocol writes, kept (the kernel's side of a socket; reads come in as data_received calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.written, self.closing = bytearray(), False

    def write(self, data: bytes) -> None:
        self.written += data

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def serve(data: bytes, cuts: list[int]) -> bytes:
    """`data` through the gateway's real protocol (gateway/protocol.py) in reads split at `cuts`: the answers."""
    protocol_class = guarded_protocol(ConnectionLimits.of(SETTINGS))
    config = Config(app=echo_length, http=protocol_class, log_config=None)
    config.load()
    protocol = protocol_class(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    sock = Socket()
    protocol.connection_made(sock)
    for start, end in itertools.pairwise([0, *sorted(set(cuts)), len(data)]):
        protocol.data_received(data[start:end])
        await asyncio.sleep(0)
    for _ in range(100):  # let the app's tasks answer
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return bytes(sock.written)


def get(path: bytes) -> tuple[bytes, int]:
    return b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % path, 0


def with_length(body: bytes) -> tuple[bytes, int]:
    return b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), len(body)


def chunked(chunks: list[bytes], size: bytes, extension: bytes, trailers: int) -> tuple[bytes, int]:
    body = b"".join(size % len(chunk) + b"%s\r\n%s\r\n" % (extension, chunk) for chunk in chunks if chunk)
    trailer = b"".join(b"T%d: v\r\n" % i for i in range(trailers))
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + body + b"0\r\n" + trailer + b"\r\n", sum(len(chunk) for chunk in chunks)


EXTENSIONS = [b"", b";a=b", b';q="x y"']
SIZES = st.sampled_from([b"%x", b"%X", b"%020x"])  # 20 digits: the parser reads leading zeros past 16
body_bytes = st.binary(max_size=300) | st.sampled_from([b"\r\n\r\n", b"0\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"])
requests = st.one_of(
    st.builds(get, st.sampled_from([b"", b"a?b=1"])),
    st.builds(with_length, body_bytes),
    st.builds(chunked, st.lists(body_bytes, max_size=4), SIZES, st.sampled_from(EXTENSIONS), st.integers(0, 3)),
)
Request = tuple[bytes, int]


@settings(max_examples=300, deadline=None)
@given(
    before=st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]),
    pipelined=st.lists(requests, min_size=1, max_size=4),
    cuts=st.lists(st.integers(1, 4000), max_size=12),
)
def test_head_framing_agrees_with_the_parser(before: bytes, pipelined: list[Request], cuts: list[int]) -> None:
    """Valid requests, pipelined, with empty lines before the first, in reads cut anywhere (bodies that look
    like heads or like the end of a chunked body included): each gets its 200 with its body's length, in
    order. In process: a test over TCP cannot choose where the reads are cut."""
    data = before + b"".join(request for request, _ in pipelined)
    answers = asyncio.run(serve(data, [cut for cut in cuts if cut < len(data)]))
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answers) == [b"200"] * len(pipelined), answers[:300]
    assert re.findall(rb"\r\n\r\n(\d+)", answers) == [b"%d" % length for _, length in pipelined]
