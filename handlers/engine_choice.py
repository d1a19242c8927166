"""Which engines a worker may serve, in which order: `engine: auto`, the precision policy and the CPU's flags.

The archive names an engine, or `auto`; the precision policy (POLICIES, one knob: the archive's `precision`,
overridden by the environment's POLICY_ENV at worker start) bounds what may be served:

- `exact`: fp32 only;
- `near-fp32`: also bf16, where the CPU computes it in hardware (AVX-512 BF16 or AMX);
- `int8`: also the quantised model: OpenVINO's and ONNX Runtime's where the CPU has VNNI or AMX, ONNX
  Runtime's alone on AVX2 without VNNI (the one measured there), none on older CPUs.

For `auto` the order is fixed per CPU flags, fastest first as measured (docs/model.md, "Engines"): int8
(OpenVINO's, then ONNX Runtime's), OpenVINO bf16, then ONNX Runtime fp32, the reference, always last and always
allowed. The worker serves the first candidate whose gate passes on its CPU (handlers/gate.py); it does not
time anything at start. A named engine is tried first and falls back to fp32 the same way.

Pure logic on the flags, so it is tested for any CPU on any CPU (tests/unit/test_engine_choice.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from handlers.cpu_features import features

AUTO = "auto"
FALLBACK = "onnx"  # fp32, the reference the build verified against PyTorch; served when every other fails
POLICIES = ("exact", "near-fp32", "int8")  # each allows what the ones before it allow
ALLOWED = {"exact": {"fp32"}, "near-fp32": {"fp32", "bf16"}, "int8": {"fp32", "bf16", "int8"}}
POLICY_ENV = "ENGINE_PRECISION"  # at worker start: exact | near-fp32 | int8, over the archive's `precision`
# What each engine of handlers/engines.py computes in (the tests assert the same names).
PRECISION = {
    "onnx": "fp32",
    "onnx-int8": "int8",
    "openvino-fp32": "fp32",
    "openvino-bf16": "bf16",
    "openvino-int8": "int8",
    "eager": "fp32",
}
INT8_ENGINES = ("openvino-int8", "onnx-int8")  # need the archive's model.int8.onnx


class PolicyError(ValueError):
    """The precision policy is not one of POLICIES."""


def policy(archive: str, environ: Mapping[str, str]) -> str:
    """The policy in force: the environment's POLICY_ENV when set, else the archive's."""
    chosen = environ.get(POLICY_ENV) or archive
    if chosen not in POLICIES:
        source = POLICY_ENV if environ.get(POLICY_ENV) else "the archive's precision"
        raise PolicyError(f"{source} is {chosen!r}; choose one of {', '.join(POLICIES)}")
    return chosen


def preference(flags: frozenset[str]) -> list[str]:
    """Every engine `auto` considers on a CPU with these /proc/cpuinfo flags, fastest first."""
    have = features(flags)
    if have["VNNI"] or have["AMX"]:
        order = list(INT8_ENGINES)  # OpenVINO's int8 measured faster than ONNX Runtime's on VNNI and on AMX
    elif have["AVX2"]:
        order = ["onnx-int8"]  # measured 2.0x fp32's forward pass on AVX2 without VNNI; OpenVINO's is not
    else:
        order = []
    if have["BF16"]:
        order.append("openvino-bf16")
    return [*order, FALLBACK]


@dataclass(frozen=True)
class Plan:
    """The candidates to gate in order (FALLBACK last), and why each other engine was left out."""

    candidates: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def plan(engine: str, policy_name: str, flags: frozenset[str], has_int8_model: bool) -> Plan:
    """The candidates for the archive's `engine` (a name or AUTO) under `policy_name` on this CPU."""
    have = features(flags)
    wanted = preference(flags) if engine == AUTO else list(dict.fromkeys([engine, FALLBACK]))
    candidates, skipped = [], {}
    for name in wanted:
        precision = PRECISION[name]
        if name != FALLBACK and precision not in ALLOWED[policy_name]:
            skipped[name] = f"precision policy {policy_name} does not allow {precision}"
        elif precision == "bf16" and not have["BF16"]:
            skipped[name] = "this CPU has no bf16 in hardware (AVX-512 BF16 or AMX)"
        elif name in INT8_ENGINES and not has_int8_model:
            skipped[name] = "this archive has no INT8 model (build it with --engine onnx-int8 or auto)"
        else:
            candidates.append(name)
    return Plan(candidates, skipped)
