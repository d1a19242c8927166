"""`make bench`: one command, one run, the same weights and images for every contender.

    python -m bench.run [--quick] [--seconds S] [--mar PATH] [--profile] [--engines ENGINE ...]

Prints the CPU (model, cores, AVX2 / AVX-512 / VNNI / BF16 / AMX) first and with the results, and the engines
it skips on that CPU with the reason (bench/lineup.py: bf16 where the CPU has no bf16 in hardware): which engine
is fast depends on it, so compare only ratios measured in one run.

1. limit     in-process decode + preprocess + forward (the handler's concurrent decode, no HTTP): each
             engine (and eager) at a few batch sizes in one worker, and at its serving defaults where those
             have several workers (INT8: 2 workers x 1 thread, batch 4); an engine's limit is its best row
2. peer      TorchServe with its stock `image_classifier` handler, same weights: stock settings, and
             tuned (1 worker)
3. direct    TorchServe with our handler, one archive per engine served side by side: fp32 (`onnx`,
             `openvino-fp32`), bf16 (`openvino-bf16`), INT8 (`onnx-int8`, `openvino-int8`) and `auto`,
             each at its serving defaults (modelserver/archive.py ENGINE_DEFAULTS)
4. gateway   our gateway in front of (3), for each engine
5. overhead  the gateway in front of an instant stub backend vs a bare Starlette endpoint reading the upload
6. large     p50 latency through the gateway (fp32), 12 MP JPEG vs 0.5 MP JPEG
7. insight   explanations and embeddings against predictions (fp32; bench/insight.py): fetching the map
             and pooled vector vs the logits alone in process; explain p50 and embed throughput served
plus cold start (TorchServe process start to first successful prediction, fp32 archive). Parts 6, 7 and the
cold start need `onnx` in the line-up. Concurrency sweep 1, 4, 8, 16. Every engine's archive is the `auto`
archive (the given one if it is `auto`, else one built from its weights with the default calibration set)
with that engine's model-config (modelserver/archive.py `reconfigured`); for untrained (random) weights the
INT8 build gate and the worker-start gate are waived: speed does not depend on the values, and a random
network's agreement means nothing. The report gives issue 26's targets as ratios, each met, NOT met or
unmeasured on this CPU, and each served row's ceiling: vCPUs x 1000 / (CPU ms per image of worker + frontend
+ gateway). Writes bench/results/<timestamp>.json, a markdown table and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from bench import cpu, insight, peer, report, servers
from bench.inputs import ENGINES, GATEWAY_HEADERS, LARGE_PHOTO_SIZE, PHOTO_SIZE, photo, photos
from bench.lineup import Lineup, lineup
from bench.load import Row, measure, percentiles
from bench.processes import CpuMeter
from handlers.cpu_features import this_cpu_flags
from handlers.engine_choice import AUTO
from handlers.engines import INT8_ONNX_FILE, STATE_DICT_FILE, load_engine
from handlers.gate import GATE_FILE
from handlers.image_handler import DEFAULTS as HANDLER_DEFAULTS
from handlers.imaging import decode, preprocess
from modelserver.archive import ENGINE_DEFAULTS, ServingConfig, reconfigured
from modelserver.gateway_process import Upstream
from modelserver.mar import archive_info, unpack
from modelserver.paths import ARCHIVE_NAME, DEFAULT_MAR
from modelserver.ports import Ports, free_port
from modelserver.process_groups import stop_on_sigterm
from modelserver.torchserve import TorchServe

# in-process batch sizes per engine (`auto` has none: it runs one of the others, named in the report)
LIMIT_BATCHES = {
    "eager": (1, 8),
    "onnx": (1, 4, 8),
    "openvino-fp32": (1, 8),
    "openvino-bf16": (1, 8),
    "onnx-int8": (1, 4, 8),
    "openvino-int8": (1, 4, 8),
}
PEERS = (("stock handler", None), ("stock handler, 1 worker", 1))  # (contender, workers: None = TorchServe's)


@dataclass(frozen=True)
class Plan:
    """What every part measures with: the images, the concurrency levels, the seconds per point."""

    seconds: float
    levels: tuple[int, ...]
    images: list[bytes]
    large: dict[str, bytes]  # part 6's photos by size
    profile_dir: Path | None  # py-spy profiles of each point, with --profile

    def sweep(
        self,
        part: str,
        contender: str,
        url: str,
        headers: dict[str, str],
        meter: CpuMeter,
        images: list[bytes] | None = None,
        levels: tuple[int, ...] | None = None,
    ) -> list[Row]:
        """One row per concurrency level (`levels`, default the plan's), POSTing `images` (the plan's) to `url`."""
        images, levels = images or self.images, levels or self.levels
        return measure(part, contender, url, headers, images, levels, self.seconds, meter, self.profile_dir)


@dataclass
class Measured:
    """Everything one run measured, for the report."""

    weights: str
    rows: list[Row] = field(default_factory=list)
    large_p50_ms: dict[str, float] = field(default_factory=dict)
    insight_rows: list[Row] = field(default_factory=list)
    cold_start_s: float = 0.0
    served: dict[str, str] = field(default_factory=dict)  # contender → the engine its workers serve (`auto`'s)


def pipeline(
    model_dir: Path, engine_name: str, images: list[bytes], batch: int, workers: int, seconds: float
) -> tuple[int, list[float], float]:
    """`workers` threads, each what one served worker does for a batch (its own engine with cores / workers
    intra-op threads, its own decode pool), without TorchServe and HTTP; (images, latencies, seconds)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    engines = [load_engine(engine_name, model_dir, threads) for _ in range(workers)]
    warm = np.stack([preprocess(decode(images[0], 10**8))] * batch)
    for engine in engines:
        engine.run(warm)
    counts, latencies = [0] * workers, []
    started = time.perf_counter()

    def loop(n: int) -> None:
        with ThreadPoolExecutor(HANDLER_DEFAULTS["decode_threads"]) as decoders:
            while time.perf_counter() - started < seconds:
                t0 = time.perf_counter()
                chunk = [images[(n + counts[n] + i) % len(images)] for i in range(batch)]
                tensors = list(decoders.map(lambda data: preprocess(decode(data, 10**8)), chunk))
                engines[n].run(np.stack(tensors))
                latencies.append(time.perf_counter() - t0)
                counts[n] += batch

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(loop, range(workers)))
    return sum(counts), latencies, time.perf_counter() - started


