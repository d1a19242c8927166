"""The TorchServe worker killed (SIGKILL) mid-load, on a TorchServe of its own.

In-flight requests must fail fast with 502/503 or still succeed, never hang past the gateway's timeout;
new requests must succeed again once TorchServe has restarted the worker. The recovery time (kill → first
200 of a request sent after the kill) is printed and bounded.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from imagegen import jpeg
from support import Gateway, gateway_env, start_torchserve, worker_processes

from gateway.keys import key_hash
from modelserver.torchserve import TorchServe

GATEWAY_TIMEOUT_S = 15.0
MARGIN_S = 5.0
RECOVERY_BOUND_S = 60.0
CLIENTS = 6


@pytest.fixture(scope="module")
def own_torchserve(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    with start_torchserve(tmp_path_factory.mktemp("ts-worker-kill"), model_store) as server:
        yield server


@pytest.fixture(scope="module")
def own_gateway(own_torchserve: TorchServe, api_key: str, tmp_path_factory) -> Iterator[Gateway]:
    env = gateway_env(
        own_torchserve,
        [key_hash(api_key)],
        rate_limit_rps="10000",
        rate_limit_burst="10000",
        request_timeout_s=str(GATEWAY_TIMEOUT_S),
        readiness_cache_s="0.2",
    )
    with Gateway(tmp_path_factory.mktemp("gw-worker-kill") / "gw.log", env) as server:
        yield server


def predict(gateway: Gateway, api_key: str, body: bytes) -> tuple[float, float, str]:
    """(start, end, outcome): the status code, or the name of the client-side error."""
    started = time.monotonic()
    try:
        response = httpx.post(
            f"{gateway.url}/v1/predict",
            content=body,
            timeout=GATEWAY_TIMEOUT_S + MARGIN_S,
            headers={"X-API-Key": api_key, "Content-Type": "image/jpeg"},
        )
        outcome = str(response.status_code)
        if response.status_code in (503, 429) and "retry-after" not in response.headers:
            outcome += " without Retry-After"
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__
    return started, time.monotonic(), outcome


@pytest.mark.timeout(300)
def test_worker_killed_mid_load(own_gateway: Gateway, own_torchserve: TorchServe, api_key: str) -> None:
    assert own_torchserve.process is not None
    body = jpeg()
    assert predict(own_gateway, api_key, body)[2] == "200"
    (worker,) = worker_processes(own_torchserve)
    assert worker.pid != os.getpid() and psutil.Process(worker.pid).is_running()

    results: list[tuple[float, float, str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            results.append(predict(own_gateway, api_key, body))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(3.0)
    killed_at = time.monotonic()
    os.kill(worker.pid, signal.SIGKILL)

    recovered_at = None
    while time.monotonic() - killed_at < RECOVERY_BOUND_S + 30:
        time.sleep(0.25)
        done = [r for r in list(results) if r[0] > killed_at + 0.1 and r[2] == "200"]
        if done:
            recovered_at = min(r[1] for r in done)
            break
    time.sleep(2.0)  # a little more load after recovery
    stop.set()
    for thread in threads:
        thread.join(timeout=GATEWAY_TIMEOUT_S + MARGIN_S + 5)

    in_flight = [r for r in results if r[0] < killed_at < r[1]]
    after = [r for r in results if r[0] >= killed_at]
    outcomes = sorted({r[2] for r in results})
    recovery = None if recovered_at is None else recovered_at - killed_at
    print(
        f"\nworker {worker.pid} killed; in flight: {[r[2] for r in in_flight]}; outcomes: {outcomes}; "
        f"{len(results)} requests; recovery: {recovery if recovery is None else round(recovery, 2)} s"
    )

    assert recovery is not None and recovery < RECOVERY_BOUND_S, f"no 200 within {RECOVERY_BOUND_S} s of the kill"
    assert in_flight, "no request was in flight at the kill"
    # Every request got an HTTP answer (no reset, no hang) within the gateway's timeout, and only these.
    assert set(outcomes) <= {"200", "502", "503"}, outcomes
    assert max(end - start for start, end, _ in results) <= GATEWAY_TIMEOUT_S + MARGIN_S
    # The in-flight ones failed fast (or succeeded) rather than waiting for the timeout.
    assert all(end - killed_at < GATEWAY_TIMEOUT_S for _, end, _ in in_flight)
    assert any(r[2] == "200" for r in after)
    # TorchServe replaced the worker; the gateway is ready again.
    (new_worker,) = worker_processes(own_torchserve)
    assert new_worker.pid != worker.pid
    assert httpx.get(f"{own_gateway.url}/readyz", timeout=10).status_code == 200
