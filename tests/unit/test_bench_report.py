"""`make bench`'s report: which engines it serves on a CPU, the ceiling, and issue 26's targets as verdicts.

Pure logic on rows and CPU flags, so every CPU kind is tested on any CPU.
"""

from __future__ import annotations

from bench import cpu, report
from bench.lineup import lineup, near_fp32
from bench.load import Row
from tests.unit.test_bench_cpu import AVX2_ONLY, SAPPHIRE_RAPIDS, VNNI_EPYC

ICE_LAKE = "model name\t: Intel Xeon @ 2.80GHz\nflags\t\t: avx2 avx512f avx512_vnni\n"


def flags(cpuinfo: str) -> frozenset[str]:
    return frozenset(cpuinfo.split("flags\t\t:")[1].split("\n")[0].split())


def row(part: str, contender: str, clients: int, img_per_s: float, **cpu_ms: float) -> Row:
    return Row(part, contender, clients, 100, 0, 10.0, img_per_s, 50.0, 80.0, 90.0, dict(cpu_ms))


def test_bf16_is_skipped_with_the_reason_where_the_cpu_has_no_bf16() -> None:
    ice_lake = lineup(flags(ICE_LAKE))
    assert ice_lake.served == ["onnx", "openvino-fp32", "onnx-int8", "openvino-int8", "auto"]
    assert list(ice_lake.skipped) == ["openvino-bf16"] and "no bf16" in ice_lake.skipped["openvino-bf16"]
    assert "openvino-bf16" in lineup(flags(SAPPHIRE_RAPIDS)).served
    assert "openvino-bf16" in lineup(flags(VNNI_EPYC)).served  # AVX-512 BF16 without AMX
    assert lineup(flags(SAPPHIRE_RAPIDS)).skipped == {}


def test_the_lineup_narrows_to_the_engines_asked_in_its_own_order() -> None:
    asked = lineup(flags(AVX2_ONLY), ["auto", "onnx-int8", "openvino-bf16"])
    assert asked.served == ["onnx-int8", "auto"]
    assert list(asked.skipped) == ["openvino-bf16"]
    assert near_fp32("openvino-bf16") and not near_fp32("onnx") and not near_fp32("openvino-int8")


def test_the_ceiling_counts_worker_frontend_and_gateway_not_the_load_generator() -> None:
    served = row("gateway", "onnx-int8", 8, 40.0, worker=30.0, frontend=4.0, gateway=6.0, **{"load generator": 50})
    assert report.ceiling(served, cpus=2) == 2 * 1000 / 40.0
    assert report.ceiling(row("peer", "stock handler", 8, 9.0), cpus=2) is None  # no serving roles measured


def rows_of_a_run(engines: dict[str, float]) -> list[Row]:
    """A run's rows: the stock handler at 10 and 5 img/s, each engine through the gateway at `engines`' rate
    costing 40 ms of serving CPU per image on 2 vCPUs (a ceiling of 50 img/s), and an in-process limit."""
    rows = [row("peer", report.TUNED_STOCK, 8, 10.0), row("peer", report.STOCK, 8, 5.0)]
    for engine, rate in engines.items():
        rows.append(row("gateway", engine, 8, rate, worker=30.0, frontend=4.0, gateway=6.0))
        rows.append(row("limit", f"{engine} batch 4", 1, rate * 1.05))
    return rows


def by_name(verdicts: list[report.Verdict]) -> dict[str, report.Verdict]:
    return {v.name: v for v in verdicts}