def bench_limit(model_dir: Path, engines: list[str], images: list[bytes], seconds: float) -> list[Row]:
    """Each engine's in-process limit at 1 worker and several batch sizes, and at its serving defaults
    (workers x batch) where those differ; eager with the fp32 engines."""
    rows = []
    for engine_name in (["eager"] if "onnx" in engines else []) + [e for e in engines if e in LIMIT_BATCHES]:
        batches = LIMIT_BATCHES[engine_name]
        served = ENGINE_DEFAULTS[engine_name]
        points = [(b, 1) for b in batches]
        if served["workers"] > 1:
            points.append((served["batch_size"], served["workers"]))
        for batch, workers in points:
            done, latencies, elapsed = pipeline(model_dir, engine_name, images, batch, workers, seconds)
            name = f"{engine_name} batch {batch}" + (f" x {workers} workers" if workers > 1 else "")
            row = Row("limit", name, 1, done, 0, elapsed, done / elapsed, *percentiles(latencies))
            print(f"  limit    {row.contender:30} {row.img_per_s:8.2f}/s", flush=True)
            rows.append(row)
    return rows


def auto_archive(mar: Path, tmpdir: Path) -> Path:
    """`mar` when it carries every engine's files (the INT8 model and the gate set), else an `auto` archive built
    from its weights."""
    meta, _ = archive_info(mar)
    with zipfile.ZipFile(mar) as archive:
        if {INT8_ONNX_FILE, GATE_FILE} <= set(archive.namelist()):
            return mar
        weights = tmpdir / "weights.pth"
        weights.write_bytes(archive.read(STATE_DICT_FILE))
    waive = ["--min-top1-agreement", "0", "--min-top5-overlap", "0", "--max-prob-diff", "1"]
    output = tmpdir / "auto" / ARCHIVE_NAME
    cmd = [sys.executable, "-m", "modelserver", "build", "--weights", str(weights), "--engine", AUTO]
    cmd += ["--output", str(output), *(waive if meta["untrained"] else [])]
    print(f"  building an {AUTO} archive from {mar.name}'s weights", flush=True)
    subprocess.run(cmd, check=True, timeout=900)
    return output


