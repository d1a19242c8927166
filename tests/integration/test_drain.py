"""Draining (gateway/drain.py) and single-flight readiness: a real gateway process in front of the real
TorchServe, driven by the signals an operator, Docker or systemd sends (SIGUSR1, SIGTERM)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from support import API_KEY, Gateway, assert_problem, gateway_env
from testmodel import photo

from gateway.keys import key_hash
from modelserver.torchserve import TorchServe

KEYED = {"X-API-Key": API_KEY}
STOP_BOUND_S = 5.0  # loose: measured under load, the gateway exits 0.3-0.7 s after the drain ends
READINESS_CALL = '"GET /models/resnet50 HTTP/1.1"'  # gateway/upstream.py readiness() in TorchServe's access log


@contextmanager
def gateway_process(torchserve: TorchServe, tmp_path: Path, **settings: str) -> Iterator[Gateway]:
    env = gateway_env(torchserve, [key_hash(API_KEY)], **settings)
    with Gateway(tmp_path / "gateway.log", env) as server:
        yield server


def signal_gateway(gateway: Gateway, sig: signal.Signals) -> float:
    """Send `sig` to the gateway; the time just before."""
    assert gateway.process is not None
    sent = time.monotonic()
    os.kill(gateway.process.pid, sig)
    return sent


def predict(client: httpx.Client, gateway: Gateway) -> httpx.Response:
    headers = {**KEYED, "Content-Type": "image/jpeg"}
    return client.post(f"{gateway.url}/v1/predict", content=photo("chelsea"), headers=headers, timeout=60)


def assert_classified(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == "tabby"  # the test model sees its input


def assert_draining(client: httpx.Client, gateway: Gateway) -> None:
    """Readiness says `draining`, every other route answers, and every answer closes its connection."""
    ready = client.get(f"{gateway.url}/readyz")
    assert_problem(ready, 503, "draining")
    v2_ready = client.get(f"{gateway.url}/v2/health/ready")
    assert v2_ready.status_code == 503 and "draining" in v2_ready.json()["error"], v2_ready.text
    classified = predict(client, gateway)
    assert_classified(classified)
    others = [
        client.get(f"{gateway.url}/healthz"),
        client.get(f"{gateway.url}/v2/models/resnet50/ready", headers=KEYED),  # the model still serves
        client.post(f"{gateway.url}/v1/predict", content=b"x"),
    ]
    assert [a.status_code for a in others] == [200, 200, 401]
    answers = [ready, v2_ready, classified, *others]
    assert [a.headers.get("connection") for a in answers] == ["close"] * len(answers)


def assert_serving(client: httpx.Client, gateway: Gateway) -> None:
    """Not draining: ready, and connections are kept."""
    ready = client.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200, ready.text
    assert client.get(f"{gateway.url}/v2/health/ready").status_code == 200
    assert "connection" not in ready.headers


def wait_exit(gateway: Gateway, timeout: float) -> tuple[int, float]:
    """The gateway's exit status and when it exited (within 0.05 s)."""
    assert gateway.process is not None
    deadline = time.monotonic() + timeout
    while gateway.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    code = gateway.process.poll()
    assert code is not None, f"the gateway still runs {timeout:g} s later:\n{gateway.logs()[-2000:]}"
    return code, time.monotonic()


def test_sigusr1_drains_without_stopping(torchserve: TorchServe, tmp_path: Path) -> None:
    with gateway_process(torchserve, tmp_path, drain_s="1") as gateway, httpx.Client() as client:
        assert_serving(client, gateway)
        assert "gateway_draining 0.0" in client.get(f"{gateway.url}/metrics").text
        signal_gateway(gateway, signal.SIGUSR1)
        assert_draining(client, gateway)  # at once: the first request after the signal
        time.sleep(2)  # twice the drain: SIGUSR1 alone never stops it
        assert gateway.process is not None and gateway.process.poll() is None
        assert_draining(client, gateway)
        metrics = client.get(f"{gateway.url}/metrics").text
        assert 'gateway_images_total{outcome="failed"}' not in metrics  # a probe's 503 is not a failed image
        assert "gateway_draining 1.0" in metrics


