"""A fleet as an operator runs it: two compose projects of the committed docker-compose.yml behind a real
HAProxy in TCP mode that checks `GET /readyz` the way the NLB does, scaled down (every 2 s, 3 failures
out, 2 successes in). Closed-loop clients go through it, some with a new connection per request, some
with keep-alive, while:

- both instances are rolled, one after the other, to a new tag (a `docker tag` of the built images, never
  a rebuild) by deploy/rollout-instance.sh's generic path: every request gets a 200;
- an instance is rolled to a gateway image that never gets ready: the script rolls it back and exits
  non-zero, and still every request gets a 200;
- one instance is killed abruptly (`docker kill` of both containers) under an `imgcls` run: no image is
  lost, and the balancer takes the instance out.

Runs with the container suite whenever Docker answers (tests/containers.py); needs Debian's haproxy
(`.ci/run` and ci.yml install it). The two TorchServes get one CPU each (TORCHSERVE_CPUS=1).
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from containers import API_KEY, JPEG, ROOT, Stack, container_marks, docker
from imagegen import jpeg
from support import client_env, free_port, imgcls_cmd, jsonl, summary

from gateway.keys import key_hash

pytestmark = container_marks("haproxy")

ROLLOUT = ROOT / "deploy" / "rollout-instance.sh"
NEW_TAG = "rollout-new"
# The NLB's check (every 15 s, 3 failures out, 2 successes in) scaled down; the script's waits likewise:
# out after at most 3 failed checks (6 s) plus a margin, in after 2 good ones (4 s) plus a margin.
CHECK = "inter 2s fall 3 rise 2"
LB_DRAIN_S, LB_RISE_S = 8, 12
# One key per client thread: the per-key rate limit (20 requests/s) never answers 429 to the test's load.
CLIENT_KEYS = [f"ica_fleet-client-{i}" for i in range(4)]
DRAIN_S = "from gateway.settings import get_settings; print(get_settings().drain_s)"
TIMEOUT_S = 60  # per request: well above the gateway's own 25 s upstream timeout


class HAProxy:
    """Debian's haproxy on a free loopback port in TCP mode, config and stats socket in a temporary folder."""

    def __init__(self, folder: Path, servers: dict[str, int]) -> None:
        self.port = free_port()
        self.socket = folder / "haproxy.sock"
        backends = "".join(f"  server {name} 127.0.0.1:{port} check\n" for name, port in servers.items())
        self.config = folder / "haproxy.cfg"
        self.config.write_text(
            f"global\n  stats socket {self.socket} mode 600 level admin\n  log stdout format raw local0\n"
            "defaults\n  mode tcp\n  log global\n  option tcplog\n"
            "  timeout connect 5s\n  timeout client 90s\n  timeout server 90s\n"
            f"frontend fleet\n  bind 127.0.0.1:{self.port}\n  default_backend gateways\n"
            "backend gateways\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n"
            f"  default-server {CHECK}\n{backends}"
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "haproxy.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(["haproxy", "-db", "-f", str(self.config)], stdout=log, stderr=log)
        for _ in range(100):
            if self.socket.exists() or self.process.poll() is not None:
                break
            time.sleep(0.1)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(str(self.socket))
            conn.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Each server's status (UP, DOWN, or a transition such as "UP 1/3") per `show stat`."""
        rows = csv.DictReader(self.command("show stat").lstrip("# ").splitlines())
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "gateways"}

    def wait_for(self, server: str, status: str, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                pytest.fail(f"haproxy exited: {self.log.read_text()[-2000:]}")
            if self.states().get(server) == status:
                return time.monotonic() - started
            time.sleep(0.2)
        pytest.fail(f"haproxy: {server} not {status} within {timeout} s: {self.states()}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


class Fleet:
    def __init__(self, stacks: dict[str, Stack], balancer: HAProxy) -> None:
        self.stacks, self.balancer = stacks, balancer

    def all_up(self, timeout: float = 120) -> None:
        for name in self.stacks:
            self.balancer.wait_for(name, "UP", timeout)


@pytest.fixture(scope="module")
def fleet(images: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    keys = ",".join(key_hash(key) for key in [API_KEY, *CLIENT_KEYS])
    variables = {"TORCHSERVE_CPUS": "1", "GATEWAY_DRAIN_S": str(LB_DRAIN_S), "GATEWAY_API_KEY_HASHES": keys}
    stacks = {name: Stack(*images, **variables) for name in ("a", "b")}
    balancer = None
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            started = dict(zip(stacks, pool.map(Stack.up, stacks.values()), strict=True))
        print(f"both stacks healthy: {', '.join(f'{n} {s:.0f} s' for n, s in started.items())}")  # noqa: T201
        balancer = HAProxy(tmp_path_factory.mktemp("haproxy"), {n: s.gateway_port for n, s in stacks.items()})
        running = Fleet(stacks, balancer)
        running.all_up()
        yield running
    finally:
        if balancer is not None:
            balancer.stop()
        for stack in stacks.values():
            stack.down()
        for name in ("serve", "gateway"):
            docker("rmi", f"image-classification-api-{name}:{NEW_TAG}", check=False)
    assert not [s.project for s in stacks.values() if s.left_over()]


class Load:
    """Closed-loop clients through the balancer: half open a new connection per request, half keep one
    alive. Each answer is kept as (time it came, status or the transport error's name)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: list[tuple[float, str]] = []
        self.failures: list[tuple[float, float, bool, str]] = []  # started, ended, keep-alive, outcome
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.run, args=(key, i % 2 == 0), daemon=True) for i, key in enumerate(CLIENT_KEYS)
        ]

    def run(self, key: str, keep_alive: bool) -> None:
        headers = {"X-API-Key": key, **JPEG}
        image = jpeg(64, 64)
        with httpx.Client(timeout=TIMEOUT_S) as client:
            post: Callable[..., httpx.Response] = client.post if keep_alive else partial(httpx.post, timeout=TIMEOUT_S)
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    outcome = str(post(f"{self.url}/v1/predict", content=image, headers=headers).status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.outcomes.append((time.monotonic(), outcome))
                if outcome != "200":
                    self.failures.append((started, time.monotonic(), keep_alive, outcome))

    def explain(self, logs: list[str]) -> str:
        """The failures (seconds since the load began) next to the rollouts' logs, for an assertion."""
        failed = [
            f"{s - self.began:.1f}-{e - self.began:.1f} s {'keep-alive' if k else 'new'}: {o}"
            for s, e, k, o in self.failures
        ]
        counts = collections.Counter(o for _, o in self.outcomes)
        return f"{counts}\nload began {self.began_utc} UTC; failed: {failed}\n" + "\n".join(logs)

    def __enter__(self) -> Load:
        self.began, self.began_utc = time.monotonic(), time.strftime("%H:%M:%S", time.gmtime())
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)

    def between(self, start: float, end: float) -> collections.Counter[str]:
        return collections.Counter(o for t, o in self.outcomes if start <= t <= end)


def rollout(stack: Stack, serve_image: str, gateway_image: str, **variables: str) -> tuple[int, float, str]:
    """deploy/rollout-instance.sh for one instance: its exit status, seconds and log."""
    env = {
        **stack.env,
        "SERVE_IMAGE": serve_image,
        "GATEWAY_IMAGE": gateway_image,
        "LB_DRAIN_S": str(LB_DRAIN_S),
        "LB_RISE_S": str(LB_RISE_S),
        **variables,
    }
    started = time.monotonic()
    done = subprocess.run([str(ROLLOUT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, time.monotonic() - started, done.stdout + done.stderr


def served(stack: Stack) -> float:
    """/v1/predict answers the instance's current gateway gave (its own /metrics)."""
    metrics = httpx.get(f"{stack.url}/metrics", timeout=10).text
    return sum(
        float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith("gateway_requests_total{") and 'route="/v1/predict"' in line
    )


def test_rolling_update_of_both_instances_answers_every_request(fleet: Fleet, images: tuple[str, str]) -> None:
    new = [f"image-classification-api-{name}:{NEW_TAG}" for name in ("serve", "gateway")]
    for built, tag in zip(images, new, strict=True):
        docker("tag", built, tag)
    report, logs = [], []
    with Load(fleet.balancer.url) as load:
        time.sleep(3)
        for name, stack in fleet.stacks.items():
            start, since = time.monotonic(), time.time()
            code, seconds, log = rollout(stack, *new)
            assert code == 0, log[-4000:]
            report.append((name, seconds, load.between(start, time.monotonic())))
            logs.append(f"{name} from {start - load.began:.1f} s:\n{log}")
            assert [stack.inspect(s)["Config"]["Image"] for s in ("torchserve", "gateway")] == new, log[-2000:]
            assert stack.stopped_since(since) == ["gateway", "torchserve"], log[-2000:]
            assert stack.exec_probe("-c", DRAIN_S).strip() == f"{LB_DRAIN_S:.1f}", "GATEWAY_DRAIN_S not passed"
        fleet.all_up(timeout=30)
        after = {name: served(stack) for name, stack in fleet.stacks.items()}
        time.sleep(5)
    outcomes = collections.Counter(o for _, o in load.outcomes)
    for name, seconds, during in report:
        meanwhile = f"{sum(during.values())} requests answered meanwhile ({dict(during)})"
        print(f"rollout of instance {name}: {seconds:.1f} s, {meanwhile}")  # noqa: T201
    print(f"all requests: {dict(outcomes)}")  # noqa: T201
    assert outcomes["200"] > 0 and sum(n for o, n in outcomes.items() if o != "200") == 0, load.explain(logs)
    assert all(sum(during.values()) > 0 for _, _, during in report), report
    # both new gateways kept getting requests after the rollout (their counters started at 0)
    assert all(served(stack) > after[name] > 0 for name, stack in fleet.stacks.items()), after


def test_rollout_when_the_caller_takes_the_instance_out(fleet: Fleet, images: tuple[str, str]) -> None:
    """ROLLOUT_ROTATION=none, as deploy.yml runs it: the caller takes the instance out through the balancer's
    API (HAProxy's `drain` state: no new connections, the open ones stay, like an NLB deregistration) and
    puts it back after the script; the script's drain moves the keep-alive connections that stay open."""
    stack = fleet.stacks["b"]
    new = [f"image-classification-api-{name}:{NEW_TAG}" for name in ("serve", "gateway")]
    for built, tag in zip(images, new, strict=True):
        docker("tag", built, tag)
    target = list(images) if stack.inspect("gateway")["Config"]["Image"] == new[1] else new
    with Load(fleet.balancer.url) as load:
        time.sleep(3)
        fleet.balancer.command("set server gateways/b state drain")
        code, seconds, log = rollout(stack, *target, ROLLOUT_ROTATION="none")
        fleet.balancer.command("set server gateways/b state ready")
        fleet.balancer.wait_for("b", "UP", timeout=30)
        time.sleep(3)
    assert code == 0, log[-4000:]
    assert [stack.inspect(s)["Config"]["Image"] for s in ("torchserve", "gateway")] == target
    outcomes = collections.Counter(o for _, o in load.outcomes)
    print(f"rollout with ROLLOUT_ROTATION=none: {seconds:.1f} s; requests meanwhile: {dict(outcomes)}")  # noqa: T201
    assert outcomes["200"] > 0 and sum(n for o, n in outcomes.items() if o != "200") == 0, load.explain([log])


def test_new_images_that_never_get_ready_are_rolled_back(fleet: Fleet, tmp_path: Path) -> None:
    """A gateway image that asks TorchServe for a model it does not have: never ready. The script rolls the
    instance back to the image that ran before, puts it back and exits non-zero."""
    stack = fleet.stacks["a"]
    serve, gateway = (stack.inspect(s) for s in ("torchserve", "gateway"))
    broken = "image-classification-api-gateway:never-ready"
    (tmp_path / "Dockerfile").write_text(f"FROM {gateway['Config']['Image']}\nENV GATEWAY_MODEL_NAME=missing\n")
    docker("build", "--quiet", "--tag", broken, str(tmp_path), timeout=300)
    try:
        with Load(fleet.balancer.url) as load:
            code, seconds, log = rollout(stack, serve["Config"]["Image"], broken, READY_TIMEOUT_S="30")
            fleet.all_up(timeout=30)
    finally:
        docker("rmi", broken, check=False)
    assert code == 1, log[-4000:]
    assert "rolling back" in log and "rolled back to" in log, log[-4000:]
    assert stack.inspect("gateway")["Image"] == gateway["Image"] and stack.inspect("gateway")["Id"] != gateway["Id"]
    assert stack.inspect("torchserve")["Id"] == serve["Id"], "TorchServe recreated though its image is the same"
    outcomes = collections.Counter(o for _, o in load.outcomes)
    print(f"rollback took {seconds:.1f} s; requests meanwhile: {dict(outcomes)}")  # noqa: T201
    assert outcomes["200"] > 0 and sum(n for o, n in outcomes.items() if o != "200") == 0, load.explain([log])


def test_instance_killed_abruptly_loses_no_image_and_is_taken_out(fleet: Fleet, tmp_path: Path) -> None:
    fleet.all_up()
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(80):
        (folder / f"{i:03}.jpg").write_bytes(jpeg(96, 96, seed=i))
    output = tmp_path / "out.jsonl"
    run = subprocess.Popen(
        [*imgcls_cmd(str(folder), "--retries", "30", "-c", "4", "-b", "1", "-o", str(output)), "--no-progress"],
        cwd=ROOT,
        env=client_env(fleet.balancer.url, API_KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = fleet.stacks["a"]
    try:
        time.sleep(3)
        assert run.poll() is None, "imgcls finished before the kill: the test proves nothing"
        docker("kill", victim.container("gateway"), victim.container("torchserve"))
        taken_out = fleet.balancer.wait_for("a", "DOWN", timeout=30)
        _, stderr = run.communicate(timeout=600)
    finally:
        run.kill()
        run.wait(30)
    print(f"balancer took the killed instance out after {taken_out:.1f} s; {summary(stderr)}")  # noqa: T201
    assert run.returncode == 0, stderr[-3000:]
    assert summary(stderr)["ok"] == 80 and summary(stderr)["failed"] == 0, stderr[-3000:]
    assert sorted(Path(r["path"]).name for r in jsonl(output)) == sorted(p.name for p in folder.iterdir())
