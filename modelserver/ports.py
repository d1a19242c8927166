"""Loopback ports and worker sockets: which are free, which another program holds, and the set one TorchServe binds.

The launcher checks them before it starts TorchServe (it never takes over a running instance's ports), and
benchmarks and tests take free ones so that several instances run side by side on one machine.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass, fields
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def worker_socket(port: int) -> Path:
    """Where a TorchServe worker listens: a Unix socket named after its port (it deletes what is there)."""
    return Path(f"/tmp/.ts.sock.{port}")  # noqa: S108 TorchServe's path


def free_worker_port(workers: int = 4) -> int:
    """A base for TorchServe's worker sockets that no other run uses."""
    while True:
        base = 20000 + secrets.randbelow(40000)
        if not any(worker_socket(base + i).exists() for i in range(workers)):
            return base


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether another program holds TCP `port` on `host` (binding it fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT is no owner
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def worker_socket_in_use(port: int) -> bool:
    """Whether a live worker listens on the socket for `port` (a file left by a dead one does not count)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(worker_socket(port)))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Ports:
    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071
    worker: int = 9000

    @classmethod
    def free(cls) -> Ports:
        """Free loopback ports, for an instance beside others (tests, benchmarks)."""
        return cls(free_port(), free_port(), free_port(), free_port(), free_port(), free_worker_port())

    def in_use(self, workers: int = 4) -> list[str]:
        """'<port> (<name>)' for each port another program holds: TCP on loopback, and the first `workers`
        worker sockets."""
        busy = [
            f"{getattr(self, f.name)} ({f.name.replace('_', ' ')})"
            for f in fields(self)
            if f.name != "worker" and port_in_use(getattr(self, f.name))
        ]
        busy += [
            f"{self.worker + i} (worker socket {worker_socket(self.worker + i)})"
            for i in range(workers)
            if worker_socket_in_use(self.worker + i)
        ]
        return busy

    def overrides(self, host: str = "127.0.0.1") -> dict[str, str]:
        return {
            "inference_address": f"http://{host}:{self.inference}",
            "management_address": f"http://{host}:{self.management}",
            "metrics_address": f"http://{host}:{self.metrics}",
            "grpc_inference_address": host,
            "grpc_inference_port": str(self.grpc_inference),
            "grpc_management_address": host,
            "grpc_management_port": str(self.grpc_management),
            "initial_worker_port": str(self.worker),
        }
