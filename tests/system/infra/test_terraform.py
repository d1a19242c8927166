"""Terraform in infra/: formatting, validation, plan assertions, and a real apply/destroy against moto.

Everything runs in a temporary copy of infra/ (no state or .terraform in the repo). The AWS
provider comes from a local filesystem mirror (``TF_PLUGIN_DIR`` or a few well-known
directories); the AWS APIs are served by a moto server started for this module and always
stopped afterwards.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers.timing import COUNTERS
from modelserver.paths import REPO_ROOT

REPO = REPO_ROOT
INFRA = REPO / "infra"
TERRAFORM = shutil.which("terraform")
REGION = "us-east-1"

# CI (GitHub sets CI=true) installs terraform: there a missing binary fails these tests instead of skipping them.
REQUIRED = bool(os.environ.get("CI"))
pytestmark = pytest.mark.skipif(
    TERRAFORM is None and not REQUIRED,
    reason="the `terraform` binary is not on PATH; install Terraform >= 1.11 to run infra tests",
)


@pytest.fixture(scope="module", autouse=True)
def terraform_installed() -> None:
    assert TERRAFORM is not None, "CI is set but `terraform` is not on PATH (.github/workflows/ci.yml installs it)"


PLUGIN_DIR_CANDIDATES = (
    "/opt/tf-plugins",
    "~/.terraform.d/plugins",
    "~/.local/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
    "/usr/share/terraform/plugins",
)

# sha256("test") and sha256("another key"): valid GATEWAY_API_KEY_HASHES entries.
KEY_HASHES = [
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "2aa50b47c92342ddda1dccb774e50e497d759632db2c3a8b86b31a9d737f8151",
]
SERVE_IMAGE = "example/image-classification-serve:1.2.3"
GATEWAY_IMAGE = "example/image-classification-gateway:1.2.3"
# The instances' real files: user_data carries both, so its size is measured with them.
COMPOSE = REPO / "docker-compose.yml"
ROLLOUT = REPO / "deploy" / "rollout-instance.sh"
DEPLOY_WORKFLOW = REPO / ".github" / "workflows" / "deploy.yml"
# Drain times derived from the NLB health check with the defaults (15 s x 3 + 10 s margin, 29 s
# API Gateway timeout, 30 s TorchServe stop) and with lb_health_check_interval_s=10, drain_margin_s=5.
DEFAULT_DRAIN = dict(gateway_drain=55, lb_drain=55, lb_rise=40, gateway_stop=94, deregistration=39, stop=124, hook=184)
TUNED_VARS = ("-var=lb_health_check_interval_s=10", "-var=drain_margin_s=5")
ALARM_VARS = ("-var=alarm_email=ops@example.com", "-var=no_traffic_alarm_minutes=30")
TUNED_DRAIN = dict(gateway_drain=35, lb_drain=35, lb_rise=25, gateway_stop=69, deregistration=34, stop=99, hook=159)

PLAN_TIMEOUT = 300
APPLY_TIMEOUT = 480


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def find_plugin_dir() -> Path | None:
    """The filesystem mirror holding terraform-provider-aws, or None (then init uses the registry)."""
    override = os.environ.get("TF_PLUGIN_DIR")
    candidates = [override] if override else list(PLUGIN_DIR_CANDIDATES)
    for candidate in candidates:
        root = Path(candidate).expanduser()
        if root.is_dir() and any(root.glob("**/terraform-provider-aws*")):
            return root
    if override:
        raise AssertionError(f"TF_PLUGIN_DIR={override} holds no terraform-provider-aws* binary")
    return None


def tf(
    workdir: Path, env: dict[str, str], *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [TERRAFORM, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"terraform {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def tf_plan(workdir: Path, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return tf(workdir, env, "plan", "-input=false", "-no-color", *args, timeout=PLAN_TIMEOUT, check=check)


def show_json(workdir: Path, env: dict[str, str], *target: str) -> dict[str, Any]:
    return json.loads(tf(workdir, env, "show", "-json", "-no-color", *target).stdout)


def resources(module: dict[str, Any], type_: str | None = None) -> list[dict[str, Any]]:
    """All resources of a planned_values/values root module (child modules included)."""
    found = list(module.get("resources", []))
    for child in module.get("child_modules", []):
        found.extend(resources(child))
    return [r for r in found if r["mode"] == "managed" and (type_ is None or r["type"] == type_)]


def one(module: dict[str, Any], address: str) -> dict[str, Any]:
    matches = [r for r in resources(module) if r["address"] == address]
    assert len(matches) == 1, f"expected exactly one {address}, found {len(matches)}"
    return matches[0]["values"]


def config_resource(plan: dict[str, Any], address: str) -> dict[str, Any]:
    for r in plan["configuration"]["root_module"]["resources"]:
        if r["address"] == address:
            return r
    raise AssertionError(f"{address} not in configuration")


def references(expr: dict[str, Any]) -> list[str]:
    return list(expr.get("references", []))


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tf_env: dict[str, str], moto_url: str) -> Path:
    """An initialised copy of infra/ whose variables point the provider at moto."""
    work = tmp_path_factory.mktemp("infra")
    shutil.copytree(
        INFRA,
        work,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*", "*.tfvars", "*.tfplan"),
    )
    (work / "test.auto.tfvars.json").write_text(
        json.dumps(
            {
                "aws_endpoint_url": moto_url,
                "aws_region": REGION,
                "compose_file_path": str(COMPOSE),
                "rollout_script_path": str(ROLLOUT),
                "gateway_api_key_hashes": KEY_HASHES,
                "serve_image": SERVE_IMAGE,
                "gateway_image": GATEWAY_IMAGE,
                "wait_for_capacity_timeout": "5m",
            }
        )
    )
    init = ["init", "-backend=false", "-input=false", "-no-color"]
    plugin_dir = find_plugin_dir()
    if plugin_dir is not None:
        init.append(f"-plugin-dir={plugin_dir}")
    tf(work, tf_env, *init, timeout=300)
    return work


@pytest.fixture(scope="module")
def plan(workdir: Path, tf_env: dict[str, str]) -> dict[str, Any]:
    """`terraform show -json` of a saved plan with the default variables (plan file: tfplan)."""
    tf_plan(workdir, tf_env, "-parallelism=10", "-out=tfplan")
    return show_json(workdir, tf_env, "tfplan")


@pytest.fixture(scope="module")
def plan_exposed(workdir: Path, tf_env: dict[str, str]) -> dict[str, Any]:
    """The same plan with expose_health_endpoints = true, a faster health check (TUNED_VARS), an alarm e-mail and
    the no-traffic alarm (ALARM_VARS)."""
    tf_plan(
        workdir,
        tf_env,
        "-parallelism=10",
        "-var=expose_health_endpoints=true",
        *TUNED_VARS,
        *ALARM_VARS,
        "-out=tfplan-exposed",
    )
    return show_json(workdir, tf_env, "tfplan-exposed")


# ---------------------------------------------------------------------------------------
# static checks
# ---------------------------------------------------------------------------------------


def test_fmt(tf_env: dict[str, str]) -> None:
    proc = tf(REPO, tf_env, "fmt", "-check", "-recursive", "-diff", "-no-color", "infra", check=False)
    assert proc.returncode == 0, f"terraform fmt would change files:\n{proc.stdout}{proc.stderr}"


def test_validate(workdir: Path, tf_env: dict[str, str]) -> None:
    out = json.loads(tf(workdir, tf_env, "validate", "-json", "-no-color").stdout)
    assert out["valid"] is True, out
    assert out["error_count"] == 0, out


def test_provider_pinned_and_no_registry_modules(workdir: Path) -> None:
    lock = (workdir / ".terraform.lock.hcl").read_text()
    assert 'provider "registry.terraform.io/hashicorp/aws"' in lock
    assert 'version     = "5.100.' in lock
    assert not (workdir / ".terraform" / "modules").exists(), "infra/ must not use registry modules"


def test_every_variable_is_described_and_secrets_are_sensitive(plan: dict[str, Any]) -> None:
    variables = plan["configuration"]["root_module"]["variables"]
    missing = [name for name, v in variables.items() if not v.get("description")]
    assert not missing, f"variables without description: {missing}"
    for secret in ("gateway_api_key_hashes", "serve_image", "gateway_image"):
        assert variables[secret].get("sensitive") is True, secret


# ---------------------------------------------------------------------------------------
# plan assertions
# ---------------------------------------------------------------------------------------


def test_launch_template_requires_imdsv2_encrypted_root_and_no_ssh(plan: dict[str, Any]) -> None:
    lt = one(plan["planned_values"]["root_module"], "aws_launch_template.this")
    (metadata,) = lt["metadata_options"]
    assert metadata["http_tokens"] == "required"
    assert metadata["http_endpoint"] == "enabled"
    assert metadata["http_put_response_hop_limit"] == 1
    ebs = [bdm["ebs"][0] for bdm in lt["block_device_mappings"]]
    assert ebs, "root volume mapping missing"
    assert all(str(e["encrypted"]).lower() == "true" for e in ebs)
    assert not lt.get("key_name"), "no SSH key pair: access is through SSM Session Manager"
    assert lt["instance_type"] == "c7i.xlarge"
    # AMI resolved from the public Amazon Linux 2023 SSM parameter (served by moto here).
    assert lt["image_id"].startswith("ami-")


def user_data(plan: dict[str, Any]) -> str:
    encoded = one(plan["planned_values"]["root_module"], "aws_launch_template.this")["user_data"]
    return gzip.decompress(base64.b64decode(encoded)).decode()  # cloud-init unpacks gzip user_data


def test_user_data_renders_valid_bash_without_secrets(plan: dict[str, Any], tmp_path: Path) -> None:
    script = user_data(plan)
    for hash_ in KEY_HASHES:
        assert hash_ not in script, "API key hashes must come from SSM at boot, not from user_data"
    assert SERVE_IMAGE not in script
    assert GATEWAY_IMAGE not in script
    # The compose file and the rollout script travel gzipped and base64-encoded, byte for byte.
    pattern = r"echo '([A-Za-z0-9+/=]+)' \| base64 -d \| gunzip > \"\$APP_DIR/([\w.-]+)\""
    files = {name: gzip.decompress(base64.b64decode(data)) for data, name in re.findall(pattern, script)}
    assert files == {"docker-compose.yml": COMPOSE.read_bytes(), "rollout-instance.sh": ROLLOUT.read_bytes()}
    assert "--with-decryption" in script
    for name in ("gateway_api_key_hashes", "serve_image", "gateway_image"):
        assert f"/image-classification-api/prod/{name}" in script
    assert '"log-driver": "awslogs"' in script
    assert '"awslogs-group": "/image-classification-api/prod/containers"' in script
    assert "GATEWAY_PORT=8000" in script
    assert "systemctl enable --now" in script
    path = tmp_path / "user_data.sh"
    path.write_text(script)
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30, check=False)
    assert syntax.returncode == 0, syntax.stderr


def test_user_data_fits_ec2s_16_kib(plan: dict[str, Any]) -> None:
    """EC2 refuses user_data over 16 KiB (moto does not): measured with the real compose file and rollout script,
    as the launch template carries it (gzip, base64), so it fits whether the limit counts before or after base64."""
    encoded = one(plan["planned_values"]["root_module"], "aws_launch_template.this")["user_data"]
    packed = len(base64.b64decode(encoded))
    print(f"user_data: {len(user_data(plan))} bytes rendered, {packed} gzipped, {len(encoded)} as base64 (limit 16384)")
    assert len(encoded) <= 16 * 1024, f"user_data is {len(encoded)} bytes as base64 ({packed} gzipped): over 16 KiB"


def env_lines(script: str) -> dict[str, str]:
    """The KEY=value lines fetch-env.sh writes into .env (constant values only)."""
    return dict(re.findall(r'^\s*echo "([A-Z_]+)=([^"$]*)"$', script, flags=re.M))


def unit(script: str, name: str) -> str:
    """A systemd unit as the boot script writes it (its unquoted heredoc expands $APP_DIR)."""
    (app_dir,) = re.findall(r'^APP_DIR="([^"$]+)"$', script, flags=re.M)
    text = script.split(f'cat > "/etc/systemd/system/{name}.service" <<UNIT\n', 1)[1].split("\nUNIT\n", 1)[0]
    return text.replace("$APP_DIR", app_dir)


def drain_settings(plan: dict[str, Any]) -> dict[str, int]:
    root = plan["planned_values"]["root_module"]
    script = user_data(plan)
    env = env_lines(script)
    (stop,) = re.findall(r"^TimeoutStopSec=(\d+)$", unit(script, "image-classification-api"), flags=re.M)
    return {
        "gateway_drain": int(env["GATEWAY_DRAIN_S"]),
        "lb_drain": int(env["LB_DRAIN_S"]),
        "lb_rise": int(env["LB_RISE_S"]),
        "gateway_stop": int(env["GATEWAY_STOP_GRACE_PERIOD"].removesuffix("s")),
        "deregistration": int(one(root, "aws_lb_target_group.gateway")["deregistration_delay"]),
        "stop": int(stop),
        "hook": one(root, "aws_autoscaling_lifecycle_hook.drain")["heartbeat_timeout"],
    }


@pytest.mark.parametrize(("which", "expected"), [("plan", DEFAULT_DRAIN), ("plan_exposed", TUNED_DRAIN)])
def test_drain_times_follow_the_health_check(request: pytest.FixtureRequest, which: str, expected: dict) -> None:
    """GATEWAY_DRAIN_S / LB_DRAIN_S = interval x unhealthy threshold + margin; the unit's stop timeout covers
    drain + in-flight (API Gateway's timeout) + TorchServe's stop; the termination wait is longer still."""
    plan = request.getfixturevalue(which)
    got = drain_settings(plan)
    assert got == expected
    assert got["gateway_stop"] > got["gateway_drain"] + 29, "the gateway's stop: its drain, then a 29 s request"
    # The unit's stop covers compose's: the gateway's grace (set by .env) and then TorchServe's (the compose file's).
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services["gateway"]["stop_grace_period"].startswith("${GATEWAY_STOP_GRACE_PERIOD")
    serve_grace = int(services["torchserve"]["stop_grace_period"].removesuffix("s"))
    assert got["stop"] >= got["gateway_stop"] + serve_grace
    assert got["hook"] > got["stop"]
    assert got["deregistration"] > 29, "deregistration outlasts a request in flight"
    (hc,) = one(plan["planned_values"]["root_module"], "aws_lb_target_group.gateway")["health_check"]
    assert got["gateway_drain"] > hc["interval"] * hc["unhealthy_threshold"]


def test_instance_rollout_and_termination_drain(plan: dict[str, Any]) -> None:
    root = plan["planned_values"]["root_module"]
    script = user_data(plan)
    env = env_lines(script)
    assert env["ROLLOUT_ROTATION"] == "generic", "instances make no standby calls: the deploy workflow's role does"
    assert env["COMPOSE_PROJECT_NAME"] == "image-classification-api"
    assert env["COMPOSE_FILE"] == "/opt/image-classification-api/docker-compose.yml"
    service = unit(script, "image-classification-api")
    assert "ExecReload=/opt/image-classification-api/rollout.sh" in service.splitlines()
    assert "exec ./rollout-instance.sh" in script
    # Scale-in / refresh: the watcher reads the target lifecycle state, stops the unit, completes the action.
    watcher = unit(script, "image-classification-api-lifecycle")
    assert "ExecStart=/opt/image-classification-api/lifecycle-watch.sh" in watcher.splitlines()
    assert "autoscaling/target-lifecycle-state" in script
    assert "--lifecycle-hook-name image-classification-api-prod-drain" in script
    hook = one(root, "aws_autoscaling_lifecycle_hook.drain")
    assert hook["lifecycle_transition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hook["default_result"] == "CONTINUE"
    assert hook["name"] == "image-classification-api-prod-drain"
    (refresh,) = one(root, "aws_autoscaling_group.this")["instance_refresh"]
    (prefs,) = refresh["preferences"]
    assert (prefs["min_healthy_percentage"], prefs["max_healthy_percentage"]) == (100, 200), "launch before terminate"
    (tg_state,) = one(root, "aws_lb_target_group.gateway")["target_health_state"]
    assert tg_state["enable_unhealthy_connection_termination"] is False


def heredoc(script: str, path: str) -> str:
    """The body of `cat > "<path>" <<'SCRIPT'` in the boot script (quoted: written as is)."""
    return script.split(f"cat > \"{path}\" <<'SCRIPT'\n", 1)[1].split("\nSCRIPT\n", 1)[0] + "\n"


def deploy_ssm_commands(app_dir: Path, script: bytes, serve: str, gateway: str) -> list[str]:
    """The commands deploy.yml sends to one instance, built by the workflow's own jq program."""
    step = next(
        s
        for s in yaml.safe_load(DEPLOY_WORKFLOW.read_text())["jobs"]["deploy"]["steps"]
        if s.get("name") == "Roll out, instance by instance"
    )
    (program,) = re.findall(r"jq -n [^']*'(\{.*?\})' > ssm-params.json", step["run"], flags=re.S)
    args = {"dir": str(app_dir), "script": base64.b64encode(gzip.compress(script)).decode()}
    args |= {"serve": serve, "gateway": gateway}
    jq = ["jq", "-n", *(x for k, v in args.items() for x in ("--arg", k, v)), program]
    return json.loads(subprocess.run(jq, capture_output=True, text=True, check=True, timeout=30).stdout)["commands"]


def test_deploy_command_installs_the_script_and_runs_it_with_the_digests(plan: dict[str, Any], tmp_path: Path) -> None:
    """deploy.yml's SSM command, run against the boot script's own rollout.sh in a scratch app dir: it installs
    the deployed commit's rollout script byte for byte and runs it with ROLLOUT_ROTATION=none and the digests
    over the .env from SSM; the unit's reload (no arguments) runs it with the .env's generic rotation."""
    script = user_data(plan)
    app = tmp_path / "app"
    app.mkdir()
    rollout_sh = heredoc(script, "$APP_DIR/rollout.sh").replace("/opt/image-classification-api", str(app))
    (app / "rollout.sh").write_text(rollout_sh)
    # fetch-env.sh reads SSM: here it writes what SSM would hold, with the boot script's constant lines.
    constants = "".join(f"{k}={v}\n" for k, v in env_lines(script).items())
    (app / "fetch-env.sh").write_text(f"#!/bin/bash\nprintf %s '{constants}SERVE_IMAGE=old/serve:1\n' > .env\n")
    for name in ("rollout.sh", "fetch-env.sh"):
        (app / name).chmod(0o700)
    # The "deployed commit's" rollout script: reports what it was started with.
    deployed = b'#!/bin/bash\necho "$ROLLOUT_ROTATION $SERVE_IMAGE $GATEWAY_IMAGE $LB_DRAIN_S $(pwd)"\n'
    serve, gateway = "docker.io/ns/serve@sha256:" + "a" * 64, "docker.io/ns/gateway@sha256:" + "b" * 64
    commands = deploy_ssm_commands(app, deployed, serve, gateway)
    ran = subprocess.run(["bash", "-c", "\n".join(commands)], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert (app / "rollout-instance.sh").read_bytes() == deployed
    assert ran.stdout.split() == ["none", serve, gateway, "55", str(app)]
    reload = subprocess.run([str(app / "rollout.sh")], capture_output=True, text=True, timeout=30)
    assert reload.returncode == 0, reload.stderr
    assert reload.stdout.split()[:2] == ["generic", "old/serve:1"]


def test_no_ingress_from_anywhere_and_only_gateway_port(plan: dict[str, Any]) -> None:
    root = plan["planned_values"]["root_module"]
    assert not resources(root, "aws_security_group_rule")
    assert not resources(root, "aws_vpc_security_group_ingress_rule")
    groups = resources(root, "aws_security_group")
    assert groups
    for group in groups:
        for rule in group["values"]["ingress"]:
            assert "0.0.0.0/0" not in rule["cidr_blocks"], group["address"]
            assert "::/0" not in rule["ipv6_cidr_blocks"], group["address"]
            assert not (rule["from_port"] <= 22 <= rule["to_port"]), "no SSH port"
    instance_sg = one(root, "aws_security_group.instance")
    (rule,) = instance_sg["ingress"]
    assert (rule["protocol"], rule["from_port"], rule["to_port"]) == ("tcp", 8000, 8000)
    assert rule["cidr_blocks"] == ["10.40.0.0/16"]


def test_instances_and_nlb_live_in_private_subnets(plan: dict[str, Any]) -> None:
    root = plan["planned_values"]["root_module"]
    asg_refs = references(config_resource(plan, "aws_autoscaling_group.this")["expressions"]["vpc_zone_identifier"])
    assert "aws_subnet.private" in asg_refs
    assert not any("aws_subnet.public" in r for r in asg_refs)
    nlb_refs = references(config_resource(plan, "aws_lb.internal")["expressions"]["subnets"])
    assert "aws_subnet.private" in nlb_refs
    private = [r["values"] for r in resources(root, "aws_subnet") if r["address"].startswith("aws_subnet.private")]
    assert len(private) == 2
    assert len({s["availability_zone"] for s in private}) == 2, "two AZs"
    assert all(s["map_public_ip_on_launch"] is False for s in private)
    # Private routes go through NAT, never straight to the internet gateway.
    for route in resources(root, "aws_route"):
        if route["address"].startswith("aws_route.private_nat"):
            assert not route["values"].get("gateway_id")
    assert len(resources(root, "aws_nat_gateway")) == 1, "one NAT gateway by default"
    nlb = one(root, "aws_lb.internal")
    assert nlb["internal"] is True
    assert nlb["load_balancer_type"] == "network"
    tg = one(root, "aws_lb_target_group.gateway")
    assert tg["port"] == 8000
    (hc,) = tg["health_check"]
    assert (hc["protocol"], hc["path"]) == ("HTTP", "/readyz")
    asg = one(root, "aws_autoscaling_group.this")
    assert asg["health_check_type"] == "ELB"
    assert {"key": "Project", "value": "image-classification-api", "propagate_at_launch": True} in asg["tag"]


def test_every_public_method_requires_an_api_key(plan: dict[str, Any]) -> None:
    methods = resources(plan["planned_values"]["root_module"], "aws_api_gateway_method")
    assert len(methods) == 4  # {proxy+}, /healthz, /readyz, /metrics
    for method in methods:
        assert method["values"]["api_key_required"] is True, method["address"]


def test_proxy_goes_over_the_vpc_link_to_the_nlb(plan: dict[str, Any]) -> None:
    root = plan["planned_values"]["root_module"]
    assert one(root, "aws_api_gateway_resource.proxy")["path_part"] == "{proxy+}"
    integration = one(root, "aws_api_gateway_integration.proxy")
    assert integration["type"] == "HTTP_PROXY"
    assert integration["connection_type"] == "VPC_LINK"
    assert integration["timeout_milliseconds"] == 29000
    expressions = config_resource(plan, "aws_api_gateway_integration.proxy")["expressions"]
    assert "aws_api_gateway_vpc_link.this.id" in references(expressions["connection_id"])
    link_refs = references(config_resource(plan, "aws_api_gateway_vpc_link.this")["expressions"]["target_arns"])
    assert "aws_lb.internal.arn" in link_refs
    api = one(root, "aws_api_gateway_rest_api.this")
    assert api["binary_media_types"] == ["*/*"], "every body passes through byte for byte"
    assert integration.get("content_handling") is None, "HTTP_PROXY passes bodies through: no conversion"


def media_type_matches(pattern: str, content_type: str) -> bool:
    """API Gateway's binaryMediaTypes match: exact, `type/*` or `*/*` (parameters such as charset ignored)."""
    kind, _, sub = content_type.split(";")[0].strip().lower().partition("/")
    want_kind, _, want_sub = pattern.lower().partition("/")
    return want_kind in ("*", kind) and want_sub in ("*", sub)


def sent_content_types() -> dict[str, set[str]]:
    """Content type -> where it comes from: every request content type the project's clients (client/, bench/)
    set, and every one the curl examples in the docs (READMEs, SECURITY.md, docs/) send (-F: multipart;
    --data-binary: its -H or curl's default form encoding)."""
    found: dict[str, set[str]] = {}
    for path in sorted([*(REPO / "client").glob("*.py"), *(REPO / "bench").glob("*.py")]):
        text = path.read_text()
        for value in re.findall(r"[\"']Content-Type[\"']\s*:\s*[\"']([^\"']+)[\"']", text):
            found.setdefault(value, set()).add(path.name)
        if re.search(r"\bfiles=", text):
            found.setdefault("multipart/form-data", set()).add(path.name)
    docs = [REPO / "README.md", REPO / "infra" / "README.md", REPO / "SECURITY.md", *(REPO / "docs").glob("*.md")]
    for doc in docs:
        commands = re.sub(r"\\\n\s*", " ", doc.read_text())
        for command in re.findall(r"^.*\bcurl\b.*$", commands, flags=re.M):
            explicit = re.findall(r"-H\s+[\"']Content-Type:\s*([^\"']+)[\"']", command, flags=re.I)
            if re.search(r"\s-F\s", command):
                kind = ["multipart/form-data"]
            elif re.search(r"\s(--data-binary|--data|-d)\s", command):
                kind = explicit or ["application/x-www-form-urlencoded"]
            else:
                kind = explicit
            for value in kind:
                found.setdefault(value.strip(), set()).add(doc.name)
    return found


def test_every_content_type_the_clients_send_is_binary(plan: dict[str, Any]) -> None:
    """A body whose type no binary media type matches is treated as text by API Gateway and mangled."""
    patterns = one(plan["planned_values"]["root_module"], "aws_api_gateway_rest_api.this")["binary_media_types"]
    sent = sent_content_types()
    # What the clients are known to send today: the grep must find them (it is not silently empty).
    assert {"application/octet-stream", "multipart/form-data", "image/jpeg"} <= set(sent), sent
    uncovered = {t: where for t, where in sent.items() if not any(media_type_matches(p, t) for p in patterns)}
    assert not uncovered, f"API Gateway would treat these request bodies as text: {uncovered}"
    # Response side: the gateway's own media types (PNG overlays of /v1/explain?format=png among them).
    gateway = " ".join(p.read_text() for p in (REPO / "gateway").glob("*.py"))
    answered = set(re.findall(r'media_type="([^"]+)"', gateway))
    assert "image/png" in answered
    assert all(any(media_type_matches(p, t) for p in patterns) for t in answered), (answered, patterns)


def test_usage_plan_throttles_and_meters(plan: dict[str, Any]) -> None:
    root = plan["planned_values"]["root_module"]
    usage_plan = one(root, "aws_api_gateway_usage_plan.this")
    (throttle,) = usage_plan["throttle_settings"]
    assert throttle["rate_limit"] > 0 and throttle["burst_limit"] > 0
    (quota,) = usage_plan["quota_settings"]
    assert quota["limit"] > 0 and quota["period"] in {"DAY", "WEEK", "MONTH"}
    assert len(usage_plan["api_stages"]) == 1
    usage_key = config_resource(plan, "aws_api_gateway_usage_plan_key.default")["expressions"]
    assert "aws_api_gateway_api_key.default.id" in references(usage_key["key_id"])
    assert "aws_api_gateway_usage_plan.this.id" in references(usage_key["usage_plan_id"])


def test_stage_has_access_logs_and_metrics(plan: dict[str, Any]) -> None:
    root = plan["planned_values"]["root_module"]
    stage = one(root, "aws_api_gateway_stage.this")
    (access,) = stage["access_log_settings"]
    fields = json.loads(access["format"])
    assert fields["requestId"] == "$context.requestId"
    assert "$context.identity.apiKeyId" in fields.values()
    dest = references(
        config_resource(plan, "aws_api_gateway_stage.this")["expressions"]["access_log_settings"][0]["destination_arn"]
    )
    assert "aws_cloudwatch_log_group.api_access.arn" in dest
    (settings,) = one(root, "aws_api_gateway_method_settings.all")["settings"]
    assert settings["metrics_enabled"] is True
    assert one(root, "aws_api_gateway_method_settings.all")["method_path"] == "*/*"


def test_health_endpoints_not_exposed_by_default(plan: dict[str, Any]) -> None:
    root = plan["planned_values"]["root_module"]
    paths = {r["values"]["path_part"] for r in resources(root, "aws_api_gateway_resource")}
    assert {"healthz", "readyz", "metrics"} <= paths, "explicit resources shadow {proxy+} for the health paths"
    for name in ("healthz", "readyz", "metrics"):
        integration = one(root, f'aws_api_gateway_integration.health["{name}"]')
        assert integration["type"] == "MOCK"
        assert not integration.get("uri")
        assert json.loads(integration["request_templates"]["application/json"]) == {"statusCode": 404}
        assert integration["passthrough_behavior"] == "NEVER"
        # With binary_media_types ["*/*"] a MOCK applies its template only to a body converted to text,
        # and its answer stays the template's text instead of being base64-decoded.
        assert integration["content_handling"] == "CONVERT_TO_TEXT"
        response = one(root, f'aws_api_gateway_integration_response.health_not_found["{name}"]')
        assert response["status_code"] == "404"
        assert response["content_handling"] == "CONVERT_TO_TEXT"
    forwarded = {r["address"] for r in resources(root, "aws_api_gateway_integration") if r["values"]["type"] != "MOCK"}
    assert forwarded == {"aws_api_gateway_integration.proxy"}, "only {proxy+} reaches the instances"


def test_health_endpoints_exposed_when_asked(plan_exposed: dict[str, Any]) -> None:
    root = plan_exposed["planned_values"]["root_module"]
    for name in ("healthz", "readyz"):
        integration = one(root, f'aws_api_gateway_integration.health["{name}"]')
        assert integration["type"] == "HTTP_PROXY"
        assert integration["connection_type"] == "VPC_LINK"
        assert integration["integration_http_method"] == "GET"
        assert integration.get("content_handling") is None, "a proxy passes the body through"
        method = one(root, f'aws_api_gateway_method.health["{name}"]')
        assert method["api_key_required"] is True
    # /metrics is never forwarded: the CloudWatch agent scrapes it on the instance's loopback.
    assert one(root, 'aws_api_gateway_integration.health["metrics"]')["type"] == "MOCK"
    responses = [r["address"] for r in resources(root, "aws_api_gateway_integration_response")]
    assert responses == ['aws_api_gateway_integration_response.health_not_found["metrics"]']
    uri = config_resource(plan_exposed, "aws_api_gateway_integration.health")["expressions"]["uri"]
    assert "local.nlb_base_url" in references(uri)  # the NLB's DNS name is only known after apply


def test_outputs_expose_ids_never_the_key_value(plan: dict[str, Any]) -> None:
    outputs = plan["configuration"]["root_module"]["outputs"]
    assert {"invoke_url", "api_key_id", "autoscaling_group_name", "log_group_name"} <= set(outputs)
    assert references(outputs["api_key_id"]["expression"]) == [
        "aws_api_gateway_api_key.default.id",
        "aws_api_gateway_api_key.default",
    ]
    for name, output in outputs.items():
        assert not any(r.endswith("api_key.default.value") for r in references(output["expression"])), name


def test_runtime_config_is_securestring(plan: dict[str, Any]) -> None:
    root = plan["planned_values"]["root_module"]
    params = {r["values"]["name"]: r["values"] for r in resources(root, "aws_ssm_parameter")}
    secrets = {
        f"/image-classification-api/prod/{name}" for name in ("gateway_api_key_hashes", "serve_image", "gateway_image")
    }
    agent = {
        f"/image-classification-api/prod/{name}" for name in ("cloudwatch_agent_config", "cloudwatch_agent_prometheus")
    }
    assert set(params) == secrets | agent
    assert all(params[name]["type"] == "SecureString" for name in secrets)
    assert all(params[name]["type"] == "String" for name in agent), "the agent's configuration holds no secret"
    assert params["/image-classification-api/prod/gateway_api_key_hashes"]["value"] == ",".join(KEY_HASHES)


# ---------------------------------------------------------------------------------------
# observability: the CloudWatch agent's configuration, alarms, dashboard
# ---------------------------------------------------------------------------------------

PREFIX = "/image-classification-api/prod"
NAMESPACE = "image-classification-api/prod"
ALARM_ARN = "arn:aws:cloudwatch:us-east-1:123456789012:alarm:"  # in moto's account
# The contract's health routes (gateway route templates): never counted as API traffic or errors.
HEALTH_ROUTES = ["/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"]
API_ROUTES = ["/v1/predict", "/v1/predict/batch", "/v2/models/{model_name}/infer", "unmatched"]


def agent_configuration(plan: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The agent's JSON configuration and its Prometheus scrape configuration, as the SSM parameters carry them."""
    params = {
        r["values"]["name"]: r["values"]["value"]
        for r in resources(plan["planned_values"]["root_module"])
        if r["type"] == "aws_ssm_parameter"
    }
    return json.loads(params[f"{PREFIX}/cloudwatch_agent_config"]), yaml.safe_load(
        params[f"{PREFIX}/cloudwatch_agent_prometheus"]
    )


def emf(agent: dict[str, Any]) -> dict[str, Any]:
    return agent["logs"]["metrics_collected"]["prometheus"]["emf_processor"]


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus metric_relabel_configs (replace, keep, drop) applied to one series; None when it is dropped."""
    labels = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(name, "") for name in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep" and not match or action == "drop" and match:
            return None
        if action == "replace" and match:
            labels[rule["target_label"]] = match.expand(rule.get("replacement", "$1").replace("$", "\\"))
    return labels


def declarations_for(agent: dict[str, Any], prom: dict[str, Any], series: dict[str, str]) -> list[dict[str, Any]]:
    """The EMF metric declarations a scraped series of job `series["job"]` ends up in (after the scrape's relabel)."""
    jobs = {c["job_name"]: c for c in prom["scrape_configs"]}
    if series["job"] not in jobs:
        return []
    labels = relabel(series, jobs[series["job"]].get("metric_relabel_configs", []))
    if labels is None:
        return []
    return [
        d
        for d in emf(agent)["metric_declaration"]
        if re.search(d["label_matcher"], ";".join(labels.get(name, "") for name in d["source_labels"]))
        and any(re.search(selector, labels["__name__"]) for selector in d["metric_selectors"])
    ]


def publishes(agent: dict[str, Any], prom: dict[str, Any], name: str, dimensions: dict[str, str | None]) -> bool:
    """Whether the agent's configuration publishes `name` with exactly these dimensions (a value None: any value;
    then any scrape job may be the one)."""
    jobs = [dimensions["job"]] if dimensions.get("job") else [c["job_name"] for c in prom["scrape_configs"]]
    series_labels = {k: v for k, v in dimensions.items() if v is not None and k != "job"}
    return any(
        set(dimensions) in [set(dims) for dims in d["dimensions"]]
        for job in jobs
        for d in declarations_for(agent, prom, {"__name__": name, "job": job, **series_labels})
    )


def used_metrics(plan: dict[str, Any]) -> list[tuple[str, str, str, dict[str, str | None]]]:
    """(where, namespace, metric name, dimensions) of every metric an alarm or a dashboard widget reads."""
    root = plan["planned_values"]["root_module"]
    used: list[tuple[str, str, str, dict[str, str | None]]] = []
    for alarm in resources(root, "aws_cloudwatch_metric_alarm"):
        for query in alarm["values"]["metric_query"]:
            for metric in query["metric"]:
                used.append(
                    (alarm["address"], metric["namespace"], metric["metric_name"], metric.get("dimensions", {}))
                )
    body = json.loads(one(root, "aws_cloudwatch_dashboard.this")["dashboard_body"])
    for widget in body["widgets"]:
        for row in widget["properties"].get("metrics", []):
            where = f"dashboard: {widget['properties']['title']}"
            fields = [f for f in row if not isinstance(f, dict)]
            if fields:
                namespace, name, *pairs = fields
                used.append((where, namespace, name, dict(zip(pairs[::2], pairs[1::2], strict=True))))
            expressions = " ".join(f.get("expression", "") for f in row if isinstance(f, dict))
            for search in re.findall(r"SEARCH\('\{([^}]*)\} MetricName=\"([^\"]+)\"", expressions):
                namespace, *keys = [part.strip('"') for part in search[0].split(",")]
                used.append((where, namespace, search[1], dict.fromkeys(keys)))
    return used


def test_agent_scrapes_the_loopback_into_its_own_log_group(plan: dict[str, Any]) -> None:
    agent, prom = agent_configuration(plan)
    prometheus = agent["logs"]["metrics_collected"]["prometheus"]
    assert prometheus["log_group_name"] == f"{PREFIX}/metrics"
    assert emf(agent)["metric_namespace"] == NAMESPACE
    targets = {c["job_name"]: [t for s in c["static_configs"] for t in s["targets"]] for c in prom["scrape_configs"]}
    assert targets == {"gateway": ["127.0.0.1:8000"], "torchserve": ["127.0.0.1:8082"]}
    assert all(c["metrics_path"] == "/metrics" for c in prom["scrape_configs"])
    assert prom["global"]["scrape_interval"] == "60s"
    # The boot script installs the agent, writes the scrape configuration where the agent reads it, and starts
    # the agent from the SSM parameter.
    script = user_data(plan)
    assert "dnf install -y amazon-cloudwatch-agent" in script
    assert f"--name '{PREFIX}/cloudwatch_agent_prometheus'" in script
    assert f"> '{prometheus['prometheus_config_path']}'" in script
    assert f"-c 'ssm:{PREFIX}/cloudwatch_agent_config'" in script
    assert "TORCHSERVE_METRICS_PORT" in env_lines(script)
    # Standard-tier SSM parameters hold 4 KB.
    root = plan["planned_values"]["root_module"]
    for param in resources(root, "aws_ssm_parameter"):
        if "cloudwatch_agent" in param["values"]["name"]:
            assert len(param["values"]["value"].encode()) <= 4096, param["values"]["name"]
            assert param["values"]["tier"] == "Standard"


def test_every_alarm_and_widget_metric_of_the_agent_is_published(plan: dict[str, Any]) -> None:
    """An alarm on a metric the agent does not publish (a wrong name, a dimension set it is not published with, a
    job it does not scrape, a name the scrape's keep rule drops) sits in INSUFFICIENT_DATA forever."""
    agent, prom = agent_configuration(plan)
    used = [(where, name, dims) for where, namespace, name, dims in used_metrics(plan) if namespace == NAMESPACE]
    unpublished = [u for u in used if not publishes(agent, prom, u[1], u[2])]
    assert not unpublished, unpublished
    # The check is not vacuous: alarms and the dashboard both read the agent's metrics, and a wrong one is caught.
    assert {where for where, _, _ in used} >= {
        'aws_cloudwatch_metric_alarm.this["gateway_503_rate"]',
        'aws_cloudwatch_metric_alarm.this["gateway_504_rate"]',
        "dashboard: Errors: gateway answers by status (API routes)",
    }
    assert not publishes(agent, prom, "gateway_requests_total", {"job": "gateway", "route": "/v1/predict"})
    assert not publishes(agent, prom, "gateway_request_duration_seconds", {"job": "gateway"})
    assert not publishes(agent, prom, "gateway_requests_total", {"job": "torchserve"})
    # And nothing is published that no alarm or widget reads.
    declared = {s.strip("^$") for d in emf(agent)["metric_declaration"] for s in d["metric_selectors"]}
    assert declared == {name for _, name, _ in used}


def test_health_routes_and_a_draining_readyz_are_not_api_errors(plan: dict[str, Any]) -> None:
    agent, prom = agent_configuration(plan)
    requests = [d for d in emf(agent)["metric_declaration"] if "^gateway_requests_total$" in d["metric_selectors"]]
    for route in HEALTH_ROUTES:  # /readyz's 503 `draining` among them
        series = {
            "__name__": "gateway_requests_total",
            "job": "gateway",
            "method": "GET",
            "route": route,
            "status": "503",
        }
        assert declarations_for(agent, prom, series) == [], route
    for route in API_ROUTES:
        series = {
            "__name__": "gateway_requests_total",
            "job": "gateway",
            "method": "POST",
            "route": route,
            "status": "503",
        }
        assert declarations_for(agent, prom, series) == requests, route
    # TorchServe's series are published from their own job only.
    series = {"__name__": "ts_inference_requests_total", "job": "torchserve", "model_name": "resnet50"}
    assert declarations_for(agent, prom, series)


def exported_types() -> dict[str, str]:
    """Prometheus type of every metric the gateway (its real registry), TorchServe 0.12 (its metrics.yaml) and the
    handler (its counters, handlers/timing.py, through TorchServe's custom metrics) export."""
    from importlib.resources import files

    from gateway.metrics import Metrics

    types = {}
    for family in Metrics().registry.collect():
        types[family.name + ("_total" if family.type == "counter" else "")] = family.type
    ts_config = yaml.safe_load((files("ts") / "configs" / "metrics.yaml").read_text())
    for section in ("ts_metrics", "model_metrics"):
        for kind, metrics in ts_config[section].items():
            types.update((m["name"], kind) for m in metrics)
    types.update(dict.fromkeys(COUNTERS, "counter"))
    return types


def test_the_agent_publishes_counters_and_gauges_only(plan: dict[str, Any]) -> None:
    """The CloudWatch agent drops Prometheus histograms (and its EC2 mode has no use for a summary's quantiles)."""
    agent, _ = agent_configuration(plan)
    published = {s.strip("^$") for d in emf(agent)["metric_declaration"] for s in d["metric_selectors"]}
    types = exported_types()
    assert types["gateway_request_duration_seconds"] == "histogram", "the registry is read"
    wrong = {name: types[name] for name in published if name in types and types[name] not in ("counter", "gauge")}
    assert not wrong, f"the agent would drop these: {wrong}"
    missing = {name for name in published if name not in types}
    assert not missing, f"published but exported by nothing: {missing}"


def alarm_metrics(alarm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """query id -> metric of an alarm's metric queries (expressions left out)."""
    return {q["id"]: q["metric"][0] for q in alarm["metric_query"] if q["metric"]}


def test_alarms_go_to_the_topic_with_their_thresholds(plan: dict[str, Any], plan_exposed: dict[str, Any]) -> None:
    root = plan["planned_values"]["root_module"]
    alarms = {r["index"]: r["values"] for r in resources(root, "aws_cloudwatch_metric_alarm")}
    assert set(alarms) == {
        "apigw_5xx_rate",
        "apigw_latency_p99",
        "healthy_hosts_below_min",
        "asg_at_max",
        "gateway_503_rate",
        "gateway_504_rate",
    }, "no no-traffic alarm by default"
    expressions = config_resource(plan, "aws_cloudwatch_metric_alarm.this")["expressions"]
    for key in ("alarm_actions", "ok_actions"):
        assert "aws_sns_topic.alarms.arn" in references(expressions[key]), key
    assert not resources(root, "aws_sns_topic_subscription"), "no subscription without alarm_email"
    for alarm in alarms.values():
        assert alarm["evaluation_periods"] * 60 <= 86400
        assert alarm["datapoints_to_alarm"] <= alarm["evaluation_periods"]
        assert sum(bool(q["return_data"]) for q in alarm["metric_query"]) == 1, "one series is compared"
    five = alarms["apigw_5xx_rate"]
    (errors,) = alarm_metrics(five).values()
    assert (errors["metric_name"], errors["stat"], five["threshold"]) == ("5XXError", "Average", 0.05)
    assert errors["dimensions"] == {"ApiName": "image-classification-api-prod", "Stage": "api"}
    assert (five["evaluation_periods"], five["datapoints_to_alarm"]) == (5, 3)
    p99 = alarms["apigw_latency_p99"]
    (latency,) = alarm_metrics(p99).values()
    assert (latency["metric_name"], latency["stat"], p99["threshold"]) == ("Latency", "p99", 20000)
    healthy = alarms["healthy_hosts_below_min"]
    assert (healthy["comparison_operator"], healthy["threshold"]) == ("LessThanThreshold", 2), "the group's minimum"
    names = {key: m["metric_name"] for key, m in alarm_metrics(healthy).items()}
    assert names == {"healthy": "HealthyHostCount", "standby": "GroupStandbyInstances"}
    at_max = alarms["asg_at_max"]
    names = {key: m["metric_name"] for key, m in alarm_metrics(at_max).items()}
    assert names == {"in_service": "GroupInServiceInstances", "max_size": "GroupMaxSize"}
    asg = one(root, "aws_autoscaling_group.this")
    assert {"GroupInServiceInstances", "GroupMaxSize", "GroupStandbyInstances"} <= set(asg["enabled_metrics"])
    for status in ("503", "504"):
        alarm = alarms[f"gateway_{status}_rate"]
        assert alarm["threshold"] == 5
        assert alarm_metrics(alarm)["failed"]["dimensions"] == {"job": "gateway", "status": status}

    root = plan_exposed["planned_values"]["root_module"]
    (subscription,) = [r["values"] for r in resources(root, "aws_sns_topic_subscription")]
    assert (subscription["protocol"], subscription["endpoint"]) == ("email", "ops@example.com")
    quiet = one(root, 'aws_cloudwatch_metric_alarm.this["no_traffic"]')
    (requests,) = alarm_metrics(quiet).values()
    assert (requests["metric_name"], requests["stat"], requests["period"] * quiet["evaluation_periods"]) == (
        "Count",
        "Sum",
        30 * 60,
    )
    assert quiet["treat_missing_data"] == "breaching", "no request at all means no data point at all"
    body = json.loads(one(root, "aws_cloudwatch_dashboard.this")["dashboard_body"])
    (alarm_widget,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert f"{ALARM_ARN}image-classification-api-prod-no-traffic" in alarm_widget["properties"]["alarms"]


def test_dashboard_shows_traffic_errors_latency_per_stage_and_capacity(plan: dict[str, Any]) -> None:
    body = json.loads(one(plan["planned_values"]["root_module"], "aws_cloudwatch_dashboard.this")["dashboard_body"])
    titles = [w["properties"]["title"] for w in body["widgets"]]
    for view in ("Traffic", "Errors", "Latency", "Capacity"):
        assert any(t.startswith(view) for t in titles), view
    names = {name for _, _, name, _ in used_metrics(plan)}
    stages = {
        "IntegrationLatency",
        "ts_queue_latency_microseconds",
        *COUNTERS,
    }
    assert stages <= names, "gateway (and below), TorchServe queue, decode + preprocess, inference"
    capacity = {
        "GroupInServiceInstances",
        "gateway_upstream_slots",
        "gateway_upstream_in_flight",
        "gateway_requests_in_flight",
    }
    assert capacity <= names
    (alarm_widget,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    alarm_names = {
        r["values"]["alarm_name"]
        for r in resources(plan["planned_values"]["root_module"], "aws_cloudwatch_metric_alarm")
    }
    assert set(alarm_widget["properties"]["alarms"]) == {f"{ALARM_ARN}{name}" for name in alarm_names}


# One value per validated variable that its `validation` block must refuse (HCL, as `-var` takes it).
INVALID = {
    "project_name": "X",
    "environment": "Prod!",
    "aws_region": "useast1",
    "aws_endpoint_url": "ftp://127.0.0.1",
    "vpc_cidr": "10.0.0.0/8",
    "availability_zones": '["us-east-1a"]',
    "ami_ssm_parameter": "/custom/ami",
    "ami_id": "ami-xyz",
    "instance_type": "huge",
    "root_volume_size_gb": "10",
    "asg_min_size": "51",
    "asg_max_size": "0",
    "asg_desired_capacity": "100",
    "cpu_target_utilization": "95",
    "health_check_grace_period": "30",
    "wait_for_capacity_timeout": "5 minutes",
    "lb_health_check_interval_s": "4",
    "lb_unhealthy_threshold": "1",
    "lb_healthy_threshold": "11",
    "drain_margin_s": "-1",
    "compose_file_path": " ",
    "rollout_script_path": " ",
    "compose_version": "1.29.2",
    "gateway_port": "80",
    "gateway_api_key_hashes": '["not-a-sha256"]',
    "serve_image": "Not An Image",
    "gateway_image": "Not An Image",
    "log_retention_days": "2",
    "stage_name": "bad stage",
    "api_throttle_rate_limit": "0",
    "api_throttle_burst_limit": "0",
    "api_quota_limit": "0",
    "api_quota_period": "YEAR",
    "stage_throttle_rate_limit": "0",
    "stage_throttle_burst_limit": "0",
    "api_integration_timeout_ms": "30000",
    "alarm_email": "ops-at-example.com",
    "torchserve_metrics_port": "80",
    "metrics_scrape_interval_s": "45",
    "alarm_error_rate_percent": "0",
    "alarm_latency_p99_ms": "29000",
    "no_traffic_alarm_minutes": "7",
    "engine_precision": "bf16",
}


def validation_messages() -> dict[str, list[str]]:
    """variable name -> the error_message of each of its validation blocks, read from infra/variables.tf."""
    messages: dict[str, list[str]] = {}
    name = None
    for line in (INFRA / "variables.tf").read_text().splitlines():
        if match := re.match(r'^variable "(\w+)"', line):
            name = match.group(1)
        elif match := re.match(r'^\s*error_message\s*=\s*"(.*)"\s*$', line):
            assert name is not None
            messages.setdefault(name, []).append(match.group(1).replace('\\"', '"'))
    return messages


# Validations that compare with another variable are not evaluated while that one is invalid too: each of
# these gets a plan of its own, beside valid defaults; all the others share one plan.
DEPENDENT = ["asg_max_size", "asg_desired_capacity", "alarm_latency_p99_ms"]


def test_every_validated_variable_has_a_bad_value_here() -> None:
    assert set(validation_messages()) == set(INVALID), "give every validated variable a bad value in INVALID"


@pytest.mark.parametrize("group", ["independent", *DEPENDENT])
def test_input_validations_refuse_bad_values(workdir: Path, tf_env: dict[str, str], group: str) -> None:
    """Each variable's `validation` block, exercised: a plan with a bad value for each validated variable
    fails with every one of their error messages (a validation that lets its bad value through is named)."""
    names = [name for name in INVALID if name not in DEPENDENT] if group == "independent" else [group]
    proc = tf_plan(workdir, tf_env, "-refresh=false", *(f"-var={name}={INVALID[name]}" for name in names), check=False)
    assert proc.returncode != 0
    errors = " ".join(proc.stderr.split())
    messages = validation_messages()
    missed = [name for name in names for text in messages[name] if " ".join(text.split()) not in errors]
    assert not missed, f"these validations let their bad value through: {missed}\n{proc.stderr[-3000:]}"


def test_tfvars_example_passes_validation(workdir: Path, tf_env: dict[str, str]) -> None:
    example = workdir / "example.tfvars"
    shutil.copyfile(INFRA / "terraform.tfvars.example", example)
    proc = tf_plan(workdir, tf_env, "-refresh=false", f"-var-file={example}", check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Plan:" in proc.stdout


# ---------------------------------------------------------------------------------------
# apply + destroy against moto
# ---------------------------------------------------------------------------------------


def test_apply_then_destroy(workdir: Path, tf_env: dict[str, str], plan: dict[str, Any], moto_url: str) -> None:
    import boto3  # installed with moto[server]

    tf(workdir, tf_env, "apply", "-input=false", "-no-color", "-parallelism=10", "tfplan", timeout=APPLY_TIMEOUT)
    state = show_json(workdir, tf_env)
    root = state["values"]["root_module"]

    private_ids = {r["values"]["id"] for r in resources(root, "aws_subnet") if ".private[" in r["address"]}
    public_ids = {r["values"]["id"] for r in resources(root, "aws_subnet") if ".public[" in r["address"]}
    assert len(private_ids) == 2 and len(public_ids) == 2

    asg = one(root, "aws_autoscaling_group.this")
    assert set(asg["vpc_zone_identifier"]) == private_ids
    assert asg["target_group_arns"] == [one(root, "aws_lb_target_group.gateway")["arn"]]
    nlb = one(root, "aws_lb.internal")
    assert nlb["internal"] is True and nlb["load_balancer_type"] == "network"
    assert one(root, "aws_api_gateway_vpc_link.this")["target_arns"] == [nlb["arn"]]
    proxy = one(root, "aws_api_gateway_integration.proxy")
    assert proxy["connection_type"] == "VPC_LINK"
    assert proxy["uri"] == f"http://{nlb['dns_name']}:80/{{proxy}}"
    usage_plan = one(root, "aws_api_gateway_usage_plan.this")
    assert usage_plan["throttle_settings"][0]["rate_limit"] == 20
    assert usage_plan["quota_settings"][0]["limit"] == 100000
    stage = one(root, "aws_api_gateway_stage.this")
    assert stage["access_log_settings"][0]["destination_arn"] == one(root, "aws_cloudwatch_log_group.api_access")["arn"]
    assert (
        one(root, "aws_api_gateway_usage_plan_key.default")["key_id"]
        == one(root, "aws_api_gateway_api_key.default")["id"]
    )

    # Instance role: only SSM core as a managed policy; the inline policy names its own resources.
    attachments = [r["values"]["policy_arn"] for r in resources(root, "aws_iam_role_policy_attachment")]
    assert "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore" in attachments
    inline = json.loads(one(root, "aws_iam_role_policy.instance")["policy"])
    actions = set()
    for statement in inline["Statement"]:
        res = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert "*" not in res, statement
        actions.update(statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    completes = [st for st in inline["Statement"] if "autoscaling:CompleteLifecycleAction" in str(st["Action"])]
    assert [st["Resource"] for st in completes] == [asg["arn"]], "only its own group's termination wait"
    assert actions == {
        "autoscaling:CompleteLifecycleAction",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "logs:DescribeLogStreams",
        "ssm:GetParameter",
        "ssm:GetParameters",
        "kms:Decrypt",
    }

    outputs = state["values"]["outputs"]
    assert outputs["invoke_url"]["value"].startswith("https://")
    assert outputs["invoke_url"]["value"].endswith("/api")
    assert outputs["api_key_id"]["value"] == one(root, "aws_api_gateway_api_key.default")["id"]
    assert outputs["autoscaling_group_name"]["value"] == "image-classification-api-prod"
    assert outputs["log_group_name"]["value"] == "/image-classification-api/prod/containers"

    # What the emulator actually holds: the group launched its instances into private subnets.
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    autoscaling = session.client("autoscaling", endpoint_url=moto_url)
    ec2 = session.client("ec2", endpoint_url=moto_url)
    (group,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["image-classification-api-prod"])[
        "AutoScalingGroups"
    ]
    instance_ids = [i["InstanceId"] for i in group["Instances"]]
    assert len(instance_ids) == 2
    reservations = ec2.describe_instances(InstanceIds=instance_ids)["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    assert {i["SubnetId"] for i in instances} <= private_ids
    assert all(not i.get("PublicIpAddress") for i in instances)
    tags = [{t["Key"]: t["Value"] for t in i.get("Tags", [])} for i in instances]
    assert all(t.get("Project") == "image-classification-api" for t in tags), tags
    (hook,) = autoscaling.describe_lifecycle_hooks(AutoScalingGroupName="image-classification-api-prod")[
        "LifecycleHooks"
    ]
    assert (hook["LifecycleTransition"], hook["HeartbeatTimeout"], hook["DefaultResult"]) == (
        "autoscaling:EC2_INSTANCE_TERMINATING",
        DEFAULT_DRAIN["hook"],
        "CONTINUE",
    )
    elbv2 = session.client("elbv2", endpoint_url=moto_url)
    tg_attributes = {
        a["Key"]: a["Value"]
        for a in elbv2.describe_target_group_attributes(TargetGroupArn=asg["target_group_arns"][0])["Attributes"]
    }
    assert tg_attributes["deregistration_delay.timeout_seconds"] == str(DEFAULT_DRAIN["deregistration"])
    ssm = session.client("ssm", endpoint_url=moto_url)
    stored = ssm.get_parameter(Name="/image-classification-api/prod/serve_image", WithDecryption=True)["Parameter"]
    assert (stored["Type"], stored["Value"]) == ("SecureString", SERVE_IMAGE)

    # Observability: the agent's configuration readable by the instance role, the alarms, the topic, the dashboard.
    readable = [st["Resource"] for st in inline["Statement"] if st["Sid"] == "ReadRuntimeConfig"][0]
    for name in ("cloudwatch_agent_config", "cloudwatch_agent_prometheus"):
        param = ssm.get_parameter(Name=f"{PREFIX}/{name}")["Parameter"]
        assert param["ARN"] in readable, name
    (agent_config,) = [
        r["values"]["value"]
        for r in resources(root, "aws_ssm_parameter")
        if r["values"]["name"] == f"{PREFIX}/cloudwatch_agent_config"
    ]
    assert ssm.get_parameter(Name=f"{PREFIX}/cloudwatch_agent_config")["Parameter"]["Value"] == agent_config
    writable = [st["Resource"] for st in inline["Statement"] if st["Sid"] == "WriteOwnLogs"][0]
    assert one(root, "aws_cloudwatch_log_group.metrics")["arn"] in writable
    cloudwatch = session.client("cloudwatch", endpoint_url=moto_url)
    alarms = cloudwatch.describe_alarms(AlarmNamePrefix="image-classification-api-prod-")["MetricAlarms"]
    topic = one(root, "aws_sns_topic.alarms")["arn"]
    assert {a["AlarmName"].removeprefix("image-classification-api-prod-") for a in alarms} == {
        "apigw-5xx-rate",
        "apigw-latency-p99",
        "healthy-hosts-below-min",
        "asg-at-max",
        "gateway-503-rate",
        "gateway-504-rate",
    }
    assert all(a["AlarmActions"] == [topic] and a["OKActions"] == [topic] for a in alarms)
    assert {t["TopicArn"] for t in session.client("sns", endpoint_url=moto_url).list_topics()["Topics"]} == {topic}
    dashboard = cloudwatch.get_dashboard(DashboardName="image-classification-api-prod")
    assert json.loads(dashboard["DashboardBody"]) == json.loads(
        one(root, "aws_cloudwatch_dashboard.this")["dashboard_body"]
    )

    tf(
        workdir,
        tf_env,
        "destroy",
        "-auto-approve",
        "-input=false",
        "-no-color",
        "-parallelism=10",
        timeout=APPLY_TIMEOUT,
    )
    after = show_json(workdir, tf_env)
    assert not resources(after.get("values", {}).get("root_module", {})), "state must be empty after destroy"
    assert not autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["image-classification-api-prod"])[
        "AutoScalingGroups"
    ]
