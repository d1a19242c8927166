"""Helpers shared by the tests. The gateway and free ports come from the code `make run` uses too.

Test files import shared helpers from the helper modules only (this one, which imports no torch, so the fast
tier can use it; reference.py, testmodel.py, imagegen.py, containers.py; the fast tier's in_process.py and
fake_torchserve.py), never from each other or from conftest.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

import httpx
import psutil

from bench.processes import process_roles
from gateway.problems import PROBLEM_JSON, TYPE_BASE
from modelserver.gateway_process import GatewayProcess as Gateway
from modelserver.gateway_process import gateway_env
from modelserver.paths import REPO_ROOT
from modelserver.ports import Ports, free_port
from modelserver.process_groups import signal_group
from modelserver.torchserve import TorchServe

__all__ = [
    "API_KEY",
    "OTHER_KEY",
    "PYTHON",
    "Gateway",
    "assert_problem",
    "client_env",
    "imgcls",
    "imgcls_cmd",
    "jsonl",
    "metrics_url",
    "read_properties",
    "worker_processes",
    "summary",
    "free_port",
    "gateway_env",
    "group_alive",
    "post",
    "slowest_answer_during",
    "start_torchserve",
]

PYTHON = sys.executable
T = TypeVar("T")
API_KEY = "ica_test-key-for-the-suite"
OTHER_KEY = "ica_another-valid-key"


def group_alive(pgid: int) -> bool:
    return signal_group(pgid, 0)


def start_torchserve(
    workdir: Path, model_store: Path, extra_config: dict[str, str] | None = None
) -> AbstractContextManager[TorchServe]:
    """A READY TorchServe on free loopback ports for the block, stopped with all its processes after it."""
    return TorchServe(workdir, model_store, Ports.free(), extra_config).running(timeout=180)


def post(gateway: Gateway, api_key: str, path: str = "/v1/predict", **kwargs) -> httpx.Response:
    headers = {"X-API-Key": api_key, **kwargs.pop("headers", {})}
    return httpx.post(f"{gateway.url}{path}", headers=headers, timeout=60, **kwargs)


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["type"] == TYPE_BASE + slug
    assert body["status"] == status and body["title"] and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


# --- the batch client (imgcls) as a subprocess -------------------------------------------------------------

SUMMARY = re.compile(r"imgcls: (\d+) ok, (\d+) failed, (\d+) skipped, (\d+) retries in [\d.]+ s \([\d.]+ img/s\)")


def imgcls_cmd(*args: str, command: str = "classify") -> list[str]:
    return [PYTHON, "-m", "client.cli", command, *args]


def imgcls(
    url: str, api_key: str, *args: str, command: str = "classify", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`imgcls COMMAND ARGS` run to the end against `url`, from the repository root."""
    return subprocess.run(
        imgcls_cmd(*args, command=command),
        cwd=REPO_ROOT,
        env=client_env(url, api_key),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def client_env(url: str, api_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGCLS_")}
    return {**env, "IMGCLS_URL": url, "IMGCLS_API_KEY": api_key}


def summary(stderr: str) -> dict[str, int]:
    match = SUMMARY.search(stderr)
    assert match, stderr
    return dict(zip(("ok", "failed", "skipped", "retries"), map(int, match.groups()), strict=True))


def jsonl(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "the last record is cut"
    return [json.loads(line) for line in text.splitlines()]


def slowest_answer_during(url: str, action: Callable[[], T]) -> tuple[T, float]:
    """Run `action` in a thread while another client GETs `url` (200) in a loop: what `action` returned, and
    the seconds of the slowest of those answers (how long the server kept others waiting)."""
    results: list[T] = []
    worker = threading.Thread(target=lambda: results.append(action()))
    slowest = 0.0
    with httpx.Client(timeout=10) as client:
        worker.start()
        while worker.is_alive():
            started = time.monotonic()
            assert client.get(url).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
    worker.join()
    assert results, "the action raised"
    return results[0], slowest


class PeakRss:
    """The highest RSS of a process, sampled every few milliseconds in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


PROPERTIES_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)")
PROPERTIES_CONTROLS = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def unescape_properties(value: str) -> str:
    """What Java's Properties.load makes of a value: \\uHHHH, \\t \\n \\r \\f, and any other \\x as x."""

    def unescape(match: re.Match[str]) -> str:
        escaped = match[1]
        return chr(int(escaped[1:], 16)) if len(escaped) == 5 else PROPERTIES_CONTROLS.get(escaped, escaped)

    return PROPERTIES_ESCAPE.sub(unescape, value)


def read_properties(text: str) -> dict[str, str]:
    """The key=value pairs of a .properties text, values unescaped as TorchServe (Java) reads them."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): unescape_properties(value.strip()) for key, value in pairs}


def metrics_url(server: TorchServe) -> str:
    """TorchServe's metrics API (loopback only; the gateway never calls or proxies it)."""
    return f"http://127.0.0.1:{server.ports.metrics}"


def worker_processes(server: TorchServe) -> list[psutil.Process]:
    """The Python worker processes of a running TorchServe."""
    return process_roles(server.pid)["worker"]
