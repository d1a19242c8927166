"""Faults: TorchServe down and back, keys expiring and rotating, slow and broken upstreams, path tricks."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from imagegen import jpeg
from support import PYTHON, Gateway, assert_problem, free_port, gateway_env, post, start_torchserve

from contract.torchserve_tokens import bearer, is_invalid_token
from gateway.keys import key_hash
from modelserver.gateway_process import Upstream
from modelserver.torchserve import TorchServe

JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def short_lived_keys(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """A TorchServe of its own whose inference and management keys expire after 3 seconds."""
    with start_torchserve(tmp_path_factory.mktemp("ts-short"), model_store, {"token_expiration_min": "0.05"}) as server:
        yield server


@pytest.fixture(scope="module")
def gateway_short(short_lived_keys: TorchServe, api_key: str, tmp_path_factory) -> Iterator[Gateway]:
    env = gateway_env(short_lived_keys, [key_hash(api_key)], readiness_cache_s="0.5", retry_after_s="3")
    with Gateway(tmp_path_factory.mktemp("gw-short") / "gw.log", env) as server:
        yield server


def test_expired_keys_are_renewed_without_client_failures(
    gateway_short: Gateway, short_lived_keys: TorchServe, api_key: str
) -> None:
    for _ in range(3):
        stale = short_lived_keys.keys()["inference"]
        time.sleep(3.5)  # the key in the file has now expired
        direct = httpx.get(f"{short_lived_keys.inference_url}/ping", headers={"Authorization": f"Bearer {stale}"})
        assert direct.status_code == 400 and "InvalidKeyException" in direct.text
        response = post(gateway_short, api_key, content=jpeg(), headers=JPEG)
        assert response.status_code == 200, response.text
        assert httpx.get(f"{gateway_short.url}/readyz", timeout=10).status_code == 200
    assert "renewed the TorchServe inference key" in gateway_short.logs()
    assert "renewed the TorchServe management key" in gateway_short.logs()


def test_the_readiness_probe_renews_an_expired_management_key(short_lived_keys: TorchServe) -> None:
    """`python -m modelserver ready` (the serve container's health check) follows the gateway's key policy
    (contract/torchserve_tokens.py): the file's expired management key is renewed, the READY worker counted."""
    stale = short_lived_keys.keys()["management"]
    time.sleep(3.5)  # the key in the file has now expired
    refused = httpx.get(f"{short_lived_keys.management_url}/models", headers=bearer(stale), timeout=10)
    assert is_invalid_token(refused.status_code, refused.content), refused.text
    probe = [PYTHON, "-m", "modelserver", "ready", "--management-url", short_lived_keys.management_url]
    ready = subprocess.run([*probe, "--key-file", str(short_lived_keys.key_file)], capture_output=True, text=True)
    assert ready.returncode == 0 and "READY worker(s)" in ready.stdout, ready.stdout + ready.stderr  # 0: none READY
    assert short_lived_keys.keys()["management"] != stale


def test_torchserve_down_then_back(gateway_short: Gateway, short_lived_keys: TorchServe, api_key: str) -> None:
    assert post(gateway_short, api_key, content=jpeg(), headers=JPEG).status_code == 200
    short_lived_keys.stop()
    time.sleep(1.0)  # past the readiness cache
    ready = httpx.get(f"{gateway_short.url}/readyz", timeout=10)
    assert_problem(ready, 503, "model-unavailable")
    started = time.monotonic()
    down = post(gateway_short, api_key, content=jpeg(), headers=JPEG)
    assert time.monotonic() - started < 5
    assert_problem(down, 503, "model-unavailable")
    assert down.headers["retry-after"] == "3"
    short_lived_keys.start()  # same ports; TorchServe writes new keys
    short_lived_keys.wait_ready(timeout=180)
    back = post(gateway_short, api_key, content=jpeg(), headers=JPEG)
    assert back.status_code == 200, back.text
    time.sleep(1.0)
    assert httpx.get(f"{gateway_short.url}/readyz", timeout=10).status_code == 200


def test_key_rotation_is_invisible_to_clients(gateway: Gateway, torchserve: TorchServe, api_key: str) -> None:
    assert post(gateway, api_key, content=jpeg(), headers=JPEG).status_code == 200
    old = torchserve.keys()["inference"]
    renew = httpx.post(
        f"{torchserve.management_url}/token",
        params={"type": "inference"},
        headers={"Authorization": f"Bearer {torchserve.keys()['API']}"},
        timeout=10,
    )
    assert renew.status_code == 200
    assert torchserve.keys()["inference"] != old
    assert httpx.get(f"{torchserve.inference_url}/ping", headers={"Authorization": f"Bearer {old}"}).status_code == 400
    for _ in range(3):
        response = post(gateway, api_key, content=jpeg(), headers=JPEG)
        assert response.status_code == 200, response.text


def test_upstream_timeout_is_504(torchserve: TorchServe, api_key: str, tmp_path: Path) -> None:
    env = gateway_env(torchserve, [key_hash(api_key)], request_timeout_s="0.03")
    with Gateway(tmp_path / "gw.log", env) as impatient:
        big = jpeg(2000, 1500)
        started = time.monotonic()
        response = post(impatient, api_key, content=big, headers=JPEG)
        assert time.monotonic() - started < 5
        assert_problem(response, 504, "upstream-timeout")
        assert httpx.get(f"{impatient.url}/healthz", timeout=5).status_code == 200


class Described(http.server.BaseHTTPRequestHandler):
    """Answers the gateway's one management call, the served model's description (its classes), as the handler
    does; anything else 404."""

    def do_GET(self) -> None:  # noqa: N802
        if "customized=true" not in self.path:
            self.send_error(404)
            return
        labels = [f"class {i}" for i in range(1000)]
        body = json.dumps([{"customizedMetadata": {"labels": len(labels), "label_names": labels}}]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class GarbageUpstream(Described):
    """Answers every prediction with 200 and a body that is not the handler's JSON."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"<html>definitely not json</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class DroppingUpstream(Described):
    """Reads each prediction and closes the connection without an answer, as a TorchServe that crashes."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def gateway_before(
    handler: type[http.server.BaseHTTPRequestHandler], api_key: str, tmp_path: Path
) -> Iterator[Gateway]:
    """The real gateway in front of a stub TorchServe served by `handler`: its inference API, and of its management
    API only the model's description."""
    stub = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    key_file = tmp_path / "key_file.json"
    key_file.write_text('{"inference": {"key": "k"}, "management": {"key": "m"}, "API": {"key": "a"}}')
    url = f"http://127.0.0.1:{stub.server_address[1]}"
    upstream = Upstream(url, url, key_file)
    try:
        with Gateway(tmp_path / "gw.log", gateway_env(upstream, [key_hash(api_key)], retry_after_s="4")) as gateway:
            yield gateway
    finally:
        stub.shutdown()


def test_garbage_from_upstream_is_502(api_key: str, tmp_path: Path) -> None:
    with gateway_before(GarbageUpstream, api_key, tmp_path) as gateway:
        body = assert_problem(post(gateway, api_key, content=jpeg(), headers=JPEG), 502, "upstream-error")
        assert "definitely" not in body["detail"]
        assert_problem(httpx.get(f"{gateway.url}/readyz", timeout=10), 503, "model-unavailable")


def test_connection_cut_by_upstream_is_503_with_retry_after(api_key: str, tmp_path: Path) -> None:
    """A crash mid-request (tests/system/docker/test_container_stack.py does it to the real TorchServe): retryable."""
    with gateway_before(DroppingUpstream, api_key, tmp_path) as gateway:
        response = post(gateway, api_key, content=jpeg(), headers=JPEG)
        body = assert_problem(response, 503, "model-unavailable")
        assert response.headers["retry-after"] == "4"
        assert "dropped the connection" in body["detail"]


MANAGEMENT_PROBES = [
    "/models",
    "/models/resnet50",
    "/v1/../models",
    "/v1/%2e%2e/models",
    "/%2e%2e/models",
    "/v1/predict/../../models",
    "//models",
    "/predictions/resnet50",
    "/token?type=inference",
    "/api-description",
    "/v1/models/../../models/resnet50",
]


@pytest.mark.parametrize("path", MANAGEMENT_PROBES)
def test_management_api_is_unreachable(gateway: Gateway, api_key: str, path: str) -> None:
    for method in ("GET", "POST", "PUT", "DELETE"):
        response = httpx.request(method, gateway.url + path, headers={"X-API-Key": api_key}, timeout=10)
        assert response.status_code in (404, 405), (method, path, response.status_code)
        assert "modelName" not in response.text and "InvalidKeyException" not in response.text


@pytest.mark.parametrize("target", ["http://127.0.0.1:{mport}/models", "http://localhost/models", "*"])
def test_absolute_form_and_odd_hosts_reach_nothing(gateway: Gateway, torchserve: TorchServe, target: str) -> None:
    target = target.format(mport=torchserve.management_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{torchserve.management_url[-5:]}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 404), reply[:200]
    assert b"modelName" not in reply


def test_overload_is_shed_with_503_not_queued(torchserve: TorchServe, api_key: str, tmp_path: Path) -> None:
    """With every upstream slot busy, a request waits at most the queue timeout, then gets 503 + Retry-After."""
    import concurrent.futures

    env = gateway_env(torchserve, [key_hash(api_key)], max_connections="1", queue_timeout_s="0.05")
    with Gateway(tmp_path / "gw.log", env) as narrow:
        big = jpeg(1600, 1200)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: post(narrow, api_key, content=big, headers=JPEG), range(6)))
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 503 in codes, codes
        assert set(codes) <= {200, 503}
        shed = next(r for r in responses if r.status_code == 503)
        assert_problem(shed, 503, "model-unavailable")
        assert "capacity" in shed.json()["detail"] and shed.headers["retry-after"]
