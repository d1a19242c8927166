"""Helpers shared by the tests: free loopback ports and process checks."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from modelserver.torchserve import Ports, TorchServe

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_worker_port(workers: int = 4) -> int:
    """A base for TorchServe's worker sockets (/tmp/.ts.sock.<port>) that no other run uses."""
    while True:
        base = random.randrange(20000, 60000)
        if not any(Path(f"/tmp/.ts.sock.{base + i}").exists() for i in range(workers)):
            return base


def torchserve_ports() -> Ports:
    return Ports(
        inference=free_port(),
        management=free_port(),
        metrics=free_port(),
        grpc_inference=free_port(),
        grpc_management=free_port(),
        worker=free_worker_port(),
    )


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Gateway:
    """The real gateway (`python -m gateway`) in a subprocess on a free loopback port; logs kept in a file."""

    def __init__(self, log_file: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = log_file
        self.env = {**os.environ, **env, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(self.port)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Gateway:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "gateway"], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited:\n{self.log_file.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("gateway did not come up")

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def gateway_env(server: TorchServe, key_hashes: list[str], **overrides: str) -> dict[str, str]:
    env = {
        "GATEWAY_INFERENCE_URL": server.inference_url,
        "GATEWAY_MANAGEMENT_URL": server.management_url,
        "GATEWAY_KEY_FILE": str(server.key_file),
        "GATEWAY_API_KEY_HASHES": ",".join(key_hashes),
    }
    env.update({f"GATEWAY_{k.upper()}": v for k, v in overrides.items()})
    return env
