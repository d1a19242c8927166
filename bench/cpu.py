"""The CPU a benchmark ran on: model name, cores, and the instruction sets that decide which engine is fast.

INT8 inference leans on VNNI (AVX-512 VNNI or AVX-VNNI: one instruction per 4-way int8 dot product) and on
AMX where present; without either (AVX2 only), ONNX Runtime's int8 kernels gain far less over fp32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

# what we report → the /proc/cpuinfo flags that imply it
FEATURES = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx_vnni"),
    "BF16": ("avx512_bf16",),
    "AMX": ("amx_tile", "amx_int8", "amx_bf16"),
}


class Cpu(TypedDict):
    model: str
    cpus: int | None
    features: dict[str, bool]  # FEATURES' names → present
    kind: str  # see kind()


def describe(cpuinfo: str) -> Cpu:
    """Model name and features from the text of /proc/cpuinfo (the first processor's entry)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    features = {name: any(flag in flags for flag in implied) for name, implied in FEATURES.items()}
    return {
        "model": fields.get("model name", "unknown"),
        "cpus": os.cpu_count(),
        "features": features,
        "kind": kind(features),
    }


def kind(features: dict[str, bool]) -> str:
    """The CPU kind docs/benchmarks.md's tables are per: what decides INT8's speed."""
    if features["AMX"]:
        return "AMX"
    if features["VNNI"]:
        return "VNNI"
    return "AVX2" if features["AVX2"] else "pre-AVX2"


def this_cpu() -> Cpu:
    path = Path("/proc/cpuinfo")
    return describe(path.read_text() if path.exists() else "")


def line(cpu: Cpu) -> str:
    have = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in cpu["features"].items())
    return f"CPU: {cpu['model']}, {cpu['cpus']} cores, {have} (kind: {cpu['kind']})"
