"""`engine: auto` and the precision policy: which engines a worker may serve, in which order, for given CPU flags.

Pure logic on /proc/cpuinfo flags, so every CPU kind is checked on any CPU: the flags below are those of the
CPU kinds CI runs on and the one infra/ deploys to.
"""

from __future__ import annotations

import pytest

from handlers.engine_choice import (
    ALLOWED,
    AUTO,
    FALLBACK,
    POLICIES,
    POLICY_ENV,
    PRECISION,
    PolicyError,
    plan,
    policy,
    preference,
)
from handlers.engines import ENGINES

AVX2_ONLY = frozenset(["fpu", "sse2", "avx", "avx2", "fma"])
AVX512_VNNI = frozenset(["avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"])  # Ice Lake, this project's Xeon
EPYC_BF16 = AVX512_VNNI | {"avx512_bf16"}  # AMD Zen 4: AVX-512 BF16, no AMX
SAPPHIRE_RAPIDS = EPYC_BF16 | {"amx_tile", "amx_int8", "amx_bf16", "avx512_fp16"}  # c7i: AMX
ALDER_LAKE = AVX2_ONLY | {"avx_vnni"}  # AVX-VNNI without AVX-512
CPUS = {"AVX2": AVX2_ONLY, "VNNI": AVX512_VNNI, "BF16": EPYC_BF16, "AMX": SAPPHIRE_RAPIDS, "AVX-VNNI": ALDER_LAKE}
WITHOUT_BF16 = (AVX2_ONLY, AVX512_VNNI, ALDER_LAKE)


def test_every_engine_has_a_precision() -> None:
    assert set(PRECISION) == set(ENGINES)
    assert PRECISION[FALLBACK] == "fp32"


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        ("AVX2", ["onnx-int8", "onnx"]),
        ("VNNI", ["openvino-int8", "onnx-int8", "onnx"]),
        ("AVX-VNNI", ["openvino-int8", "onnx-int8", "onnx"]),
        ("BF16", ["openvino-int8", "onnx-int8", "openvino-bf16", "onnx"]),
        ("AMX", ["openvino-int8", "onnx-int8", "openvino-bf16", "onnx"]),
    ],
)
def test_the_preference_order_per_cpu(cpu: str, expected: list[str]) -> None:
    assert preference(CPUS[cpu]) == expected


@pytest.mark.parametrize(
    ("cpu", "chosen_policy", "candidates"),
    [
        ("AMX", "exact", ["onnx"]),
        ("AMX", "near-fp32", ["openvino-bf16", "onnx"]),
        ("AMX", "int8", ["openvino-int8", "onnx-int8", "openvino-bf16", "onnx"]),
        ("VNNI", "near-fp32", ["onnx"]),  # no bf16 here: near-fp32 is fp32
        ("VNNI", "int8", ["openvino-int8", "onnx-int8", "onnx"]),
        ("AVX2", "int8", ["onnx-int8", "onnx"]),  # OpenVINO's int8 is not measured without VNNI
        ("AVX2", "near-fp32", ["onnx"]),
    ],
)
def test_auto_candidates_are_bounded_by_the_policy(cpu: str, chosen_policy: str, candidates: list[str]) -> None:
    assert plan(AUTO, chosen_policy, CPUS[cpu], has_int8_model=True).candidates == candidates


@pytest.mark.parametrize("flags", WITHOUT_BF16)
@pytest.mark.parametrize("chosen_policy", POLICIES)
@pytest.mark.parametrize("engine", [AUTO, "openvino-bf16"])
def test_never_bf16_on_a_cpu_without_bf16(flags: frozenset[str], chosen_policy: str, engine: str) -> None:
    chosen = plan(engine, chosen_policy, flags, has_int8_model=True)
    assert "openvino-bf16" not in chosen.candidates
    assert all(PRECISION[name] != "bf16" for name in chosen.candidates)
    if engine == "openvino-bf16":  # asked for by name: skipped, and the reason says why
        reason = chosen.skipped["openvino-bf16"]
        assert "bf16" in reason and ("CPU" in reason or "policy" in reason)


@pytest.mark.parametrize("cpu", sorted(CPUS))
@pytest.mark.parametrize("chosen_policy", POLICIES)
def test_fp32_is_always_the_last_candidate_and_nothing_exceeds_the_policy(cpu: str, chosen_policy: str) -> None:
    for engine in (AUTO, *ENGINES):
        for has_int8_model in (True, False):
            chosen = plan(engine, chosen_policy, CPUS[cpu], has_int8_model)
            assert chosen.candidates[-1] == FALLBACK and chosen.candidates.count(FALLBACK) == 1
            assert all(PRECISION[name] in ALLOWED[chosen_policy] for name in chosen.candidates)
            if not has_int8_model:
                assert all(PRECISION[name] != "int8" for name in chosen.candidates)


def test_no_int8_before_avx2() -> None:
    assert preference(frozenset(["fpu", "sse2", "sse4_2", "avx"])) == ["onnx"]


def test_a_named_engine_comes_first_then_fp32() -> None:
    assert plan("openvino-int8", "int8", AVX2_ONLY, has_int8_model=True).candidates == ["openvino-int8", "onnx"]
    assert plan("eager", "exact", AVX2_ONLY, has_int8_model=False).candidates == ["eager", "onnx"]
    assert plan("onnx", "exact", AVX2_ONLY, has_int8_model=False).candidates == ["onnx"]
    refused = plan("onnx-int8", "exact", SAPPHIRE_RAPIDS, has_int8_model=True)
    assert refused.candidates == ["onnx"] and "policy exact" in refused.skipped["onnx-int8"]
    missing = plan(AUTO, "int8", SAPPHIRE_RAPIDS, has_int8_model=False)
    assert "no INT8 model" in missing.skipped["openvino-int8"] and "no INT8 model" in missing.skipped["onnx-int8"]


def test_the_environment_overrides_the_archives_policy() -> None:
    assert policy("near-fp32", {}) == "near-fp32"
    assert policy("near-fp32", {POLICY_ENV: "int8"}) == "int8"
    assert policy("int8", {POLICY_ENV: "exact"}) == "exact"
    assert policy("exact", {POLICY_ENV: ""}) == "exact"  # set but empty: the archive's
    with pytest.raises(PolicyError, match=f"{POLICY_ENV} is 'fast'"):
        policy("exact", {POLICY_ENV: "fast"})
    with pytest.raises(PolicyError, match="archive's precision is 'bf16'"):
        policy("bf16", {})
