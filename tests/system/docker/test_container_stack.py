"""Both images built and run for real under the project's docker-compose.yml, serving the test model that
sees its input (tests/testmodel.py), so answers through the containers can be checked photo by photo.

Runs whenever a Docker daemon with compose v2 answers (`.ci/run` installs and starts one, see
docker/engine.sh); skipped, saying why, only when none does. The images are built by `docker/images.sh`
(what `make images` runs); the stack is the committed compose file with overrides through environment
variables only, on free ports under a unique project name, and always goes down with its volumes.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from containers import API_KEY, JPEG, ROOT, Stack, container_marks, docker
from imagegen import jpeg
from reference import make_context
from support import assert_problem, client_env, free_port, imgcls_cmd, jsonl, summary
from testmodel import LABELS, PHOTOS, TEST_MODEL_FILE, photo

from handlers.image_handler import ImageClassifierHandler
from modelserver.mar import unpack

MAR_IN_IMAGE = "/opt/torchserve/model_store/resnet50.mar"
pytestmark = container_marks()


@pytest.fixture(scope="module")
def stack(images: tuple[str, str]) -> Iterator[Stack]:
    running = Stack(*images)
    try:
        print(f"stack healthy {running.up():.1f} s after `up`")  # noqa: T201 (pytest -s shows the numbers)
        yield running
    finally:
        running.down()
    assert not running.left_over()


@pytest.fixture(scope="module")
def archive_handler(images: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The archive baked into the serve image, copied out and its handler run in-process."""
    target = tmp_path_factory.mktemp("image-archive")
    created = docker("create", images[0]).stdout.strip()
    try:
        docker("cp", f"{created}:{MAR_IN_IMAGE}", str(target / "resnet50.mar"))
    finally:
        docker("rm", "--volumes", created)
    unpack(target / "resnet50.mar", target / "model")
    service = ImageClassifierHandler()
    service.initialize(make_context(target / "model", [{}]))
    return service, target / "model"


def in_process_probabilities(archive_handler: tuple, image: bytes) -> dict[int, float]:
    service, model_dir = archive_handler
    (result,) = service.handle([{"body": bytearray(image)}], make_context(model_dir, [{"X-Top-K": "1000"}]))
    return {p["class_id"]: p["score"] for p in result["predictions"]}


def test_runtime_image_is_cpu_only(images: tuple[str, str]) -> None:
    """No CUDA libraries in the serve image (a CPU instance cannot use them); no torch in the gateway's."""
    script = (
        "import importlib.metadata as m, importlib.util as u\n"
        "names = sorted(d.metadata['Name'].lower() for d in m.distributions())\n"
        "print(' '.join(names))\n"
        "if u.find_spec('torch'):\n    import torch; print('cuda', torch.version.cuda)\n"
    )
    serve = docker("run", "--rm", "--entrypoint", "python", images[0], "-c", script).stdout
    packages = serve.splitlines()[0].split()
    assert "torch" in packages and "torchserve" in packages and "onnxruntime" in packages
    assert not [p for p in packages if p.startswith(("nvidia", "cuda", "triton"))], packages
    assert serve.splitlines()[1] == "cuda None"
    gateway = docker("run", "--rm", "--entrypoint", "python", images[1], "-c", script).stdout
    assert "fastapi" in gateway and "torch" not in gateway.split()