def test_on_amx_each_target_is_met_or_not_from_its_ratio() -> None:
    amx = cpu.describe(SAPPHIRE_RAPIDS)
    rows = rows_of_a_run({"onnx": 17.0, "openvino-bf16": 45.0, "onnx-int8": 44.0, "openvino-int8": 61.0})
    summary = report.ratios(rows, {}, cpus=2)
    assert summary["int8_best_gateway_c8_vs_tuned_stock_c8"] == 6.1  # the faster INT8 form
    assert summary["openvino-int8_gateway_c8_vs_stock_defaults_c8"] == 61.0 / 5.0
    got = by_name(report.verdicts(summary, amx, skipped={}))
    assert got["openvino-bf16_gateway_c8_vs_tuned_stock_c8"].status == "met"  # 4.5 >= 4
    assert got["int8_best_gateway_c8_vs_tuned_stock_c8"].status == "met"  # 6.1 >= 6
    assert got["int8_best_gateway_c8_vs_tuned_stock_c8 (moonshot)"].status == "NOT met"  # 6.1 < 8
    assert got["onnx_gateway_c8_vs_ceiling"].status == "NOT met"  # 17 of 50
    assert got["openvino-bf16_gateway_c8_vs_ceiling"].status == "met"  # 45 of 50 = 0.9
    assert got["onnx-int8_gateway_c8_vs_onnx-int8_limit"].status == "met"  # 1 / 1.05
    assert got["openvino-fp32_gateway_c8_vs_ceiling"].status == "unmeasured"
    assert got["openvino-fp32_gateway_c8_vs_ceiling"].line().endswith("unmeasured: not served in this run)")
    assert got["int8_best_gateway_c8_vs_tuned_stock_c8"].line() == (
        "int8_best_gateway_c8_vs_tuned_stock_c8: 6.100 (target >= 6.0, met)"
    )


def test_without_amx_the_amx_targets_are_unmeasured_and_the_ceiling_is_still_judged() -> None:
    ice_lake = cpu.describe(ICE_LAKE)
    skipped = lineup(flags(ICE_LAKE)).skipped
    summary = report.ratios(rows_of_a_run({"onnx": 17.0, "onnx-int8": 44.0, "openvino-int8": 45.0}), {}, cpus=2)
    got = by_name(report.verdicts(summary, ice_lake, skipped))
    bf16 = got["openvino-bf16_gateway_c8_vs_tuned_stock_c8"]
    assert bf16.status == "unmeasured" and bf16.value is None and "no bf16" in bf16.line()
    int8 = got["int8_best_gateway_c8_vs_tuned_stock_c8"]
    assert int8.status == "unmeasured" and int8.value == 4.5  # shown, not judged: the target is AMX's
    assert "for an AMX CPU; this CPU is VNNI" in int8.line()
    assert got["openvino-int8_gateway_c8_vs_ceiling"].status == "met"  # 45 of 50
    assert got["openvino-bf16_gateway_c8_vs_ceiling"].line().endswith("no bf16 in hardware (AVX-512 BF16 or AMX))")
    # the earlier issue's target for INT8 vs the stock handler follows the CPU kind, and is judged here
    assert got["onnx-int8_gateway_c8_vs_tuned_stock_c8"].target == 3.0
    assert got["onnx-int8_gateway_c8_vs_tuned_stock_c8"].status == "met"
    avx2 = by_name(report.verdicts(summary, cpu.describe(AVX2_ONLY), skipped))
    assert avx2["onnx-int8_gateway_c8_vs_tuned_stock_c8"].target == 2.0


def test_the_report_prints_the_cpu_features_and_the_skipped_engines() -> None:
    ice_lake = cpu.describe(ICE_LAKE)
    skipped = lineup(flags(ICE_LAKE)).skipped
    text = report.table(rows_of_a_run({"onnx-int8": 44.0}), ice_lake, skipped, ["a target line"])
    first = text.splitlines()[0]
    assert first.startswith("CPU: Intel Xeon @ 2.80GHz") and "VNNI yes" in first and "AMX no" in first
    assert "skipped openvino-bf16: this CPU has no bf16" in text
    assert "| gateway | onnx-int8 | 8 | 44.00 |" in text and "| 50.0 |" in text  # the row and its ceiling
    assert text.endswith("- a target line")


def test_a_run_on_a_busy_machine_says_so() -> None:
    assert report.busy(0.4, cpus=2) is None
    warning = report.busy(4.96, cpus=2)
    assert warning is not None and "load average 4.96 on 2 vCPUs" in warning
