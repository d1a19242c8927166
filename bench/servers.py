"""Start and stop what the benchmark measures: TorchServe (ours or the stock peer), the gateway, stubs."""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager
from pathlib import Path

from bench.inputs import BENCH_KEY
from gateway.keys import key_hash
from modelserver.gateway_process import GatewayProcess, HttpProcess, Upstream, gateway_env
from modelserver.ports import Ports
from modelserver.torchserve import TorchServe

QUIET = Path(os.devnull)  # the servers' logs are not part of the results


def torchserve(model_store: Path, workdir: Path) -> AbstractContextManager[TorchServe]:
    """On free loopback ports: benchmarks and tests of other checkouts may run beside it."""
    return TorchServe(workdir, model_store, Ports.free()).running(240)


def gateway(upstream: TorchServe | Upstream, port: int | None = None) -> GatewayProcess:
    """The gateway in front of `upstream` (on `port`, a free one by default), rate limits out of the way; ready
    once TorchServe is (/readyz)."""
    env = gateway_env(
        upstream, [key_hash(BENCH_KEY)], rate_limit_rps="1000000", rate_limit_burst="1000000", log_level="WARNING"
    )
    return GatewayProcess(QUIET, env, port, "/readyz", ready_timeout=60)


def uvicorn_app(app: str, port: int) -> HttpProcess:
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return HttpProcess(args, port, QUIET, ready_timeout=60)


def torchserve_stub(port: int) -> HttpProcess:
    return HttpProcess([sys.executable, "-m", "bench.stubs", str(port)], port, QUIET, ready_timeout=60)
