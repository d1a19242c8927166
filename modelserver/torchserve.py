"""Run TorchServe: render its config, start it from a scratch directory, wait for READY workers, stop it.

TorchServe writes `logs/` and `key_file.json` into its working directory, so every run gets its own.
Readiness is judged from the management API's model description (at least one worker READY), not from
`/ping`, which reports healthy while workers are still starting or crash-looping.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from contract.torchserve_tokens import KEY_FILE, MAX_RECOVERIES, bearer, is_invalid_token, read_tokens, recovery
from contract.wire import MODEL_NAME
from modelserver.paths import BASE_CONFIG
from modelserver.ports import Ports
from modelserver.process_groups import stop_groups

PID_FILE = ".model_server.pid"  # TorchServe's launcher writes the frontend's pid there, in $TMPDIR
FRONTEND_CLASS = b"org.pytorch.serve.ModelServer"
BIN_DIR = Path(sys.executable).parent


class TorchServeError(Exception):
    """TorchServe did not start, died, or did not become ready in time."""


def command(config: Path, model_store: Path) -> list[str]:
    """The one TorchServe start command, used by `make run`, the tests and Dockerfile.serve."""
    return ["torchserve", "--foreground", "--ncs", "--ts-config", str(config), "--model-store", str(model_store)]


def regex_literal(text: str) -> str:
    """A regex matching exactly `text`, in the syntax Java and Python share: [A-Za-z0-9/_-] as they are, every
    other character as \\xHH or \\uHHHH (Java's \\x{...} beyond the BMP), so no character is special."""

    def escape(char: str) -> str:
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\x{{{code:x}}}"

    return "".join(c if c.isascii() and (c.isalnum() or c in "/_-") else escape(c) for c in text)


def allowed_urls(model_store: Path) -> str:
    """TorchServe's `allowed_urls` for a run: archives directly in `model_store` (an absolute path), nowhere
    else. Case-sensitive, though TorchServe matches with CASE_INSENSITIVE: /srv/Store is another directory."""
    return f"(?-i:file://{regex_literal(str(model_store))}/[A-Za-z0-9_-]+[.]mar)"


def properties_value(value: str) -> str:
    """`value` escaped for a .properties file, which Java reads as ISO 8859-1 with backslash escapes."""
    return "".join("\\\\" if c == "\\" else c if " " <= c <= "~" else f"\\u{ord(c):04x}" for c in value)


def render_config(base: str, overrides: dict[str, str]) -> str:
    """`base` (a .properties text) with the values of `overrides` replaced or appended (escaped)."""
    remaining = dict(overrides)
    lines = []
    for line in base.splitlines():
        key = line.split("=", 1)[0].strip()
        if not line.lstrip().startswith("#") and "=" in line and key in remaining:
            line = f"{key}={properties_value(remaining.pop(key))}"
        lines.append(line)
    lines.extend(f"{key}={properties_value(value)}" for key, value in remaining.items())
    return "\n".join(lines) + "\n"


def describe(management_url: str, key_file: Path, timeout: float = 2.0) -> httpx.Response:
    """The management API's description of the model; a refused management key is replaced as
    contract/torchserve_tokens.py decides (a newer one from the file, or renewed with the API key)."""
    url = f"{management_url}/models/{MODEL_NAME}"
    key = read_tokens(key_file).get("management")
    response = httpx.get(url, headers=bearer(key), timeout=timeout)
    for _ in range(MAX_RECOVERIES):
        if not is_invalid_token(response.status_code, response.content):
            break
        step = recovery("management", key, read_tokens(key_file), management_url)
        if (renewal := step.renewal) is not None:
            httpx.post(renewal.url, params=renewal.params, headers=renewal.headers, timeout=timeout).raise_for_status()
            key = read_tokens(key_file).get("management")
        else:
            key = step.key
        if key is None:
            break
        response = httpx.get(url, headers=bearer(key), timeout=timeout)
    return response


def ready_workers(management_url: str, key_file: Path, timeout: float = 2.0) -> int:
    """How many workers of the model are READY, per the management API (0 on any failure)."""
    try:
        response = describe(management_url, key_file, timeout)
        response.raise_for_status()
        workers = response.json()[0].get("workers", [])
    except (httpx.HTTPError, OSError, ValueError, KeyError, IndexError):
        return 0
    return sum(1 for worker in workers if worker.get("status") == "READY")


class TorchServe:
    """One TorchServe process tree, started from `workdir` with `ports` bound on loopback."""

    def __init__(self, workdir: Path, model_store: Path, ports: Ports, extra_config: dict[str, str] | None = None):
        self.workdir = workdir
        self.model_store = model_store
        self.ports = ports
        self.extra_config = extra_config or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def predictions_url(self) -> str:
        return f"{self.inference_url}/predictions/{MODEL_NAME}"

    @property
    def pid(self) -> int:
        """The frontend's pid, the id of the process group of all its processes (started instances only)."""
        if self.process is None:
            raise TorchServeError("TorchServe is not started")
        return self.process.pid

    @property
    def key_file(self) -> Path:
        return self.workdir / KEY_FILE

    @property
    def log_file(self) -> Path:
        return self.workdir / "torchserve.out"

    @property
    def tmp_dir(self) -> Path:
        """TorchServe's TMPDIR. Its launcher keeps a pid file there and refuses to start while another
        instance's process is alive: a private TMPDIR lets several instances (tests, ops) run side by side."""
        return self.workdir / "tmp"

    @property
    def stop_command(self) -> str:
        """The shell command that stops an instance started from this workdir (TorchServe's own --stop,
        pointed at the private TMPDIR where its pid file is)."""
        return f"TMPDIR={shlex.quote(str(self.tmp_dir))} {shlex.quote(str(BIN_DIR / 'torchserve'))} --stop"

    def keys(self) -> dict[str, str]:
        return read_tokens(self.key_file)

    def inference_headers(self) -> dict[str, str]:
        """The Authorization header of a prediction sent to this instance directly (not through the gateway)."""
        return bearer(self.keys()["inference"])

    def running_pid(self) -> int | None:
        """The pid of a TorchServe frontend started from this workdir that is still alive, if any."""
        try:
            pid = int((self.tmp_dir / PID_FILE).read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        return pid if FRONTEND_CLASS in cmdline else None

    def refuse_conflicts(self) -> None:
        """Raise TorchServeError, before anything is touched, if an instance from this workdir still runs or
        another program holds one of the ports."""
        if (pid := self.running_pid()) is not None:
            raise TorchServeError(
                f"TorchServe started from {self.workdir} earlier is still running (pid {pid}); "
                f"stop it with:\n  {self.stop_command}"
            )
        if busy := self.ports.in_use():
            raise TorchServeError(
                f"port {', '.join(busy)} already in use by another program; stop it, or choose "
                "other ports (--inference-port, --management-port, ... --worker-port)"
            )

    def start(self) -> None:
        self.refuse_conflicts()  # never take over the key file, ports or worker sockets of a running instance
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.properties"
        store = self.model_store.resolve()
        overrides = {**self.ports.overrides(), "allowed_urls": allowed_urls(store)}
        config.write_text(render_config(BASE_CONFIG.read_text(), {**overrides, **self.extra_config}))
        self.key_file.unlink(missing_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
            "TMPDIR": str(self.tmp_dir),
        }
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                command(config, store),
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() takes Java and workers too
            )

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Block until a worker is READY twice in a row; return the seconds waited."""
        started = time.monotonic()
        streak = 0
        while time.monotonic() - started < timeout:
            if self.process is None or self.process.poll() is not None:
                raise TorchServeError(f"TorchServe exited before it was ready:\n{self.log_tail()}")
            if self.key_file.exists():
                streak = streak + 1 if ready_workers(self.management_url, self.key_file) else 0
                if streak >= 2:
                    return time.monotonic() - started
            time.sleep(0.25)
        raise TorchServeError(f"no READY worker after {timeout:.0f}s:\n{self.log_tail()}")

    @contextmanager
    def running(self, timeout: float = 120.0) -> Iterator[TorchServe]:
        """Started and READY for the block; stopped with all its processes after it (or if never ready)."""
        self.start()
        try:
            self.wait_ready(timeout)
            yield self
        finally:
            self.stop()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the whole process group: TERM, wait for every process in it, then KILL what is left."""
        if self.process is None:
            return
        stop_groups([self.process.pid], timeout, [self.process])
        self.process = None
