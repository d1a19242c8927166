"""Security properties that can be tested: what is reachable, how TorchServe is locked down, secrets, slow clients.

Complements test_gateway_faults.py (management paths, absolute-form targets), test_bad_inputs.py (upload caps,
chunked bodies) and test_gateway.py (wrong vs missing key, keys absent from logs). SECURITY.md maps each
TorchServe CVE to the control and the test here that guards it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from imagegen import jpeg
from support import (
    API_KEY,
    OTHER_KEY,
    Gateway,
    assert_problem,
    free_port,
    gateway_env,
    metrics_url,
    post,
    read_properties,
    slowest_answer_during,
)

from gateway.keys import key_hash
from modelserver.paths import REPO_ROOT
from modelserver.torchserve import TorchServe

JPEG = {"Content-Type": "image/jpeg"}
TS_METRIC = re.compile(r"^ts_\w+", re.MULTILINE)


def raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send a request as bytes (no client normalisation of the path) and read the whole reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def problem_of(reply: bytes) -> tuple[dict[str, str], dict]:
    """The headers and problem+json body of a raw reply."""
    head, body = reply.split(b"\r\n\r\n", 1)
    headers = dict(line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:])
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["request_id"] == headers["x-request-id"] and len(problem["request_id"]) == 32
    assert headers["x-content-type-options"] == "nosniff"
    return headers, problem


# --- nothing of TorchServe through the gateway ----------------------------------------------------------------


def test_gateway_metrics_are_its_own_not_torchservers(gateway: Gateway, torchserve: TorchServe, api_key: str) -> None:
    assert post(gateway, api_key, content=jpeg(), headers=JPEG).status_code == 200  # TorchServe counts it
    theirs = httpx.get(f"{metrics_url(torchserve)}/metrics", timeout=10)
    assert theirs.status_code == 200 and TS_METRIC.search(theirs.text), "TorchServe's metrics look different"
    expected = {"/metrics": 200, "/metrics?name[]=ts_inference_requests_total": 200, "/metrics/": 404, "//metrics": 404}
    for path, status in expected.items():
        ours = httpx.get(f"{gateway.url}{path}", timeout=10)
        assert ours.status_code == status, (path, ours.status_code)
        assert not TS_METRIC.search(ours.text), path
        assert "location" not in ours.headers, path
        if status == 200:
            assert "gateway_requests_total" in ours.text, path


@pytest.mark.parametrize("path", ["/v1/predict/", "/healthz/", "/v1/models/", "/docs/"])
def test_no_redirect_names_the_host_header(gateway: Gateway, path: str) -> None:
    """A slash redirect is built from the Host header: behind API Gateway it named the internal NLB, and any
    client could make the gateway answer `Location: http://evil.example/...`. Trailing slashes are 404s."""
    reply = raw(
        gateway.port,
        f"POST {path} HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status_of(reply) == 404, reply[:300]
    headers, problem = problem_of(reply)
    assert problem["type"].endswith("/not-found") and "location" not in headers
    assert b"evil.example" not in reply


ENCODED_PROBES = [
    "/v1%2f..%2f..%2fmodels",
    "/v1/predict%2f..%2f..%2fmodels",
    "/%2e%2e%2fmodels",
    "/..%2fmodels",
    "/%252e%252e/models",
    "/v1/models%2f..%2f..%2fmodels%2fresnet50",
    "/v1/models/..%2f..%2fmodels",
    "/v1/models;/../../models",
    "/predictions%2fresnet50",
    "/v1/%2e%2e/%2e%2e/metrics",
    "/v1/predict/..%2f..%2fping",
    "/%5c..%5cmodels",
]


@pytest.mark.parametrize("path", ENCODED_PROBES)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_encoded_traversal_reaches_nothing(gateway: Gateway, api_key: str, path: str, method: str) -> None:
    reply = raw(
        gateway.port,
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {api_key}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status_of(reply) in (400, 404, 405), reply[:300]
    for leak in (b"modelName", b"InvalidKeyException", b"Healthy", b"ts_"):
        assert leak not in reply, (path, leak)


@pytest.mark.parametrize("header", ["Host", "X-Forwarded-Host", "X-Original-URL", "X-Rewrite-URL", "X-Forwarded-For"])
def test_routing_headers_change_nothing(gateway: Gateway, torchserve: TorchServe, api_key: str, header: str) -> None:
    management = urlsplit(torchserve.management_url).netloc
    value = {"Host": management, "X-Forwarded-Host": management, "X-Forwarded-For": "127.0.0.1"}.get(header, "/models")
    own = {"/models": (404, "not-found"), "/metrics": (200, "gateway_requests_total"), "/v1/models": (200, '"labels":')}
    for path, (status, marker) in own.items():
        response = httpx.get(f"{gateway.url}{path}", headers={"X-API-Key": api_key, header: value}, timeout=10)
        assert response.status_code == status and marker in response.text, (header, path, response.text[:200])
        assert "modelName" not in response.text and not TS_METRIC.search(response.text), (header, path)


@pytest.mark.parametrize("host", ["torchserve:8081", "localhost:8082", "[::1]", "evil.example", "a" * 300])
def test_odd_host_headers_get_the_gateways_own_answer(gateway: Gateway, host: str) -> None:
    """The Host header routes nothing: whatever it names, the answer is the gateway's own metrics."""
    reply = raw(gateway.port, f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    assert status_of(reply) == 200, reply[:200]
    assert b"gateway_requests_total" in reply
    assert not TS_METRIC.search(reply.decode(errors="replace"))


# --- TorchServe locked down, as it runs ----------------------------------------------------------------------


def test_rendered_torchserve_config_is_hardened(torchserve: TorchServe) -> None:
    props = read_properties((torchserve.workdir / "config.properties").read_text())
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "false"
    assert props["install_py_dep_per_model"] == "false"
    for key in ("inference_address", "management_address", "metrics_address"):
        assert urlsplit(props[key]).hostname == "127.0.0.1", key
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    allowed = re.compile(props["allowed_urls"])
    assert allowed.fullmatch(f"file://{torchserve.model_store.resolve()}/resnet50.mar")
    for url in (
        "http://169.254.169.254/latest/meta-data/x.mar",
        "https://example.com/model_store/a.mar",
        "file:///srv/model_store/resnet50.mar",
        "file:///tmp/model_store/../../etc/passwd",
        "file:///x/model_store/a.mar?http://evil/x.mar",
        "file:///x/model_store/a.mar\nhttp://evil",
        "HTTP://evil/model_store/a.mar",
    ):
        assert not allowed.fullmatch(url), url


# Metrics: loopback locally; in the container only the `ops` network's interface, which the host reaches through its
# 127.0.0.1-only publish and the gateway does not (test_containers.py::test_container_config_differs_only_in_addresses).
@pytest.mark.parametrize(
    ("package", "metrics_host"), [("config.properties", "127.0.0.1"), ("config.container.properties", "torchserve-ops")]
)
def test_committed_configs_keep_the_hardening(package: str, metrics_host: str) -> None:
    props = read_properties((REPO_ROOT / package).read_text())
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
    assert float(props["token_expiration_min"]) <= 60
    assert urlsplit(props["metrics_address"]).hostname == metrics_host
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert "http" not in props["allowed_urls"].lower()


class Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        Recorder.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Recorder)
    Recorder.hits = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def test_model_registration_is_refused_and_fetches_nothing(torchserve: TorchServe, listener: int) -> None:
    """CVE-2023-43654 / CVE-2024-35198: no registration, so no SSRF, whatever the URL, key or no key."""
    keys = torchserve.keys()
    urls = [
        f"http://127.0.0.1:{listener}/evil.mar",
        f"http://127.0.0.1:{listener}/model_store/x.mar",
        "file:///etc/passwd",
        "resnet50.mar",
    ]
    for url in urls:
        for auth in (f"Bearer {keys['management']}", f"Bearer {keys['API']}", ""):
            response = httpx.post(
                f"{torchserve.management_url}/models",
                params={"url": url, "model_name": "evil"},
                headers={"Authorization": auth},
                timeout=10,
            )
            assert 400 <= response.status_code < 500, (url, auth[:8], response.status_code, response.text)
    time.sleep(0.5)
    assert Recorder.hits == [], f"TorchServe fetched {Recorder.hits}"
    models = httpx.get(
        f"{torchserve.management_url}/models", timeout=10, headers={"Authorization": f"Bearer {keys['management']}"}
    ).json()
    assert [m["modelName"] for m in models["models"]] == ["resnet50"]


