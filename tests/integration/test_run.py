"""The launcher's lifecycle: `python -m modelserver run` (`make run`: TorchServe + gateway, ready, a working curl
line) and `serve` (TorchServe alone) stop everything they started on Ctrl-C, SIGTERM and even SIGKILL; ports
held by another program or a running instance are refused before anything is touched."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import psutil
import pytest
from imagegen import jpeg
from support import PYTHON, free_port, start_torchserve

from modelserver.ports import Ports, free_worker_port, worker_socket
from modelserver.torchserve import TorchServe, ready_workers

RUN_KEY = "ica_run-test-key"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def port_args(ports: Ports) -> list[str]:
    return [
        arg
        for f in dataclasses.fields(ports)
        for arg in (f"--{f.name.replace('_', '-')}-port", str(getattr(ports, f.name)))
    ]


def launch(command: str, model_store: Path, workdir: Path, ports: Ports, gateway_port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "API_KEY": RUN_KEY, "GATEWAY_PORT": str(gateway_port)}
    return subprocess.Popen(
        [
            PYTHON,
            "-m",
            "modelserver",
            command,
            "--model-store",
            str(model_store),
            "--workdir",
            str(workdir),
            *port_args(ports),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(process: subprocess.Popen[str], marker: str, timeout: float = 240) -> str:
    """The launcher's output up to the line starting with `marker` (or its end)."""
    assert process.stdout is not None
    output = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        if line.startswith(marker):
            break
    return "".join(output)


def descendants(process: subprocess.Popen[str]) -> list[psutil.Process]:
    """Every process the launcher started, and theirs (TorchServe's Java frontend and workers, uvicorn, ...)."""
    return psutil.Process(process.pid).children(recursive=True)


def still_running(processes: list[psutil.Process], timeout: float = 60) -> list[str]:
    """Those of `processes` alive after waiting up to `timeout` for them to end (a zombie has ended)."""

    def alive() -> list[psutil.Process]:
        running = []
        for proc in processes:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    running.append(proc)
            except psutil.NoSuchProcess:
                pass
        return running

    deadline = time.monotonic() + timeout
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [f"{proc.pid} {' '.join(proc.cmdline())[:120]}" for proc in left]


@pytest.fixture
def cleanup() -> Iterator[list[psutil.Process]]:
    """Processes to kill after the test, should it fail before they ended (the launcher, then the rest)."""
    processes: list[psutil.Process] = []
    yield processes
    for proc in processes:
        with suppress(psutil.NoSuchProcess):
            proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_run_serves_and_everything_ends_with_it(
    model_store: Path, tmp_path: Path, sig: signal.Signals, cleanup: list[psutil.Process]
) -> None:
    """Ctrl-C and SIGTERM stop both servers; after SIGKILL of the launcher its watchdog stops them."""
    ports, gateway_port = Ports.free(), free_port()
    process = launch("run", model_store, tmp_path / "ts", ports, gateway_port)
    cleanup.append(psutil.Process(process.pid))
    try:
        text = read_until(process, "Ctrl-C stops both")
        cleanup.extend(descendants(process))
        assert f"ready at http://127.0.0.1:{gateway_port}" in text, text[-3000:]
        assert f"API key: {RUN_KEY}" in text
        assert f"curl -H 'X-API-Key: {RUN_KEY}' -F file=@cat.jpg" in text
        response = httpx.post(
            f"http://127.0.0.1:{gateway_port}/v1/predict",
            files={"file": ("cat.jpg", jpeg())},
            headers={"X-API-Key": RUN_KEY},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"]["untrained"] is True
        started = descendants(process)
        names = " ".join(" ".join(proc.cmdline()) for proc in started)
        assert "org.pytorch.serve.ModelServer" in names and "model_service_worker" in names and "gateway" in names
    finally:
        process.send_signal(sig)
        code = process.wait(timeout=60)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    assert still_running(started) == []
    assert not any(listening(port) for port in (gateway_port, ports.inference, ports.management, ports.metrics))


def test_serve_runs_torchserve_until_sigterm(model_store: Path, tmp_path: Path, cleanup: list[psutil.Process]) -> None:
    ports = Ports.free()
    workdir = tmp_path / "ts"
    process = launch("serve", model_store, workdir, ports, free_port())
    cleanup.append(psutil.Process(process.pid))
    try:
        text = read_until(process, "TorchServe ready")
        cleanup.extend(descendants(process))
        assert f"inference http://127.0.0.1:{ports.inference}" in text, text[-3000:]
        server = TorchServe(workdir, model_store, ports)
        response = httpx.post(
            f"{server.inference_url}/predictions/resnet50",
            content=jpeg(),
            timeout=60,
            headers={"Authorization": f"Bearer {server.keys()['inference']}"},
        )
        assert response.status_code == 200, response.text
        started = descendants(process)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0
    assert still_running(started) == []
    assert not any(listening(port) for port in (ports.inference, ports.management, ports.metrics))


def occupy(kind: str, ports: Ports) -> tuple[socket.socket, int]:
    """A socket another program would hold: listening on the port named `kind`; (socket, port)."""
    if kind == "worker":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(worker_socket(ports.worker)))
        sock.listen()
        return sock, ports.worker
    port = free_port() if kind == "gateway" else getattr(ports, kind)
    sock = socket.create_server(("127.0.0.1", port))
    return sock, port


