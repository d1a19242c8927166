"""Helpers of the suites that run the images for real (test_container_stack.py, test_fleet.py): whether
Docker answers, `docker`, and one compose project of the committed docker-compose.yml (`Stack`). The
images themselves are built once per session by conftest.py's `images` fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from gateway.keys import key_hash
from modelserver.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
SERVE_IMAGE = "image-classification-api-serve:test"
GATEWAY_IMAGE = "image-classification-api-gateway:test"
API_KEY = "ica_container-suite-key"
JPEG = {"Content-Type": "image/jpeg"}


def docker_problem() -> str | None:
    """Why the container suites cannot run here, or None."""
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30
        )
        version = subprocess.run(
            ["docker", "compose", "version", "--short"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no docker command that answers ({exc}); .ci/run installs one (docker/engine.sh)"
    if info.returncode != 0:
        return f"no Docker daemon answers ({info.stderr.strip()[:200]}); .ci/run starts one (docker/engine.sh)"
    if version.returncode != 0 or not version.stdout.strip().lstrip("v").startswith("2"):
        return "docker compose v2 is missing; docker/engine.sh installs Debian trixie's docker-compose"
    return None


def container_marks(*programs: str) -> list[pytest.MarkDecorator]:
    """The `pytestmark` of a container suite: skipped, saying why, where Docker (or one of `programs`) is
    missing; under CI (.ci/run starts a daemon and installs the programs; GitHub's runners have Docker)
    the suite fails instead of skipping quietly."""
    problem = docker_problem()
    for program in programs:
        if problem is None and shutil.which(program) is None:
            problem = f"{program} is not installed (.ci/run and ci.yml install it)"
    if problem is not None and os.environ.get("CI"):
        pytest.fail(f"the container suite cannot run in CI: {problem}", pytrace=False)
    return [
        pytest.mark.skipif(problem is not None, reason=str(problem)),
        # A cold build of the serve image takes longer than the suite's default 600 s (docs/docker.md,
        # "Building the images").
        pytest.mark.timeout(3600),
    ]


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


class Stack:
    """One compose project of the committed docker-compose.yml; settings only through its variables.

    `env` is also the environment deploy/rollout-instance.sh gets for this project: compose reads the
    project name and (no) env file from it, so a developer's .env next to the compose file changes nothing.
    """

    def __init__(self, serve_image: str, gateway_image: str, **variables: str) -> None:
        self.project = f"icatest{uuid.uuid4().hex[:10]}"
        self.gateway_port, self.management_port, self.metrics_port = free_port(), free_port(), free_port()
        keep = {"PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_API_VERSION"}
        self.env = {k: v for k, v in os.environ.items() if k in keep} | {
            "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE_ENV_FILES": os.devnull,
            "SERVE_IMAGE": serve_image,
            "GATEWAY_IMAGE": gateway_image,
            "GATEWAY_API_KEY_HASHES": key_hash(API_KEY),
            "GATEWAY_PORT": str(self.gateway_port),
            "TORCHSERVE_MANAGEMENT_PORT": str(self.management_port),
            "TORCHSERVE_METRICS_PORT": str(self.metrics_port),
            **variables,
        }
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        self.management_url = f"http://127.0.0.1:{self.management_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"

    def compose(self, *args: str, timeout: float = 360, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["docker", "compose", "-f", str(COMPOSE), *args]
        done = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            pytest.fail(f"docker compose {' '.join(args)}: {done.returncode}\n{done.stderr[-3000:]}\n{self.logs()}")
        return done

    def logs(self, tail: int = 60) -> str:
        cmd = ["docker", "compose", "-f", str(COMPOSE), "logs", "--no-color", "--tail", str(tail)]
        return subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60).stdout[-6000:]

    def up(self) -> float:
        """Seconds until both health checks pass."""
        started = time.monotonic()
        self.compose("up", "--detach", "--no-build", "--wait", "--wait-timeout", "300")
        return time.monotonic() - started

    def down(self) -> None:
        self.compose("down", "--volumes", "--timeout", "30", check=False)

    def left_over(self) -> str:
        """Containers of the project still there (none after `down`)."""
        return docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}").stdout.strip()

    def stopped_since(self, since: float) -> list[str]:
        """The project's services in the order their containers stopped since `since` (Docker's events)."""
        service = '{{index .Actor.Attributes "com.docker.compose.service"}}'
        filters = ["--filter", f"label=com.docker.compose.project={self.project}", "--filter", "event=die"]
        window = ["--since", str(int(since)), "--until", str(int(time.time()) + 1)]
        return docker("events", *window, *filters, "--format", service).stdout.split()

    def container(self, service: str) -> str:
        return self.compose("ps", "--quiet", service).stdout.strip()

    def inspect(self, service: str) -> dict:
        return json.loads(docker("inspect", self.container(service)).stdout)[0]

    def exec_probe(self, *command: str) -> str:
        """Runs python with these arguments inside the gateway container."""
        return self.compose("exec", "-T", "gateway", "python", *command, timeout=60).stdout

    def keys(self) -> dict[str, str]:
        """TorchServe's key file, read the way docs/operations.md does ("The management API of the containers")."""
        text = self.compose("exec", "-T", "torchserve", "cat", "/srv/torchserve/key_file.json").stdout
        return {name: entry["key"] for name, entry in json.loads(text).items()}

    def predict(self, image: bytes, timeout: float = 60, **params: str) -> httpx.Response:
        headers = {"X-API-Key": API_KEY, **JPEG}
        return httpx.post(f"{self.url}/v1/predict", content=image, headers=headers, params=params, timeout=timeout)


def build_images(weights: Path) -> tuple[str, str]:
    """Both images, built by `make images`' script with the state dict `weights` (WEIGHTS=PATH)."""
    env = {**os.environ, "WEIGHTS": str(weights), "SERVE_IMAGE": SERVE_IMAGE, "GATEWAY_IMAGE": GATEWAY_IMAGE}
    done = subprocess.run([str(ROOT / "docker" / "images.sh")], env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, f"docker/images.sh failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return SERVE_IMAGE, GATEWAY_IMAGE
