"""Saturation: ~100 s of 96 concurrent clients through a gateway of its own in front of the session's TorchServe.

Every request must be answered with 200, 429 or 503 (+ Retry-After) within the gateway's timeout: no other
status, no connection reset, no hang. The gateway must have counted exactly the requests the clients sent
(nothing lost silently) and answer normally afterwards. RSS of the gateway, TorchServe's frontend and its
worker is sampled throughout (bench.soak), printed, and checked for a gross leak.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from imagegen import jpeg
from support import Gateway, gateway_env

from bench.soak import RssSampler, growth, saturate
from gateway.keys import key_hash
from modelserver.torchserve import TorchServe

CONCURRENCY = 96
SECONDS = 100
GATEWAY_TIMEOUT_S = 25.0
MARGIN_S = 10.0
WARMUP_S = 30.0


@pytest.fixture(scope="module")
def saturated_gateway(
    torchserve: TorchServe, api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    env = gateway_env(
        torchserve,
        [key_hash(api_key)],
        rate_limit_rps="10000",
        rate_limit_burst="10000",
        request_timeout_s=str(GATEWAY_TIMEOUT_S),
    )
    with Gateway(tmp_path_factory.mktemp("gw-saturation") / "gw.log", env) as server:
        yield server


def predict_requests_counted(gateway: Gateway) -> int:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    pattern = r'^gateway_requests_total\{method="POST",route="/v1/predict",status="\d+"\} (\S+)$'
    return int(sum(float(m) for m in re.findall(pattern, text, re.MULTILINE)))


@pytest.mark.timeout(240)
def test_saturation_every_request_answered(
    saturated_gateway: Gateway, torchserve: TorchServe, api_key: str, tmp_path: Path
) -> None:
    bodies = [jpeg(320, 240, seed=s) for s in range(8)]
    before = predict_requests_counted(saturated_gateway)
    assert saturated_gateway.process is not None and torchserve.process is not None
    with RssSampler(saturated_gateway.process.pid, torchserve.process.pid, interval=2.0) as sampler:
        result = asyncio.run(
            saturate(saturated_gateway.url, api_key, bodies, CONCURRENCY, SECONDS, GATEWAY_TIMEOUT_S + MARGIN_S)
        )
    print(f"\nsaturation: {result}")
    growths = {role: growth(sampler.samples, role, WARMUP_S) for role in ("gateway", "frontend", "worker")}
    print(f"RSS growth after {WARMUP_S:g} s: {growths}")

    assert result.failures == {}, (result.failures, result.failure_examples)
    assert set(result.statuses) <= {"200", "429", "503"}, result.statuses
    assert result.statuses.get("200", 0) > 0
    assert result.max_latency_s <= GATEWAY_TIMEOUT_S + MARGIN_S
    # Nothing lost silently: the gateway answered (and counted) every request the clients sent.
    assert predict_requests_counted(saturated_gateway) - before == result.sent
    # The sampler saw all three kinds of process; no gross leak in the gateway.
    last = sampler.samples[-1]
    assert last["gateway"] > 0 and last["frontend"] > 0 and last["worker"] > 0, last
    assert growths["gateway"]["growth_pct"] < 25, growths

    # And afterwards it answers normally.
    assert httpx.get(f"{saturated_gateway.url}/healthz", timeout=5).status_code == 200
    headers = {"X-API-Key": api_key, "Content-Type": "image/jpeg"}
    response = httpx.post(f"{saturated_gateway.url}/v1/predict", content=jpeg(), headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert httpx.get(f"{saturated_gateway.url}/readyz", timeout=10).status_code == 200
