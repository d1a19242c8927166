"""Explanations and embeddings against predictions, on one archive (part 7 of `make bench`).

    python -m bench.insight [--mar PATH] [--seconds S]

1. fetch     in process, ONNX Runtime: the logits alone vs the logits with layer4's map and the pooled
             vector (what /v1/predict and /v1/explain fetch from the same graph), batch 1 and 8
2. served    through the gateway in front of TorchServe: /v1/predict, /v1/explain (json and png) at 1
             client (p50), and /v1/predict vs /v1/embed at 8 clients (throughput)
Contenders take turns (call by call, or in rounds at 8 clients), so that load from other processes on a
shared machine falls on each alike.

The issue's targets: explain p50 <= 1.2x predict p50 at 1 client; embed throughput >= 95 % of predict's.
Prints the CPU with the results; compare only ratios measured in one run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from bench import cpu, servers
from bench.inputs import GATEWAY_HEADERS, photos
from bench.load import Row, measure, percentiles
from bench.processes import CpuMeter
from handlers.engines import ONNX_FILE, OUTPUTS, Engine, load_engine
from handlers.imaging import decode, preprocess
from modelserver.mar import unpack
from modelserver.paths import DEFAULT_MAR

TARGETS = {"explain_json_p50_vs_predict_p50_c1": 1.2, "embed_c8_vs_predict_c8": 0.95}
ROUTES = {
    "predict": "/v1/predict",
    "explain json": "/v1/explain",
    "explain png": "/v1/explain?format=png",
    "embed": "/v1/embed?encoding=base64",
}
LATENCY = ("predict", "explain json", "explain png")  # at 1 client
THROUGHPUT = ("predict", "embed")  # at 8 clients
ROUNDS = 4


def interleaved(runs: dict[str, Callable[[int], object]], seconds: float) -> dict[str, list[float]]:
    """Each contender's latencies, the contenders taking turns call by call (round i runs each on input i), so
    that the load other processes put on a shared machine falls on all of them alike."""
    latencies: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(0)  # warm-up
    started, i = time.perf_counter(), 0
    while time.perf_counter() - started < seconds * len(runs):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run(i)
            latencies[name].append(time.perf_counter() - t0)
        i += 1
    return latencies


def rows_of(part: str, latencies: dict[str, list[float]], per_call: int = 1) -> list[Row]:
    rows = []
    for name, values in latencies.items():
        busy = sum(values)
        row = Row(part, name, 1, len(values) * per_call, 0, busy, len(values) * per_call / busy, *percentiles(values))
        print(f"  {part:8} {name:22}        {row.img_per_s:8.2f}/s  p50 {row.p50_ms:7.1f} ms", flush=True)
        rows.append(row)
    return rows


def logits_only_copy(model_dir: Path, target: Path) -> Path:
    """`model_dir` with its graph cut back to the one output it had before maps and embeddings (`logits`)."""
    import onnx

    shutil.copytree(model_dir, target)
    graph = onnx.load(str(model_dir / ONNX_FILE))
    del graph.graph.output[1:]
    onnx.save(graph, str(target / ONNX_FILE))
    return target


def fetches(before: Engine, engine: Engine, inputs: np.ndarray, batch: int) -> dict[str, Callable[[int], object]]:
    """The three contenders of part 7a on one batch: the logits-only graph, the logits alone, every output."""
    return {
        f"logits-only graph batch {batch}": lambda _: before.run(inputs),
        f"logits batch {batch}": lambda _: engine.run(inputs),
        f"all outputs batch {batch}": lambda _: engine.run_outputs(inputs, list(OUTPUTS)),
    }


def bench_fetch(model_dir: Path, image: bytes, seconds: float, threads: int, tmpdir: Path) -> list[Row]:
    """At batch 1 and 8: the graph with the extra outputs fetching the logits alone (what /v1/predict does),
    fetching every output (/v1/explain and /v1/embed together), and the logits-only graph (before them)."""
    engine = load_engine("onnx", model_dir, threads)
    before = load_engine("onnx", logits_only_copy(model_dir, tmpdir / "logits-only"), threads)
    rows = []
    for batch in (1, 8):
        inputs = np.ascontiguousarray(np.stack([preprocess(decode(image, 10**8))] * batch))
        rows += rows_of("fetch", interleaved(fetches(before, engine, inputs, batch), seconds), batch)
    return rows


def bench_served(gateway_url: str, images: list[bytes], seconds: float, meter: CpuMeter) -> list[Row]:
    """Latency at 1 client, the routes taking turns on the same image; throughput at 8 clients, the two routes
    taking turns in ROUNDS rounds of half the time each."""
    client = httpx.Client(timeout=60, headers=GATEWAY_HEADERS)

    def call(route: str) -> Callable[[int], object]:
        return lambda i: client.post(gateway_url + route, content=images[i % len(images)]).raise_for_status()

    with client:
        rows = rows_of("served", interleaved({name: call(ROUTES[name]) for name in LATENCY}, seconds))
    rounds: dict[str, list[Row]] = {name: [] for name in THROUGHPUT}
    for _ in range(ROUNDS):
        for name in THROUGHPUT:
            rounds[name] += measure(
                "served", name, gateway_url + ROUTES[name], GATEWAY_HEADERS, images, (8,), seconds / 2, meter
            )
    for name, measured in rounds.items():
        images_done, busy = sum(r.images for r in measured), sum(r.seconds for r in measured)
        p50, p95, p99 = (float(np.median([getattr(r, f) for r in measured])) for f in ("p50_ms", "p95_ms", "p99_ms"))
        errors = sum(r.errors for r in measured)
        rows.append(Row("served", name, 8, images_done, errors, busy, images_done / busy, p50, p95, p99))
        print(f"  served   {name:22} c=8 over {ROUNDS} rounds {rows[-1].img_per_s:8.2f}/s", flush=True)
    return rows


def summary(rows: list[Row]) -> dict[str, float]:
    def row(contender: str, clients: int) -> Row:
        return next(r for r in rows if r.part == "served" and r.contender == contender and r.concurrency == clients)

    fetch = {r.contender: r for r in rows if r.part == "fetch"}
    return {
        "explain_json_p50_vs_predict_p50_c1": row("explain json", 1).p50_ms / row("predict", 1).p50_ms,
        "explain_png_p50_vs_predict_p50_c1": row("explain png", 1).p50_ms / row("predict", 1).p50_ms,
        "embed_c8_vs_predict_c8": row("embed", 8).img_per_s / row("predict", 8).img_per_s,
        **{
            f"predict_graph_vs_logits_only_graph_batch{b}": fetch[f"logits batch {b}"].img_per_s
            / fetch[f"logits-only graph batch {b}"].img_per_s
            for b in (1, 8)
        },
        **{
            f"all_outputs_vs_logits_batch{b}": fetch[f"all outputs batch {b}"].img_per_s
            / fetch[f"logits batch {b}"].img_per_s
            for b in (1, 8)
        },
    }


def verdicts(values: dict[str, float]) -> list[str]:
    out = []
    for name, target in TARGETS.items():
        at_most = name.startswith("explain")  # a latency ratio: lower is better
        met = values[name] <= target if at_most else values[name] >= target
        out.append(
            f"{name}: {values[name]:.3f} (target {'<=' if at_most else '>='} {target}, {'met' if met else 'NOT met'})"
        )
    return out


def run(model_store: Path, model_dir: Path, images: list[bytes], seconds: float, tmpdir: Path) -> list[Row]:
    """Both parts on one archive: its model_dir in process, then served (TorchServe + gateway)."""
    print("7a. fetching the map and the pooled vector from the same graph (in process, ONNX fp32)", flush=True)
    rows = bench_fetch(model_dir, images[0], seconds, 2, tmpdir)
    print("7b. predict vs explain vs embed, served (TorchServe + gateway, fp32)", flush=True)
    with servers.torchserve(model_store, tmpdir / "ts-insight") as ours, servers.gateway(ours) as gateway:
        meter = CpuMeter(ours.pid, gateway=gateway.pid)
        rows += bench_served(gateway.url, images, seconds, meter)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.insight", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mar", type=Path, default=DEFAULT_MAR)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    print(cpu.line(cpu.this_cpu()), flush=True)
    images = photos()
    with tempfile.TemporaryDirectory(prefix="bench-insight-") as tmp:
        tmpdir = Path(tmp)
        rows = run(args.mar.parent, unpack(args.mar, tmpdir / "model"), images, args.seconds, tmpdir)
    values = summary(rows)
    print("\n".join(f"{name}: {value:.3f}" for name, value in values.items()))
    print("\n".join(verdicts(values)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
