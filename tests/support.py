"""Helpers shared by the tests: free loopback ports and process checks."""

from __future__ import annotations

import os
import random
import socket
import sys
from pathlib import Path

from modelserver.torchserve import Ports

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