def test_both_health_checks_pass_and_the_gateway_is_ready(stack: Stack) -> None:
    for service in ("torchserve", "gateway"):
        assert stack.inspect(service)["State"]["Health"]["Status"] == "healthy", service
    ready = httpx.get(f"{stack.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["workers_ready"] >= 1, ready.text


def test_answers_equal_the_same_archive_in_process(stack: Stack, archive_handler: tuple) -> None:
    names = ["chelsea", "rocket", "coffee"]
    photos = [photo(name) for name in names]
    expected = [in_process_probabilities(archive_handler, image) for image in photos]
    # each photo gets its known label in process: the comparisons below can tell a wrong pipeline
    assert [max(p, key=p.get) for p in expected] == [LABELS.index(PHOTOS[name]) for name in names]
    # /v1/predict
    single = stack.predict(photos[0], top_k="5")
    assert single.status_code == 200, single.text
    model = single.json()["model"]
    assert model["untrained"] is False and model["weights"] == f"file:{TEST_MODEL_FILE}", model
    assert single.json()["predictions"][0]["label"] == PHOTOS[names[0]]
    for prediction in single.json()["predictions"]:
        assert prediction["score"] == pytest.approx(expected[0][prediction["class_id"]], abs=1e-5)
    # /v1/predict/batch
    files = [("files", (f"{i}.jpg", photo, "image/jpeg")) for i, photo in enumerate(photos)]
    batch = httpx.post(f"{stack.url}/v1/predict/batch", files=files, headers={"X-API-Key": API_KEY}, timeout=60)
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert len(results) == len(photos)
    for result, probabilities, name in zip(results, expected, names, strict=True):
        assert result["predictions"][0]["label"] == PHOTOS[name]
        for prediction in result["predictions"]:
            assert prediction["score"] == pytest.approx(probabilities[prediction["class_id"]], abs=1e-5)
    # v2: every one of the 1000 probabilities
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "BYTES",
                "shape": [len(photos)],
                "data": [base64.b64encode(p).decode() for p in photos],
            }
        ]
    }
    v2 = httpx.post(f"{stack.url}/v2/models/resnet50/infer", json=body, headers={"X-API-Key": API_KEY}, timeout=60)
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert output["shape"] == [len(photos), 1000]
    for row, probabilities in enumerate(expected):
        got = output["data"][row * 1000 : (row + 1) * 1000]
        assert max(abs(got[c] - probabilities[c]) for c in range(1000)) <= 1e-5


def can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


# Prints who answers GET /ping on TorchServe's inference port, run on the host and inside the gateway.
PROBE = """
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(f"http://{sys.argv[1]}:8080/ping", timeout=3) as answer:
        print(answer.status, answer.read(300).decode(errors="replace"))
except urllib.error.HTTPError as answer:
    print(answer.code, answer.read(300).decode(errors="replace"))
except OSError as error:
    print("unreachable:", error)
"""


def host_probe(*command: str) -> str:
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=30, check=True).stdout


def torchserve_answers(run: Callable[..., str], ip: str) -> bool:
    """TorchServe's answer to a call without its key: 400 InvalidKeyException (token auth guards /ping)."""
    said = run("-c", PROBE, ip)
    return said.startswith("400 ") and "InvalidKeyException" in said


def test_keys_and_exposure(stack: Stack) -> None:
    assert_problem(httpx.post(f"{stack.url}/v1/predict", content=jpeg(), headers=JPEG, timeout=30), 401, "unauthorized")
    ports = stack.inspect("torchserve")["NetworkSettings"]["Ports"]
    published = {port: bindings for port, bindings in ports.items() if bindings}
    assert set(published) == {"8081/tcp", "8082/tcp"}, f"TorchServe publishes more than management, metrics: {ports}"
    for port, host_port in (("8081/tcp", stack.management_port), ("8082/tcp", stack.metrics_port)):
        assert {b["HostIp"] for b in published[port]} == {"127.0.0.1"}
        assert {b["HostPort"] for b in published[port]} == {str(host_port)}
    # The host's address on the gateway's bridge: the gateway's port answers there, management does not.
    frontend = next(
        n for name, n in stack.inspect("gateway")["NetworkSettings"]["Networks"].items() if name.endswith("_frontend")
    )
    host_ip = frontend["Gateway"]
    assert can_connect(host_ip, stack.gateway_port), "the probe itself works"
    assert can_connect("127.0.0.1", stack.management_port)
    assert not can_connect(host_ip, stack.management_port), "management reachable beyond the host's loopback"
    # TorchServe's metrics (no token auth): a scraper on the host's loopback gets them; beyond it and from
    # the gateway's container (not on `ops`, where they listen) nothing answers.
    assert "ts_inference_requests_total" in httpx.get(f"{stack.metrics_url}/metrics", timeout=10).text
    assert not can_connect(host_ip, stack.metrics_port), "metrics reachable beyond the host's loopback"
    fetch = "import urllib.request as u; print(u.urlopen('http://torchserve:8082/metrics', timeout=3).read()[:99])"
    said = stack.compose("exec", "-T", "gateway", "python", "-c", fetch, timeout=60, check=False)
    assert said.returncode != 0 and "ts_" not in said.stdout, "the gateway reaches TorchServe's metrics"
    # TorchServe's inference port: from the gateway (on `backend`) TorchServe answers at its backend
    # address; from the host, at none of the container's addresses. It listens on the backend interface
    # only, and the host has no address on that bridge, so no route of its own to it. (Where the host's
    # default route leads to a proxy that accepts every connection, as on the CI machine, what answers
    # there is that proxy, not TorchServe: hence the probe looks at who answers, not only at connect().)
    networks = stack.inspect("torchserve")["NetworkSettings"]["Networks"]
    (backend,) = [n for name, n in networks.items() if name.endswith("_backend")]
    assert torchserve_answers(stack.exec_probe, backend["IPAddress"]), "the probe itself works"
    subnet = ipaddress.ip_network(
        docker(
            "network", "inspect", backend["NetworkID"], "--format", "{{(index .IPAM.Config 0).Subnet}}"
        ).stdout.strip()
    )
    host_ips = [
        ipaddress.ip_address(a.address)
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET
    ]
    assert not [ip for ip in host_ips if ip in subnet], f"the host has an address on the backend bridge {subnet}"
    for network in networks.values():
        assert not torchserve_answers(host_probe, network["IPAddress"]), (
            f"inference reachable at {network['IPAddress']}"
        )
    assert httpx.get(f"{stack.url}/models", headers={"X-API-Key": API_KEY}, timeout=10).status_code == 404