def archives(mar: Path, engines: list[str], tmpdir: Path) -> dict[str, Path]:
    """A model store per engine: the `auto` archive with the engine's serving defaults."""
    base = auto_archive(mar, tmpdir)
    precision = archive_info(base)[1]["precision"]
    stores = {}
    for engine in engines:
        stores[engine] = tmpdir / f"store-{engine}"
        config = ServingConfig.for_engine(engine, precision=precision if engine == AUTO else None)
        reconfigured(base, config, stores[engine] / ARCHIVE_NAME)
    return stores


def cold_start(model_store: Path, workdir: Path, image: bytes) -> float:
    server = TorchServe(workdir, model_store, Ports.free())
    started = time.perf_counter()
    server.start()
    try:
        while time.perf_counter() - started < 240:
            try:
                headers = server.inference_headers()
                response = httpx.post(server.predictions_url, content=image, headers=headers, timeout=30)
                if response.status_code == 200:
                    return time.perf_counter() - started
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            time.sleep(0.05)
        raise RuntimeError("no prediction within 240 s")
    finally:
        server.stop()


def on_torchserve(part: str, contender: str, server: TorchServe, plan: Plan) -> list[Row]:
    """Predictions sent to TorchServe directly, at each concurrency level."""
    return plan.sweep(part, contender, server.predictions_url, server.inference_headers(), CpuMeter(server.pid))


def bench_peer(model_dir: Path, plan: Plan, tmpdir: Path) -> list[Row]:
    """Part 2: the same weights behind TorchServe's stock handler, stock settings, then tuned."""
    rows = []
    for n, (contender, workers) in enumerate(PEERS):
        store = peer.build_stock_archive(model_dir, tmpdir / f"peer_store{n}", tmpdir / f"peer_build{n}", workers)
        with servers.torchserve(store, tmpdir / f"ts-peer{n}") as stock:
            rows += on_torchserve("peer", contender, stock, plan)
    return rows


@dataclass
class Ours:
    """Parts 3, 4 and 6 for one engine, and the engine its workers serve (`auto`'s choice on this CPU)."""

    rows: list[Row]
    large: dict[str, Row]
    served: str


def bench_ours(engine: str, store: Path, plan: Plan, tmpdir: Path, large: bool) -> Ours:
    """Parts 3 and 4 for one engine: our TorchServe directly, then through the gateway; and part 6 (the large
    photos through the gateway, one client) when `large`."""
    with servers.torchserve(store, tmpdir / f"ts-{engine}") as ours:
        rows = on_torchserve("direct", engine, ours, plan)
        with servers.gateway(ours) as gateway:
            served = httpx.get(f"{gateway.url}/v1/models", headers=GATEWAY_HEADERS, timeout=30).json()["models"][0][
                "engine"
            ]
            url, meter = f"{gateway.url}/v1/predict", CpuMeter(ours.pid, gateway=gateway.pid)
            rows += plan.sweep("gateway", engine, url, GATEWAY_HEADERS, meter)
            sizes = plan.large.items() if large else ()
            large_rows = {
                name: plan.sweep("large", name, url, GATEWAY_HEADERS, meter, [data], (1,))[0] for name, data in sizes
            }
    return Ours(rows, large_rows, served)


def bench_overhead(plan: Plan, tmpdir: Path) -> list[Row]:
    """Part 5: the gateway in front of an instant stub backend, against a bare Starlette endpoint."""
    key_file = tmpdir / "stub_keys.json"
    key_file.write_text(json.dumps({k: {"key": "stub"} for k in ("inference", "management", "API")}))
    stub_port = free_port()
    stub = Upstream(f"http://127.0.0.1:{stub_port}", f"http://127.0.0.1:{stub_port}", key_file)
    with servers.torchserve_stub(stub_port) as stub_server, servers.gateway(stub) as gateway:
        meter = CpuMeter(gateway=gateway.pid, stub=stub_server.pid)
        rows = plan.sweep("overhead", "gateway + stub", f"{gateway.url}/v1/predict", GATEWAY_HEADERS, meter)
    with servers.uvicorn_app("bench.stubs:bare", free_port()) as bare:
        meter = CpuMeter(bare=bare.pid)
        rows += plan.sweep("overhead", "bare starlette", f"{bare.url}/v1/predict", GATEWAY_HEADERS, meter)
    return rows


