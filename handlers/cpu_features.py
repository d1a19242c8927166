"""The CPU's instruction sets that decide which engine is fast and which precisions it can run.

Read from /proc/cpuinfo (the first processor's entry). INT8 inference leans on VNNI (AVX-512 VNNI or
AVX-VNNI: one instruction per 4-way int8 dot product) and on AMX where present; bf16 needs AVX-512 BF16 or
AMX-BF16 in hardware (without them OpenVINO computes in f32 whatever it is asked). Standard library only:
the handler (engine choice) and the benchmarks (their CPU line) both read it.
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# what we report → the /proc/cpuinfo flags that imply it
FEATURES = {
    "AVX2": ("avx2",),
    "AVX-512": ("avx512f",),
    "VNNI": ("avx512_vnni", "avx_vnni"),
    "BF16": ("avx512_bf16", "amx_bf16"),
    "AMX": ("amx_tile", "amx_int8", "amx_bf16"),
}


def first_processor(cpuinfo: str) -> dict[str, str]:
    """The fields of the first processor's entry in the text of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def features(flags: frozenset[str]) -> dict[str, bool]:
    """FEATURES' names → present, for a set of /proc/cpuinfo flags."""
    return {name: any(flag in flags for flag in implied) for name, implied in FEATURES.items()}


def present(flags: frozenset[str]) -> list[str]:
    """The names of FEATURES this CPU has, in FEATURES' order."""
    return [name for name, have in features(flags).items() if have]


def this_cpu() -> dict[str, str]:
    return first_processor(CPUINFO.read_text() if CPUINFO.exists() else "")


def this_cpu_flags() -> frozenset[str]:
    return frozenset(this_cpu().get("flags", "").split())