def test_every_container_is_non_root_with_a_read_only_root(stack: Stack) -> None:
    for service in ("torchserve", "gateway"):
        details = stack.inspect(service)
        assert details["Config"]["User"] == "10001:10001", service
        assert details["HostConfig"]["ReadonlyRootfs"] is True, service
        assert details["HostConfig"]["CapDrop"] == ["ALL"], service
        uids = stack.compose(
            "exec", "-T", service, "python", "-c", "import os; print(os.getuid(), os.geteuid(), os.getgid())"
        ).stdout.split()
        assert uids == ["10001", "10001", "10001"], service
        wrote = stack.compose("exec", "-T", service, "python", "-c", "open('/opt/x', 'w')", check=False)
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, service


def test_ops_describe_and_scale_through_the_loopback_management_port(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.keys()['management']}"}
    model = f"{stack.management_url}/models/resnet50"
    described = httpx.get(model, headers=headers, timeout=10)
    assert described.status_code == 200, described.text
    assert len(described.json()[0]["workers"]) == 1
    try:
        scaled = httpx.put(model, params={"min_worker": "2", "synchronous": "true"}, headers=headers, timeout=180)
        assert scaled.status_code == 200, scaled.text
        workers = httpx.get(model, headers=headers, timeout=10).json()[0]["workers"]
        assert len(workers) == 2 and {w["status"] for w in workers} == {"READY"}
        assert httpx.get(f"{stack.url}/readyz", timeout=10).json()["workers_ready"] in (1, 2)  # cached up to 1.5 s
        assert stack.predict(jpeg()).status_code == 200
    finally:
        httpx.put(
            model, params={"min_worker": "1", "max_worker": "1", "synchronous": "true"}, headers=headers, timeout=180
        )
    assert len(httpx.get(model, headers=headers, timeout=10).json()[0]["workers"]) == 1
    assert httpx.get(model, timeout=10).status_code in (400, 401), "management without a key"


def counter(metrics: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in metrics.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric.startswith(name + "{") and all(f'{k}="{v}"' in metric for k, v in labels.items()):
            total += float(value)
    return total


def test_metrics_count_every_request_of_the_container(stack: Stack) -> None:
    """One gateway process per container: /metrics sees each of N concurrent requests."""
    before = httpx.get(f"{stack.url}/metrics", timeout=10).text
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: stack.predict(jpeg(64, 64)).status_code, range(24)))
    assert statuses == [200] * 24
    after = httpx.get(f"{stack.url}/metrics", timeout=10).text
    labels = {"route": "/v1/predict", "status": "200"}
    assert (
        counter(after, "gateway_requests_total", **labels) - counter(before, "gateway_requests_total", **labels) == 24
    )


def kill_java(stack: Stack) -> None:
    script = (
        "import os, signal\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    if open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')[0].endswith(b'java'):\n"
        "        os.kill(int(pid), signal.SIGKILL)\n"
    )
    stack.compose("exec", "-T", "torchserve", "python", "-c", script)