def measure_all(mar: Path, plan: Plan, engines: list[str], tmpdir: Path) -> Measured:
    """Parts 1-7 and the cold start, in order, for the `engines` served, each server stopped before the next part
    starts."""
    stores = archives(mar, engines, tmpdir)
    model_dir = unpack(stores[engines[0]] / ARCHIVE_NAME, tmpdir / "model")
    measured = Measured(weights=json.loads((model_dir / "metadata.json").read_text())["weights"])
    print("1. limit (in-process)", flush=True)
    measured.rows += bench_limit(model_dir, engines, plan.images, plan.seconds)
    print("2. peer (stock image_classifier handler): stock settings, then tuned to 1 worker", flush=True)
    measured.rows += bench_peer(model_dir, plan, tmpdir)
    for engine in engines:
        large = engine == "onnx"
        print(f"3-4. ours, {engine}: direct, then through the gateway" + (", large photos" if large else ""))
        ours = bench_ours(engine, stores[engine], plan, tmpdir, large)
        measured.rows += [*ours.rows, *ours.large.values()]
        measured.large_p50_ms.update({name: row.p50_ms for name, row in ours.large.items()})
        measured.served[engine] = ours.served
    print("5. gateway overhead (instant stub backend vs bare Starlette)", flush=True)
    measured.rows += bench_overhead(plan, tmpdir)
    if "onnx" in engines:
        measured.insight_rows = insight.run(stores["onnx"], model_dir, plan.images, plan.seconds, tmpdir)
        measured.rows += measured.insight_rows
        print("cold start", flush=True)
        measured.cold_start_s = cold_start(stores["onnx"], tmpdir / "ts-cold", plan.images[0])
    return measured


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per point, clients 1 and 8")
    parser.add_argument("--seconds", type=float, default=None, help="per measurement point (default 10)")
    parser.add_argument("--mar", type=Path, default=DEFAULT_MAR)
    parser.add_argument("--profile", action="store_true", help="also py-spy profiles: bench/results/<stamp>/")
    parser.add_argument(
        "--engines", nargs="+", choices=ENGINES, default=None, help="serve only these (default: all this CPU runs)"
    )
    return parser.parse_args(argv)


def plan_of(args: argparse.Namespace, stamp: str) -> Plan:
    profile_dir = report.RESULTS / stamp if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True)
    return Plan(
        seconds=args.seconds or (2.0 if args.quick else 10.0),
        levels=(1, 8) if args.quick else (1, 4, 8, 16),
        images=photos(),
        large={"0.5mp": photo(*PHOTO_SIZE, 99), "12mp": photo(*LARGE_PHOTO_SIZE, 99)},
        profile_dir=profile_dir,
    )


def summarise(measured: Measured, machine: cpu.Cpu, skipped: dict[str, str]) -> tuple[dict[str, float], list[str]]:
    """The run's ratios (the issue's, insight's, the cold start) and the targets' verdicts."""
    summary = report.ratios(measured.rows, measured.large_p50_ms, machine["cpus"] or 1)
    lines = [v.line() for v in report.verdicts(summary, machine, skipped)]
    if measured.insight_rows:
        summary.update(insight.summary(measured.insight_rows), cold_start_s=measured.cold_start_s)
        lines += insight.verdicts(summary)
    return summary, lines


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = arguments(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    plan = plan_of(args, stamp)
    machine = cpu.this_cpu()
    chosen: Lineup = lineup(this_cpu_flags(), args.engines)
    print(report.features_line(machine, chosen.skipped), flush=True)
    if not chosen.served:
        print("no engine to serve on this CPU", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        measured = measure_all(args.mar, plan, chosen.served, Path(tmp))
    summary, targets = summarise(measured, machine, chosen.skipped)
    warning = report.busy(load_before[0], machine["cpus"] or 1)
    targets = [warning, *targets] if warning else targets
    run = {
        "weights": measured.weights,
        "seconds_per_point": plan.seconds,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "skipped": chosen.skipped,
        "served": measured.served,
    }
    out = report.write(stamp, machine, run, summary, targets, measured.rows)
    print(report.table(measured.rows, machine, chosen.skipped, targets))
    print(f"served (what each contender's workers run): {measured.served}; load average before {load_before}")
    print("\n".join(f"{name}: {value:.3f}" for name, value in summary.items()))
    print(
        f"results: {out} (+ .md table, .png plot)" + (f", profiles in {plan.profile_dir}" if plan.profile_dir else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