def test_token_auth_is_on_for_inference_and_management(torchserve: TorchServe) -> None:
    keys = torchserve.keys()
    probes = [
        ("POST", f"{torchserve.inference_url}/predictions/resnet50", keys["inference"]),
        ("GET", f"{torchserve.management_url}/models", keys["management"]),
    ]
    for method, url, key in probes:
        for auth in ("", "Bearer", "Bearer wrong", f"Bearer {key[:-1]}", f"Basic {key}"):
            response = httpx.request(method, url, headers={"Authorization": auth}, content=jpeg(), timeout=30)
            # TorchServe 0.12 answers every missing or wrong token with 400 InvalidKeyException
            refused = response.status_code == 400 and "InvalidKeyException" in response.text
            assert refused, (url, auth[:10], response.status_code, response.text[:200])
        assert (
            httpx.request(
                method, url, headers={"Authorization": f"Bearer {key}"}, content=jpeg(), timeout=60
            ).status_code
            == 200
        )
    # The inference key does not open management, nor the management key inference.
    wrong = httpx.get(f"{torchserve.management_url}/models", headers={"Authorization": f"Bearer {keys['inference']}"})
    assert wrong.status_code == 400 and "InvalidKeyException" in wrong.text


def listening_sockets(torchserve: TorchServe) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every LISTEN socket in TorchServe's whole process tree."""
    assert torchserve.process is not None
    root = psutil.Process(torchserve.process.pid)
    listening = []
    for proc in [root, *root.children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                listening.append((proc.name(), conn.laddr.ip, conn.laddr.port))
    return listening


LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1")  # Java binds IPv4 addresses on a dual-stack socket


def test_metrics_api_has_no_token_so_it_stays_on_loopback(torchserve: TorchServe) -> None:
    """TorchServe 0.12's token authorization covers inference and management only: the metrics API answers
    anyone who can reach it. Hence metrics_address is loopback in both configs and never proxied; here the
    socket that really listens on the metrics port is checked, not the address we asked for."""
    response = httpx.get(f"{metrics_url(torchserve)}/metrics", timeout=10)
    assert response.status_code == 200 and TS_METRIC.search(response.text)
    metrics_port = urlsplit(metrics_url(torchserve)).port
    bound = [ip for _, ip, port in listening_sockets(torchserve) if port == metrics_port]
    assert bound and all(ip in LOOPBACK for ip in bound), bound


def test_every_torchserve_socket_listens_on_loopback(torchserve: TorchServe) -> None:
    """CVE-2024-35199 (gRPC on 0.0.0.0) and friends: every LISTEN socket of the whole process tree."""
    listening = listening_sockets(torchserve)
    ports = torchserve.ports
    expected = {ports.inference, ports.management, ports.metrics, ports.grpc_inference, ports.grpc_management}
    assert {port for _, _, port in listening} >= expected, listening
    assert all(ip in LOOPBACK for _, ip, _ in listening), listening


# --- keys: never echoed, never logged, all failures alike --------------------------------------------------------


def test_keys_never_in_logs_or_bodies(gateway: Gateway, torchserve: TorchServe, api_key: str) -> None:
    wrong = "ica_wrong-key-that-must-not-be-logged-5f1c"
    bodies = []
    for headers in (
        {"X-API-Key": api_key},
        {"Authorization": f"Bearer {OTHER_KEY}"},
        {"X-API-Key": wrong},
        {"Authorization": f"Bearer {wrong}"},
        {"Authorization": f"Basic {wrong}"},
    ):
        for path, kwargs in (
            ("/v1/predict", {"content": jpeg(), "headers": JPEG}),
            ("/v1/predict", {"content": b"garbage", "headers": JPEG}),
            ("/v1/predict?top_k=999", {"content": jpeg(), "headers": JPEG}),
            (f"/v1/predict?api_key={wrong}", {"content": jpeg(), "headers": JPEG}),
            ("/nope", {}),
        ):
            response = httpx.post(
                f"{gateway.url}{path}",
                headers={**headers, **kwargs.get("headers", {})},
                content=kwargs.get("content"),
                timeout=60,
            )
            bodies.append(response.text + str(dict(response.headers)))
    time.sleep(0.3)
    logs = gateway.logs()
    secrets = [api_key, OTHER_KEY, wrong, *torchserve.keys().values()]
    for secret in secrets:
        assert secret not in logs, "a key reached the gateway's log"
        assert all(secret not in body for body in bodies), "a key was echoed to a client"


def near_misses(key: str) -> list[dict[str, str]]:
    return [
        {"X-API-Key": "ica_" + "x" * 43},  # unknown, well-formed
        {"X-API-Key": key[:-1] + ("a" if key[-1] != "a" else "b")},  # one character off
        {"X-API-Key": key[:-1]},
        {"X-API-Key": key.upper()},
        {"X-API-Key": key_hash(key)},  # the stored hash is not a key
        {"Authorization": f"Basic {key}"},
        {"Authorization": f"Token {key}"},
        {"Authorization": "Bearer"},
        {"X-Api-Token": key},
        {},
    ]


def comparable(response: httpx.Response) -> tuple:
    body = {k: v for k, v in response.json().items() if k != "request_id"}
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date", "content-length")}
    return response.status_code, body, headers


def test_unknown_and_wrong_keys_look_the_same(gateway: Gateway, api_key: str) -> None:
    answers = [
        comparable(post(gateway, "", content=jpeg(), headers={**JPEG, **h, "X-API-Key": h.get("X-API-Key", "")}))
        for h in near_misses(api_key)
    ]
    assert answers[0][0] == 401
    assert all(answer == answers[0] for answer in answers), [a[0] for a in answers]


# --- slow and oversized clients --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_gateway(torchserve: TorchServe, api_key: str, tmp_path_factory) -> Iterator[Gateway]:
    env = gateway_env(
        torchserve,
        [key_hash(api_key)],
        header_timeout_s="2",
        max_header_bytes="8192",
        rate_limit_rps="1000",
        rate_limit_burst="1000",
    )
    with Gateway(tmp_path_factory.mktemp("gw-strict") / "gw.log", env) as server:
        yield server


def closed_after(sock: socket.socket, drip: bytes | None, limit_s: float) -> float | None:
    """Seconds until the server closed `sock` (dripping `drip` every 0.25 s meanwhile), None if it never did."""
    started = time.monotonic()
    sock.settimeout(0.25)
    while time.monotonic() - started < limit_s:
        try:
            if drip:
                sock.sendall(drip)
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def test_slowloris_head_is_cut_off_and_others_are_served(strict_gateway: Gateway, api_key: str) -> None:
    slow = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", strict_gateway.port), timeout=5)
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
        slow.append(sock)
    idle = socket.create_connection(("127.0.0.1", strict_gateway.port), timeout=5)  # says nothing at all
    try:
        # Meanwhile, normal clients are served promptly.
        started = time.monotonic()
        assert post(strict_gateway, api_key, content=jpeg(), headers=JPEG).status_code == 200
        assert httpx.get(f"{strict_gateway.url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 10
        dripping = closed_after(slow[0], b"X-Slow: 1\r\n", limit_s=8)
        assert dripping is not None and dripping < 4, dripping
        assert closed_after(idle, None, limit_s=8) is not None
        for sock in slow[1:]:
            assert closed_after(sock, None, limit_s=4) is not None
    finally:
        for sock in [*slow, idle]:
            sock.close()
    assert httpx.get(f"{strict_gateway.url}/healthz", timeout=5).status_code == 200


def test_keep_alive_connection_serves_several_requests(strict_gateway: Gateway, api_key: str) -> None:
    """The head deadline restarts per request: a kept-alive connection is not cut mid-use."""
    with httpx.Client(base_url=strict_gateway.url, timeout=30) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(1.2)  # under keep-alive (5 s); the three together exceed the 2 s head deadline
        response = client.post("/v1/predict", content=jpeg(), headers={"X-API-Key": api_key, **JPEG})
        assert response.status_code == 200


@pytest.mark.parametrize("size", [9000, 40_000, 200_000])
def test_request_head_size_is_bounded(strict_gateway: Gateway, size: int) -> None:
    """Even while the client is still sending the head, the 431 reaches it: the rest is read and discarded
    (a close with unread bytes would reset the connection and destroy the answer)."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * size + b"\r\nConnection: close\r\n\r\n"
    reply = raw(strict_gateway.port, request)  # a reset raises ConnectionResetError: the test fails
    assert status_of(reply) == 431, reply[:100]
    headers, problem = problem_of(reply)
    assert problem["type"].endswith("/request-head-too-large") and headers["connection"] == "close"
    ok = raw(
        strict_gateway.port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4000 + b"\r\nConnection: close\r\n\r\n",
    )
    assert status_of(ok) == 200


HEAD_LIMIT = 8192  # strict_gateway's
OVER = b"a" * 40_000  # a header value five times the limit


def statuses(reply: bytes) -> list[int]:
    """The status of every answer in a raw reply, in order."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]  # no answer's body says this


def head(path: str = "/healthz", extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


@pytest.mark.parametrize("before", [b"\r\n", b"\r\n\r\n", b"\n\r\n\n", b"\r\n" * (HEAD_LIMIT // 2)])
def test_empty_lines_before_a_request_count_toward_the_head_limit(strict_gateway: Gateway, before: bytes) -> None:
    """The parser skips any number of empty lines before a request line (RFC 9112 2.2 asks for at least one);
    the first blank line is not the end of the head: the head and the lines before it are counted."""
    reply = raw(strict_gateway.port, before + head(extra=b"X-Pad: " + OVER + b"\r\n"))
    assert statuses(reply) == [431], (len(before), reply[:200])
    assert problem_of(reply)[1]["type"].endswith("/request-head-too-large")
    small = raw(strict_gateway.port, before + head(extra=b"Connection: close\r\n"))
    assert statuses(small) == ([431] if len(before) >= HEAD_LIMIT else [200]), (len(before), small[:200])


def test_endless_header_after_empty_lines_is_cut_and_others_are_served(strict_gateway: Gateway) -> None:
    """`\\r\\n\\r\\n`, then a head with one header that never ends: 431 at the limit, and the event loop never
    stalls meanwhile (httptools copied the growing value again with every read)."""

    def attack() -> bytes:
        with socket.create_connection(("127.0.0.1", strict_gateway.port), timeout=10) as sock:
            sock.sendall(b"\r\n\r\n" + head(extra=b"X-Endless: ")[:-2])
            sock.settimeout(0.02)
            sent, reply, started = 0, b"", time.monotonic()
            try:  # until the answer is in, at most 64 MiB or 10 s
                while b"\r\n\r\n" not in reply and sent < 64 * 2**20 and time.monotonic() - started < 10:
                    with contextlib.suppress(TimeoutError):
                        sent += sock.send(b"a" * 65536)
                    with contextlib.suppress(TimeoutError):
                        reply += sock.recv(65536)
            except OSError:  # closed without an answer
                pass
            return reply

    reply, slowest = slowest_answer_during(f"{strict_gateway.url}/healthz", attack)
    assert statuses(reply) == [431], reply[:200]
    assert slowest < 0.5, f"/healthz took {slowest:.2f} s during the attack"


@pytest.mark.parametrize(
    "first",
    [
        head(),
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nGET /",  # its body looks like a head
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nGET /\r\n0\r\n\r\n",
    ],
    ids=["get", "content-length", "chunked"],
)
def test_pipelined_head_over_the_limit_gets_431_after_the_first_answer(strict_gateway: Gateway, first: bytes) -> None:
    """A request sent in the same read as the one before it is a head too: counted from the end of that
    request, refused in its turn, after the answer to the first."""
    expected = 200 if first.startswith(b"GET") else 405
    ok = raw(strict_gateway.port, first + head(extra=b"Connection: close\r\n"))
    assert statuses(ok) == [expected, 200], ok[:300]
    reply = raw(strict_gateway.port, first + head(extra=b"X-Pad: " + OVER + b"\r\n"))
    assert statuses(reply) == [expected, 431], reply[:300]
    problem_of(reply[reply.index(b"HTTP/1.1 431") :])


def chunked_upload(image: bytes, size_line_extra: bytes = b"", trailers: bytes = b"") -> bytes:
    """A chunked POST of `image` (one chunk) with a key, closing the connection after its answer."""
    request_head = head("/v1/predict", b"X-API-Key: %s\r\nContent-Type: image/jpeg\r\n" % API_KEY.encode())
    request_head = request_head.replace(b"GET", b"POST", 1)[:-2] + b"Transfer-Encoding: chunked\r\n"
    chunk = b"%x%s\r\n%s\r\n" % (len(image), size_line_extra, image)
    return request_head + b"Connection: close\r\n\r\n" + chunk + b"0\r\n" + trailers + b"\r\n"


def test_chunked_trailers_and_chunk_lines_count_toward_the_head_limit(strict_gateway: Gateway) -> None:
    """A chunked body's trailer section is headers after the body; a chunk-size line can carry extensions.
    Neither is body data, and both were counted by no limit. The framing of chunks may exceed the limit by
    1/16 of their data: 128-byte chunks pass, a flood of 1-byte chunks (a microsecond each) does not."""
    image = jpeg()
    assert statuses(raw(strict_gateway.port, chunked_upload(image, b";a=b", b"X-Trailer: 1\r\n"))) == [200]
    cut = (len(image) - 1) // 128 * 128  # 128-byte chunks, then the rest (at least a byte) in one
    in_small_chunks = b"".join(b"80\r\n%s\r\n" % image[i : i + 128] for i in range(0, cut, 128))
    upload = chunked_upload(image[cut:]).replace(b"\r\n\r\n", b"\r\n\r\n" + in_small_chunks, 1)
    assert statuses(raw(strict_gateway.port, upload)) == [200]
    too_large = [
        chunked_upload(image, trailers=b"X-Trailer: " + OVER + b"\r\n"),
        chunked_upload(image, trailers=b"X-T: 1\r\n" * 5000),
        chunked_upload(image, size_line_extra=b";ext=" + OVER),
        chunked_upload(image).replace(b"\r\n\r\n", b"\r\n\r\n" + b"1\r\nx\r\n" * 100_000, 1),  # a flood of tiny chunks
    ]
    for upload in too_large:
        reply = raw(strict_gateway.port, upload)
        assert statuses(reply) == [431], reply[:300]
        assert problem_of(reply)[1]["type"].endswith("/request-head-too-large")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\x01b\r\n\r\n",  # a control character in a value
        b"GET /healthz HTTP/1.1\r\nHo st: x\r\n\r\n",  # a space in a header name
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",  # TLS spoken to plain HTTP
    ],
)
def test_malformed_http_gets_a_problem_and_a_closed_connection(strict_gateway: Gateway, request_bytes: bytes) -> None:
    reply = raw(strict_gateway.port, request_bytes)  # returns once the gateway has closed the connection
    assert status_of(reply) == 400, reply[:100]
    headers, problem = problem_of(reply)
    assert headers["connection"] == "close"
    assert problem["type"].endswith("/malformed-request") and problem["status"] == 400


def test_slow_body_upload_is_still_capped(strict_gateway: Gateway, api_key: str) -> None:
    """A body that keeps coming (chunked, no length) stops at the upload cap, whatever its pace."""

    def chunks():
        for _ in range(10):
            yield b"\xff\xd8\xff" + bytes(1024 * 1024)
            time.sleep(0.05)

    response = post(strict_gateway, api_key, content=chunks(), headers=JPEG)
    assert_problem(response, 413, "payload-too-large")


# --- headers on every response ---------------------------------------------------------------------------------

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def test_security_headers_on_every_kind_of_answer(gateway: Gateway, api_key: str) -> None:
    answers = [
        httpx.get(f"{gateway.url}/healthz", timeout=10),
        httpx.get(f"{gateway.url}/metrics", timeout=10),
        httpx.get(f"{gateway.url}/nope", timeout=10),
        httpx.put(f"{gateway.url}/v1/predict", timeout=10),
        post(gateway, "wrong", content=jpeg(), headers=JPEG),
        post(gateway, api_key, content=b"junk", headers=JPEG),
        post(gateway, api_key, content=jpeg(), headers=JPEG),
        httpx.get(f"{gateway.url}/openapi.json", timeout=10),
    ]
    for response in answers:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (response.request.url, name)
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert "server" not in response.headers, "the server header names the stack"


def test_api_keys_are_minted_with_the_standard_library_alone() -> None:
    """`make api-key` needs no virtualenv: gateway.keys runs on a Python without site-packages (-S), where
    FastAPI cannot be imported, and prints a key with its SHA-256."""
    bare = [sys.executable, "-S"]
    assert subprocess.run([*bare, "-c", "import fastapi"], capture_output=True, timeout=30).returncode != 0
    for command in ([*bare, "-m", "gateway.keys"], ["make", "-s", "--no-print-directory", "api-key"]):
        out = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
        key = re.search(r"^API key .*:\s+(ica_[\w-]{43})$", out, re.M)
        digest = re.search(r"^SHA-256 .*:\s+([0-9a-f]{64})$", out, re.M)
        assert key and digest, out
        assert hashlib.sha256(key.group(1).encode()).hexdigest() == digest.group(1)
