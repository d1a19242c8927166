"""The CPU a benchmark ran on: model name, cores, and the instruction sets that decide which engine is fast.

INT8 inference leans on VNNI (AVX-512 VNNI or AVX-VNNI: one instruction per 4-way int8 dot product) and on
AMX where present; without either (AVX2 only), ONNX Runtime's int8 kernels gain far less over fp32.
"""

from __future__ import annotations

import os
from typing import TypedDict

from handlers.cpu_features import CPUINFO, FEATURES, features, first_processor

__all__ = ["FEATURES", "Cpu", "describe", "kind", "line", "this_cpu"]


class Cpu(TypedDict):
    model: str
    cpus: int | None
    features: dict[str, bool]  # FEATURES' names → present
    kind: str  # see kind()


def describe(cpuinfo: str) -> Cpu:
    """Model name and features from the text of /proc/cpuinfo (the first processor's entry)."""
    fields = first_processor(cpuinfo)
    have = features(frozenset(fields.get("flags", "").split()))
    return {
        "model": fields.get("model name", "unknown"),
        "cpus": os.cpu_count(),
        "features": have,
        "kind": kind(have),
    }


def kind(features: dict[str, bool]) -> str:
    """The CPU kind docs/benchmarks.md's tables are per: what decides INT8's speed."""
    if features["AMX"]:
        return "AMX"
    if features["VNNI"]:
        return "VNNI"
    return "AVX2" if features["AVX2"] else "pre-AVX2"


def this_cpu() -> Cpu:
    return describe(CPUINFO.read_text() if CPUINFO.exists() else "")


def line(cpu: Cpu) -> str:
    have = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in cpu["features"].items())
    return f"CPU: {cpu['model']}, {cpu['cpus']} cores, {have} (kind: {cpu['kind']})"