def test_sigterm_drains_serves_then_stops(torchserve: TorchServe, tmp_path: Path) -> None:
    """Through the drain every request is served; then new connections are refused, the request still
    uploading when that happened is answered, and the gateway exits 0."""
    drain_s = 4.0
    with gateway_process(torchserve, tmp_path, drain_s=str(drain_s)) as gateway, httpx.Client() as client:
        assert_serving(client, gateway)
        uploading = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
        body = photo("chelsea")
        uploading.putrequest("POST", "/v1/predict")
        for name, value in {**KEYED, "Content-Type": "image/jpeg", "Content-Length": str(len(body))}.items():
            uploading.putheader(name, value)
        uploading.endheaders(body[:1000])  # in flight: its body is still coming

        sent = signal_gateway(gateway, signal.SIGTERM)
        assert_draining(client, gateway)
        served = 0
        while True:  # new connections until there are none: each one served
            try:
                with httpx.Client() as fresh:
                    response = predict(fresh, gateway)
            except httpx.TransportError:  # refused (or closed unanswered in the instant it stopped accepting)
                break
            assert_classified(response)
            served += 1
        stopped_accepting = time.monotonic()
        assert drain_s <= stopped_accepting - sent < drain_s + STOP_BOUND_S
        assert served > 0
        with socket.socket() as late:
            assert late.connect_ex(("127.0.0.1", gateway.port)) != 0, "still accepting after the drain"
        assert gateway.process is not None and gateway.process.poll() is None, "exited with a request in flight"

        uploading.send(body[1000:])
        answer = uploading.getresponse()
        assert answer.status == 200 and answer.getheader("connection") == "close"
        assert json.loads(answer.read())["predictions"][0]["label"] == "tabby"
        uploading.close()
        code, exited = wait_exit(gateway, STOP_BOUND_S)
    assert code == 0
    assert exited - sent < drain_s + 2 * STOP_BOUND_S


def test_sigterm_after_sigusr1_counts_the_drain_from_the_first(torchserve: TorchServe, tmp_path: Path) -> None:
    drain_s, before_term = 8.0, 6.0
    with gateway_process(torchserve, tmp_path, drain_s=str(drain_s)) as gateway, httpx.Client() as client:
        began = signal_gateway(gateway, signal.SIGUSR1)
        time.sleep(before_term)
        signal_gateway(gateway, signal.SIGTERM)
        assert_draining(client, gateway)
        code, exited = wait_exit(gateway, drain_s + STOP_BOUND_S)
    assert code == 0
    # counted from SIGTERM it would end at before_term + drain_s = 14 s
    assert drain_s <= exited - began < drain_s + STOP_BOUND_S


def test_by_default_sigterm_stops_at_once_with_status_0(torchserve: TorchServe, tmp_path: Path) -> None:
    """GATEWAY_DRAIN_S defaults to 0: `make run`, the tests and a laptop's `docker compose stop` stop as fast
    as before."""
    with gateway_process(torchserve, tmp_path) as gateway, httpx.Client() as client:
        assert_serving(client, gateway)
        sent = signal_gateway(gateway, signal.SIGTERM)
        code, exited = wait_exit(gateway, STOP_BOUND_S)
    assert code == 0
    assert exited - sent < STOP_BOUND_S


def readiness_calls(access_log: Path, after: int) -> int:
    return access_log.read_bytes()[after:].decode().count(READINESS_CALL)


def test_concurrent_readiness_probes_make_one_management_call(torchserve: TorchServe, tmp_path: Path) -> None:
    """The probes need no key: N of them at once with a stale cache must not become N calls to TorchServe's
    management API (counted in TorchServe's own access log)."""
    probes = 16
    log = torchserve.workdir / "logs" / "access_log.log"
    with gateway_process(torchserve, tmp_path, readiness_cache_s="60") as gateway:  # started on /healthz: stale
        mark = log.stat().st_size
        connections = [socket.create_connection(("127.0.0.1", gateway.port), timeout=30) for _ in range(probes)]
        for index, conn in enumerate(connections):  # all requests out before any answer comes back
            path = "/readyz" if index % 2 else "/v2/health/ready"
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        for conn in connections:
            with conn, conn.makefile("rb") as answer:
                assert answer.readline().startswith(b"HTTP/1.1 200"), answer.read()
        deadline = time.monotonic() + 10
        while readiness_calls(log, mark) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # the access log is written asynchronously: let any further line arrive
        assert readiness_calls(log, mark) == 1
