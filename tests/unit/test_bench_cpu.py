"""The benchmark's CPU report: the features that decide which engine is fast, read from /proc/cpuinfo."""

from __future__ import annotations

from bench import cpu

VNNI_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_vnni

processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_vnni
"""
AVX2_ONLY = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2686 v4\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "model name\t: Intel Xeon 8488C\nflags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8\n"


def test_features_and_kind() -> None:
    epyc = cpu.describe(VNNI_EPYC)
    assert epyc["model"] == "AMD EPYC 9R14"
    assert epyc["features"] == {"AVX2": True, "AVX-512": True, "VNNI": True, "BF16": True, "AMX": False}
    assert epyc["kind"] == "VNNI"
    xeon = cpu.describe(AVX2_ONLY)
    assert xeon["features"] == {"AVX2": True, "AVX-512": False, "VNNI": False, "BF16": False, "AMX": False}
    assert xeon["kind"] == "AVX2"
    assert cpu.describe(SAPPHIRE_RAPIDS)["kind"] == "AMX"
    assert "VNNI yes" in cpu.line(epyc) and "AMX no" in cpu.line(epyc) and "kind: VNNI" in cpu.line(epyc)


def test_this_machine_is_described() -> None:
    here = cpu.this_cpu()
    assert here["cpus"] >= 1 and set(here["features"]) == set(cpu.FEATURES)