@pytest.mark.parametrize("kind", ["inference", "metrics", "grpc_management", "worker", "gateway"])
def test_run_refuses_a_port_another_program_holds(model_store: Path, tmp_path: Path, kind: str) -> None:
    """Refused before anything starts, with a message naming the port (TorchServe would not even be ready)."""
    ports = dataclasses.replace(Ports.free(), worker=free_worker_port())
    sock, port = occupy(kind, ports)
    workdir = tmp_path / "ts"
    try:
        gateway_port = port if kind == "gateway" else free_port()
        result = subprocess.run(
            [
                PYTHON,
                "-m",
                "modelserver",
                "run",
                "--model-store",
                str(model_store),
                "--workdir",
                str(workdir),
                *port_args(ports),
            ],
            env={**os.environ, "GATEWAY_PORT": str(gateway_port)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        sock.close()
        if kind == "worker":
            worker_socket(ports.worker).unlink()
    assert result.returncode == 2, result.stdout + result.stderr
    name = kind.replace("_", " ")
    assert re.search(rf"error: port .*\b{port} \({name}", result.stderr), result.stderr
    assert "already in use by another program" in result.stderr
    assert not (workdir / "torchserve.out").exists(), "TorchServe was started"


def test_a_running_instance_is_left_alone_and_the_advice_stops_it(model_store: Path, tmp_path: Path) -> None:
    """A second `serve` (or `make run`) on the workdir of a running TorchServe (a launcher killed before
    this fix, or another terminal) fails at once without deleting its key file, and the command it
    advises really stops the running one."""
    workdir = tmp_path / "ts"
    with start_torchserve(workdir, model_store) as running:
        assert running.process is not None
        keys = running.key_file.read_text()
        result = subprocess.run(
            [
                PYTHON,
                "-m",
                "modelserver",
                "serve",
                "--model-store",
                str(model_store),
                "--workdir",
                str(workdir),
                *port_args(running.ports),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "is still running (pid" in result.stderr, result.stderr
        assert running.key_file.read_text() == keys
        assert ready_workers(running.management_url, running.key_file) >= 1
        advice = result.stderr.splitlines()[-1].strip()
        assert advice == running.stop_command
        started = psutil.Process(running.process.pid).children(recursive=True)
        subprocess.run(advice, shell=True, check=True, timeout=60, capture_output=True)
        running.process.wait(timeout=60)
        assert still_running(started) == [], "the advised command left TorchServe processes running"
        assert not any(listening(port) for port in (running.ports.inference, running.ports.management))
