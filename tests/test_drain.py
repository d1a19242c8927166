"""Draining (gateway/drain.py) and single-flight readiness: a real gateway process in front of the real
TorchServe, driven by the signals an operator, Docker or systemd sends (SIGUSR1, SIGTERM)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support import API_KEY, Gateway, gateway_env

from gateway.auth import key_hash
from modelserver.torchserve import TorchServe

KEYED = {"X-API-Key": API_KEY}
STOP_BOUND_S = 5.0  # loose: the gateway stops within 0.1-0.3 s of the drain's end on an idle machine
READINESS_CALL = '"GET /models/resnet50 HTTP/1.1"'  # gateway/upstream.py readiness() in TorchServe's access log


@contextmanager
def gateway_process(torchserve: TorchServe, tmp_path: Path, **settings: str) -> Iterator[Gateway]:
    env = gateway_env(torchserve, [key_hash(API_KEY)], **settings)
    with Gateway(tmp_path / "gateway.log", env) as server:
        yield server


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
