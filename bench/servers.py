"""Start and stop what the benchmark measures: TorchServe (ours or the stock peer), the gateway, stubs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from gateway.auth import key_hash
from modelserver.torchserve import Ports, TorchServe

BENCH_KEY = "ica_bench-key"


def ports(offset: int) -> Ports:
    base = 18100 + 10 * offset
    return Ports(base, base + 1, base + 2, base + 3, base + 4, 29100 + 10 * offset)


@contextmanager
def torchserve(model_store: Path, workdir: Path, offset: int) -> Iterator[TorchServe]:
    server = TorchServe(workdir, model_store, ports(offset))
    server.start()
    try:
        server.wait_ready(240)
        yield server
    finally:
        server.stop()


def wait_http(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


@contextmanager
def process(args: list[str], env: dict[str, str], ready_url: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(ready_url, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def gateway(inference_url: str, management_url: str, key_file: Path, port: int):
    env = {
        "GATEWAY_PORT": str(port),
        "GATEWAY_INFERENCE_URL": inference_url,
        "GATEWAY_MANAGEMENT_URL": management_url,
        "GATEWAY_KEY_FILE": str(key_file),
        "GATEWAY_API_KEY_HASHES": key_hash(BENCH_KEY),
        "GATEWAY_RATE_LIMIT_RPS": "1000000",
        "GATEWAY_RATE_LIMIT_BURST": "1000000",
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    return process([sys.executable, "-m", "gateway"], env, f"http://127.0.0.1:{port}/readyz")


def uvicorn_app(app: str, port: int, ready_path: str):
    args = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
            "--log-level", "warning"]  # fmt: skip
    return process(args, {}, f"http://127.0.0.1:{port}{ready_path}")


def torchserve_stub(port: int):
    return process([sys.executable, "-m", "bench.stubs", str(port)], {}, f"http://127.0.0.1:{port}/healthz")