def test_torchserve_killed_under_load_loses_no_request(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(120):
        (folder / f"{i:03}.jpg").write_bytes(jpeg(96, 96, seed=i))
    gateway_started = stack.inspect("gateway")["State"]["StartedAt"]
    old_keys = stack.keys()
    outcomes: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                response = stack.predict(jpeg(64, 64), timeout=40)
            except httpx.HTTPError as exc:  # no HTTP answer at all
                outcomes.append(type(exc).__name__)
                continue
            ok = response.status_code == 200 or (response.status_code == 503 and "retry-after" in response.headers)
            outcomes.append(
                str(response.status_code) if ok or response.status_code == 429 else f"bad {response.status_code}"
            )
            if response.status_code != 200:
                time.sleep(0.2)

    output = tmp_path / "out.jsonl"
    run = subprocess.Popen(
        [*imgcls_cmd(str(folder), "--retries", "30", "-c", "4", "-b", "4", "-o", str(output)), "--no-progress"],
        cwd=ROOT,
        env=client_env(stack.url, API_KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(3)
        killed = time.monotonic()
        kill_java(stack)
        recovered = None
        deadline = killed + 240
        while time.monotonic() < deadline:
            try:
                if stack.predict(jpeg(32, 32), timeout=10).status_code == 200 and stack.keys() != old_keys:
                    recovered = time.monotonic() - killed
                    break
            except (httpx.HTTPError, AssertionError, json.JSONDecodeError):
                pass
            time.sleep(0.5)
        time.sleep(2)
        _, stderr = run.communicate(timeout=600)
    finally:  # whatever failed above: no load thread or imgcls run outlives the test
        stop.set()
        for thread in threads:
            thread.join(60)
        run.kill()
        run.wait(30)
    assert recovered is not None, "the stack did not come back within 240 s of the crash"
    assert outcomes and all(o in ("200", "429", "503") for o in outcomes), sorted(set(outcomes))
    assert "503" in outcomes, "the crash was never seen: the test proves nothing"
    assert stack.inspect("torchserve")["RestartCount"] >= 1
    gateway = stack.inspect("gateway")
    assert gateway["RestartCount"] == 0 and gateway["State"]["StartedAt"] == gateway_started
    assert run.returncode == 0, stderr[-3000:]
    assert summary(stderr)["ok"] == 120 and summary(stderr)["failed"] == 0, stderr[-3000:]
    assert sorted(Path(r["path"]).name for r in jsonl(output)) == sorted(p.name for p in folder.iterdir())
    print(f"recovered {recovered:.1f} s after SIGKILL; answers {collections.Counter(outcomes)}")  # noqa: T201


def test_stop_is_prompt_and_down_up_recovers(stack: Stack) -> None:
    started, since = time.monotonic(), time.time()
    stack.compose("stop")
    stopped = time.monotonic() - started
    assert stopped < 10, "docker compose stop waited for SIGKILL"
    assert stack.stopped_since(since) == ["gateway", "torchserve"], "the gateway stops first (it depends on TorchServe)"
    print(f"stopped in {stopped:.1f} s")  # noqa: T201
    stack.compose("down")  # keeps the volume, like a host reboot with the EC2 unit
    stack.up()
    assert stack.predict(jpeg()).status_code == 200
    assert httpx.get(f"{stack.url}/readyz", timeout=10).status_code == 200


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on a free loopback port (Docker allows plain HTTP to 127.0.0.0/8)."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    server = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"docker-registry did not answer on 127.0.0.1:{port} within 10 s")
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)


def test_deploy_from_a_registry_as_the_instances_do(images: tuple[str, str], registry: str) -> None:
    """Tags as docker.yml gives them (type=sha), pushed, deleted here, then pulled by the EC2 unit's variables."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    refs = [f"{registry}/example/image-classification-api-{name}:sha-{sha}" for name in ("serve", "gateway")]
    for local, ref in zip(images, refs, strict=True):
        docker("tag", local, ref)
        docker("push", ref, timeout=900)
        docker("rmi", ref)
        assert docker("image", "inspect", ref, check=False).returncode != 0
    deployed = Stack(*refs)
    try:
        deployed.compose("pull", timeout=900)
        deployed.up()
        response = deployed.predict(jpeg())
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 5
    finally:
        deployed.down()
        for ref in refs:
            docker("rmi", ref, check=False)
