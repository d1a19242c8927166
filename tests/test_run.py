"""`make run`'s command: TorchServe + gateway together, ready, a working curl line, Ctrl-C stops both."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
from imagegen import jpeg
from support import PYTHON, free_port

from modelserver.torchserve import Ports


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_run_starts_both_and_ctrl_c_stops_both(model_store: Path, tmp_path: Path) -> None:
    ports = Ports.free()
    port_args = [arg for f in dataclasses.fields(ports)
                 for arg in (f"--{f.name.replace('_', '-')}-port", str(getattr(ports, f.name)))]  # fmt: skip
    gateway_port = free_port()
    env = {**os.environ, "API_KEY": "ica_run-test-key", "GATEWAY_PORT": str(gateway_port)}
    process = subprocess.Popen(
        [PYTHON, "-m", "modelserver", "run", "--model-store", str(model_store), "--workdir", str(tmp_path / "ts"),
         *port_args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("Ctrl-C stops both"):
                break
        text = "".join(output)
        assert f"ready at http://127.0.0.1:{gateway_port}" in text, text[-3000:]
        assert "API key: ica_run-test-key" in text
        assert "curl -H 'X-API-Key: ica_run-test-key' -F file=@cat.jpg" in text
        response = httpx.post(f"http://127.0.0.1:{gateway_port}/v1/predict", files={"file": ("cat.jpg", jpeg())},
                              headers={"X-API-Key": "ica_run-test-key"}, timeout=60)  # fmt: skip
        assert response.status_code == 200, response.text
        assert response.json()["model"]["untrained"] is True
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    assert not listening(gateway_port)
    assert not listening(ports.inference) and not listening(ports.management)
