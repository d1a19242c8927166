"""The benchmark's CPU report: the features that decide which engine is fast, read from /proc/cpuinfo."""

from __future__ import annotations

from bench import cpu
from bench.report import verdicts

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


def test_the_stock_handler_target_follows_the_cpu_kind() -> None:
    summary = {
        "int8_gateway_c8_vs_tuned_stock_c8": 2.5,
        "int8_gateway_c8_vs_int8_limit": 0.9,
        "fp32_gateway_c8_vs_fp32_limit": 0.8,
    }
    vnni = verdicts(summary, cpu.describe(VNNI_EPYC))
    avx2 = verdicts(summary, cpu.describe(AVX2_ONLY))
    assert vnni[0] == "int8_gateway_c8_vs_tuned_stock_c8: 2.500 (target >= 3.0, NOT met)"
    assert avx2[0] == "int8_gateway_c8_vs_tuned_stock_c8: 2.500 (target >= 2.0, met)"
    assert vnni[1].endswith("(target >= 0.85, met)") and vnni[2].endswith("(target >= 0.9, NOT met)")
