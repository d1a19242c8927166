"""The default deployment agrees with itself: infra/'s instance type (its vCPUs and cores), the worker layout of the
archive the serve image is built with (workers are fixed in its model-config.yaml; TorchServe's launch line loads
it as it is), and the engine and precision policy the instances' workers start with. Reads the files; no
Terraform, no Docker (docs/model.md, "Which engine by default").
"""

from __future__ import annotations

import re

from handlers.engine_choice import AUTO, PRECISION, plan
from modelserver.archive import ENGINE_DEFAULTS, default_policy
from modelserver.paths import REPO_ROOT

# AWS's published facts for the instance types infra/ defaults to: vCPUs, physical cores, /proc/cpuinfo flags
# that decide the engine (Sapphire Rapids)
INSTANCES = {
    "c7i.xlarge": (4, 2, frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"})),
}


def terraform_default(variable: str) -> str:
    text = (REPO_ROOT / "infra" / "variables.tf").read_text()
    block = text.split(f'variable "{variable}" {{', 1)[1].split("\n}\n", 1)[0]
    match = re.search(r'^\s*default\s*=\s*"([^"]*)"', block, re.MULTILINE)
    assert match, f"infra/variables.tf: {variable} has no string default"
    return match.group(1)


def image_engines() -> dict[str, str]:
    """Where the serve image's engine is chosen → the engine it defaults to."""
    read = {name: (REPO_ROOT / name).read_text() for name in ("Dockerfile.serve", "docker-compose.yml", "Makefile")}
    workflow = (REPO_ROOT / ".github" / "workflows" / "docker.yml").read_text()
    images = (REPO_ROOT / "docker" / "images.sh").read_text()
    found = {
        "Dockerfile.serve": re.findall(r"^ARG ENGINE=(\S+)", read["Dockerfile.serve"], re.MULTILINE),
        "docker-compose.yml": re.findall(r"ENGINE: \$\{SERVE_ENGINE:-([^}]+)\}", read["docker-compose.yml"]),
        "Makefile": re.findall(r"^ENGINE \?= (\S+)", read["Makefile"], re.MULTILINE),
        "docker.yml": re.findall(r"^\s*ENGINE=(\S+)", workflow, re.MULTILINE),
        "images.sh": re.findall(r'engine="\$\{ENGINE:-([^}]+)\}"', images),
    }
    assert all(found.values()), f"an engine default was not found: {found}"
    return {f"{where} #{n}": engine for where, engines in found.items() for n, engine in enumerate(engines)}


def test_the_instance_type_the_image_engine_and_the_precision_policy_agree() -> None:
    vcpus, cores, flags = INSTANCES[terraform_default("instance_type")]
    engines = image_engines()
    assert len(set(engines.values())) == 1, f"the serve image's engine differs between files: {engines}"
    engine = next(iter(engines.values()))
    policy = terraform_default("engine_precision")
    assert policy == default_policy(engine), "infra's ENGINE_PRECISION differs from the image archive's own policy"
    served = plan(engine, policy, flags, has_int8_model=engine != "onnx")
    assert served.candidates[0] == engine, f"{engine} would not be served there: {served.skipped}"
    workers = ENGINE_DEFAULTS[engine]["workers"]
    assert vcpus % workers == 0 and workers <= cores, f"{workers} workers on {vcpus} vCPUs / {cores} cores"


def test_every_engines_layout_fits_the_default_instance_type() -> None:
    """Whichever engine an image is built with, its workers get whole, equal shares of the vCPUs and no more
    workers than cores (one AMX unit per core)."""
    vcpus, cores, flags = INSTANCES[terraform_default("instance_type")]
    for engine, layout in ENGINE_DEFAULTS.items():
        assert vcpus % layout["workers"] == 0 and layout["workers"] <= cores, (engine, layout)
    assert plan(AUTO, "near-fp32", flags, has_int8_model=True).candidates[0] == "openvino-bf16"
    assert PRECISION[plan(AUTO, "int8", flags, has_int8_model=True).candidates[0]] == "int8"


def test_the_launch_line_loads_the_archive_with_its_own_workers() -> None:
    """TorchServe's start-up settings name the archive and nothing that would override its worker layout."""
    for name in ("config.container.properties", "config.properties"):
        settings = (REPO_ROOT / name).read_text()
        assert re.search(r"^load_models=resnet50=resnet50\.mar$", settings, re.MULTILINE), name
        assert not re.search(r"^(models|default_workers_per_model)\s*=", settings, re.MULTILINE), name
