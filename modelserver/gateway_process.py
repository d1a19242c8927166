"""The gateway as a child process (`python -m gateway`): pointed at a TorchServe, started on a loopback
port, waited for until it answers, stopped with its whole process group. `make run`, the benchmark, the
soak and the tests all start it this way (the benchmark its stubs too, as `HttpProcess`es).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

from modelserver.ports import free_port
from modelserver.process_groups import stop_groups
from modelserver.torchserve import TorchServe


class ServerProcessError(RuntimeError):
    """A server exited during start-up or did not answer in time."""


@dataclass(frozen=True)
class Upstream:
    """What the gateway needs of a TorchServe, for a stand-in that is not one (a stub)."""

    inference_url: str
    management_url: str
    key_file: Path


def gateway_env(upstream: TorchServe | Upstream, key_hashes: list[str], **settings: str) -> dict[str, str]:
    """The GATEWAY_* variables that point a gateway at `upstream`; `settings` become GATEWAY_<NAME>."""
    env = {
        "GATEWAY_INFERENCE_URL": upstream.inference_url,
        "GATEWAY_MANAGEMENT_URL": upstream.management_url,
        "GATEWAY_KEY_FILE": str(upstream.key_file),
        "GATEWAY_API_KEY_HASHES": ",".join(key_hashes),
    }
    env.update({f"GATEWAY_{name.upper()}": value for name, value in settings.items()})
    return env


class HttpProcess:
    """A local HTTP server in a child process with a process group of its own. `log_file` None: its output
    goes to this process's stdout/stderr. Ready when `ready_path` on `port` answers 200 within
    `ready_timeout`."""

    def __init__(
        self,
        args: list[str],
        port: int,
        log_file: Path | None = None,
        env: dict[str, str] | None = None,
        ready_path: str = "/healthz",
        ready_timeout: float = 30.0,
    ) -> None:
        self.args = args
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_file = log_file
        self.env = {**os.environ, **(env or {})}
        self.ready_path = ready_path
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's pid, the id of its process group (started servers only)."""
        if self.process is None:
            raise ServerProcessError(f"the server for {self.url} is not started")
        return self.process.pid

    def start(self) -> None:
        """Start the process; `wait_ready` blocks until it answers."""
        if self.log_file is None:
            self.process = subprocess.Popen(self.args, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True)
            return
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerProcessError(f"the server for {self.url} exited during start-up{self._log_tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ServerProcessError(f"{self.url} did not answer {self.ready_path} in {self.ready_timeout:g} s")

    def stop(self) -> None:
        """TERM to the whole process group, wait for every process in it, KILL what is left after 15 s."""
        if self.process is None:
            return
        stop_groups([self.process.pid], 15.0, [self.process])
        self.process = None

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file else ""

    def _log_tail(self) -> str:
        return f":\n{self.logs()[-3000:]}" if self.log_file else ""

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GatewayProcess(HttpProcess):
    """`python -m gateway` on `port` (a free one by default) with the GATEWAY_* variables in `env`."""

    def __init__(
        self,
        log_file: Path | None,
        env: dict[str, str],
        port: int | None = None,
        ready_path: str = "/healthz",
        ready_timeout: float = 30.0,
    ) -> None:
        port = port or free_port()
        env = {**env, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port)}
        super().__init__([sys.executable, "-m", "gateway"], port, log_file, env, ready_path, ready_timeout)
