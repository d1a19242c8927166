"""What `make bench` makes of its measurements: the issue's ratios and their verdicts, the markdown table,
the plot, and bench/results/<stamp>.json (.md, .png) with all of it. Measures nothing itself.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import cpu
from bench.inputs import ENGINES
from bench.load import Row
from modelserver.paths import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"
# (ratio, target) as in the issue; INT8 vs the tuned stock handler is 3x on a VNNI/AMX CPU, 2x otherwise
TARGETS = {"int8_gateway_c8_vs_int8_limit": 0.85, "fp32_gateway_c8_vs_fp32_limit": 0.90}


def at(rows: list[Row], part: str, concurrency: int, contender: str | None = None) -> Row:
    return next(r for r in rows if r.part == part and r.concurrency == concurrency and contender in (None, r.contender))


def limit(rows: list[Row], engine: str) -> float:
    """An engine's in-process limit: its best batch size."""
    return max(r.img_per_s for r in rows if r.part == "limit" and r.contender.rsplit(" batch", 1)[0] == engine)


def ratios(rows: list[Row], large: dict[str, float]) -> dict[str, float]:
    int8_8, fp32_8 = at(rows, "gateway", 8, "onnx-int8"), at(rows, "gateway", 8, "onnx")
    tuned8, stock8 = at(rows, "peer", 8, "stock handler, 1 worker"), at(rows, "peer", 8, "stock handler")
    stub = {c: at(rows, "overhead", c, "gateway + stub") for c in (1, 8)}
    bare = {c: at(rows, "overhead", c, "bare starlette") for c in (1, 8)}
    return {
        "int8_gateway_c8_vs_tuned_stock_c8": int8_8.img_per_s / tuned8.img_per_s,
        "int8_gateway_c8_vs_int8_limit": int8_8.img_per_s / limit(rows, "onnx-int8"),
        "fp32_gateway_c8_vs_fp32_limit": fp32_8.img_per_s / limit(rows, "onnx"),
        "fp32_gateway_c8_vs_tuned_stock_c8": fp32_8.img_per_s / tuned8.img_per_s,
        "int8_gateway_c8_vs_stock_defaults_c8": int8_8.img_per_s / stock8.img_per_s,
        "overhead_p50_added_ms_c1": stub[1].p50_ms - bare[1].p50_ms,
        "overhead_rps_vs_bare_c8": stub[8].img_per_s / bare[8].img_per_s,
        "large_12mp_p50_vs_0_5mp_p50": large["12mp"] / large["0.5mp"],
    }


def verdicts(summary: dict[str, float], machine: cpu.Cpu) -> list[str]:
    """The issue's targets against this run's ratios, the stock-handler target set by the CPU's kind."""
    vs_stock = 3.0 if machine["kind"] in ("VNNI", "AMX") else 2.0
    targets = {"int8_gateway_c8_vs_tuned_stock_c8": vs_stock, **TARGETS}
    return [
        f"{name}: {summary[name]:.3f} (target >= {target}, {'met' if summary[name] >= target else 'NOT met'})"
        for name, target in targets.items()
    ]


def plot(rows: list[Row], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    contenders = [
        ("peer", "stock handler"),
        ("peer", "stock handler, 1 worker"),
        *(("gateway", engine) for engine in ENGINES),
    ]
    for part, contender in contenders:
        series = [r for r in rows if r.part == part and r.contender == contender]
        c = [r.concurrency for r in series]
        left.plot(c, [r.img_per_s for r in series], marker="o", label=f"{part} ({contender})")
        right.plot(c, [r.p50_ms for r in series], marker="o", label=f"{contender} p50")
    for engine, style in zip(ENGINES, (":", "-."), strict=True):
        left.axhline(limit(rows, engine), color="grey", linestyle=style, label=f"{engine} in-process limit")
    left.set(xlabel="concurrent clients", ylabel="images/s", title="Throughput")
    right.set(xlabel="concurrent clients", ylabel="ms", title="Latency", yscale="log")
    left.legend(fontsize=8)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def table(rows: list[Row], machine: cpu.Cpu) -> str:
    lines = [
        cpu.line(machine),
        "",
        "| part | contender | clients | img/s | p50 ms | p95 ms | p99 ms | errors | CPU ms per request |",
        "|---" * 9 + "|",
    ]
    for r in rows:
        spent = ", ".join(f"{role} {ms:.2f}" for role, ms in r.cpu_ms.items())
        lines.append(
            f"| {r.part} | {r.contender} | {r.concurrency} | {r.img_per_s:.2f} | {r.p50_ms:.1f} "
            f"| {r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.errors} | {spent} |"
        )
    return "\n".join(lines)


def write(
    stamp: str,
    machine: cpu.Cpu,
    run: dict[str, Any],
    summary: dict[str, float],
    targets: list[str],
    rows: list[Row],
) -> Path:
    """bench/results/<stamp>.json (everything), .png (the plot) and .md (the table); the JSON's path."""
    report = {
        "when": stamp,
        "machine": {**machine, "platform": platform.platform(), "python": platform.python_version()},
        **run,
        "summary": summary,
        "targets": targets,
        "rows": [asdict(r) for r in rows],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    plot(rows, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(table(rows, machine) + "\n")
    return out
