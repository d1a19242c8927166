"""`make bench`: one command, one run, the same weights and images for every contender.

    python -m bench.run [--quick] [--seconds S] [--mar PATH] [--profile]

Prints the CPU (model, cores, AVX2 / AVX-512 / VNNI / BF16 / AMX) first and with the results: which
engine is fast depends on it, so compare only ratios measured in one run.

1. limit     in-process decode + preprocess + forward (the handler's concurrent decode, no HTTP):
             eager, ONNX fp32 and ONNX INT8 at batch 1/4/8 in one worker, and each engine at its serving
             defaults (INT8: 2 workers x 1 thread, batch 4); an engine's limit is its best row
2. peer      TorchServe with its stock `image_classifier` handler, same weights: stock settings, and
             tuned (1 worker)
3. direct    TorchServe with our handler, fp32 (`onnx`) and INT8 (`onnx-int8`) archives
4. gateway   our gateway in front of (3), for each engine
5. overhead  the gateway in front of an instant stub backend vs a bare Starlette endpoint reading the upload
6. large     p50 latency through the gateway (fp32), 12 MP JPEG vs 0.5 MP JPEG
7. insight   explanations and embeddings against predictions (fp32; bench/insight.py): fetching the map
             and pooled vector vs the logits alone in process; explain p50 and embed throughput served
plus cold start (TorchServe process start to first successful prediction, fp32 archive).
Concurrency sweep 1, 4, 8, 16. The INT8 archive is built from the fp32 archive's weights with the default
calibration set; for untrained (random) weights its accuracy gate is waived: speed does not depend on the
values, and a random network's agreement means nothing. Writes bench/results/<timestamp>.json, a markdown
table and a PNG plot.
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
from bench.load import Row, measure, percentiles
from bench.processes import CpuMeter
from handlers.engines import STATE_DICT_FILE, load_engine
from handlers.image_handler import DEFAULTS as HANDLER_DEFAULTS
from handlers.imaging import decode, preprocess
from modelserver.archive import ENGINE_DEFAULTS
from modelserver.gateway_process import Upstream
from modelserver.mar import archive_info, unpack
from modelserver.paths import ARCHIVE_NAME, DEFAULT_MAR
from modelserver.ports import Ports, free_port
from modelserver.process_groups import stop_on_sigterm
from modelserver.torchserve import TorchServe

LIMIT_BATCHES = {"eager": (1, 8), "onnx": (1, 4, 8), "onnx-int8": (1, 4, 8)}
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


def bench_limit(model_dirs: dict[str, Path], images: list[bytes], seconds: float) -> list[Row]:
    """Each engine's in-process limit at 1 worker and several batch sizes, and at its serving defaults
    (workers x batch) where those differ."""
    rows = []
    for engine_name, batches in LIMIT_BATCHES.items():
        model_dir = model_dirs.get(engine_name, model_dirs["onnx"])
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


def archives(mar: Path, tmpdir: Path) -> dict[str, Path]:
    """A model store per served engine: `mar` for its own engine, the others built from its weights."""
    meta, settings = archive_info(mar)
    weights = tmpdir / "weights.pth"
    with zipfile.ZipFile(mar) as archive:
        weights.write_bytes(archive.read(STATE_DICT_FILE))
    stores = {}
    for engine in ENGINES:
        if settings["engine"] == engine:
            stores[engine] = mar.parent
            continue
        stores[engine] = tmpdir / f"store-{engine}"
        waive = ["--min-top1-agreement", "0", "--min-top5-overlap", "0", "--max-prob-diff", "1"]
        output = ["--output", str(stores[engine] / ARCHIVE_NAME)]
        cmd = [sys.executable, "-m", "modelserver", "build", "--weights", str(weights), "--engine", engine, *output]
        cmd += waive if meta["untrained"] else []
        print(f"  building the {engine} archive from {mar.name}'s weights", flush=True)
        subprocess.run(cmd, check=True, timeout=900)
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


def bench_ours(engine: str, store: Path, plan: Plan, tmpdir: Path, large: bool) -> tuple[list[Row], dict[str, Row]]:
    """Parts 3 and 4 for one engine: our TorchServe directly, then through the gateway; and part 6 (the large
    photos through the gateway, one client) when `large`."""
    with servers.torchserve(store, tmpdir / f"ts-{engine}") as ours:
        rows = on_torchserve("direct", engine, ours, plan)
        with servers.gateway(ours) as gateway:
            url, meter = f"{gateway.url}/v1/predict", CpuMeter(ours.pid, gateway=gateway.pid)
            rows += plan.sweep("gateway", engine, url, GATEWAY_HEADERS, meter)
            sizes = plan.large.items() if large else ()
            large_rows = {
                name: plan.sweep("large", name, url, GATEWAY_HEADERS, meter, [data], (1,))[0] for name, data in sizes
            }
    return rows, large_rows


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


def measure_all(mar: Path, plan: Plan, tmpdir: Path) -> Measured:
    """Parts 1-7 and the cold start, in order, each server stopped before the next part starts."""
    stores = archives(mar, tmpdir)
    model_dirs = {engine: unpack(store / ARCHIVE_NAME, tmpdir / f"model-{engine}") for engine, store in stores.items()}
    measured = Measured(weights=json.loads((model_dirs["onnx"] / "metadata.json").read_text())["weights"])
    print("1. limit (in-process)", flush=True)
    measured.rows += bench_limit(model_dirs, plan.images, plan.seconds)
    print("2. peer (stock image_classifier handler): stock settings, then tuned to 1 worker", flush=True)
    measured.rows += bench_peer(model_dirs["onnx"], plan, tmpdir)
    for n, engine in enumerate(ENGINES):
        print(f"3-4. ours, {engine}: direct, then through the gateway" + (", large photos" if n == 0 else ""))
        rows, large_rows = bench_ours(engine, stores[engine], plan, tmpdir, large=n == 0)
        measured.rows += [*rows, *large_rows.values()]
        measured.large_p50_ms.update({name: row.p50_ms for name, row in large_rows.items()})
    print("5. gateway overhead (instant stub backend vs bare Starlette)", flush=True)
    measured.rows += bench_overhead(plan, tmpdir)
    measured.insight_rows = insight.run(stores["onnx"], model_dirs["onnx"], plan.images, plan.seconds, tmpdir)
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


def summarise(measured: Measured, machine: cpu.Cpu) -> tuple[dict[str, float], list[str]]:
    """The run's ratios (the issue's, insight's, the cold start) and the targets' verdicts."""
    summary = {
        **report.ratios(measured.rows, measured.large_p50_ms),
        **insight.summary(measured.insight_rows),
        "cold_start_s": measured.cold_start_s,
    }
    return summary, report.verdicts(summary, machine) + insight.verdicts(summary)


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = arguments(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    plan = plan_of(args, stamp)
    machine = cpu.this_cpu()
    print(cpu.line(machine), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        measured = measure_all(args.mar, plan, Path(tmp))
    summary, targets = summarise(measured, machine)
    run = {"weights": measured.weights, "seconds_per_point": plan.seconds}
    out = report.write(stamp, machine, run, summary, targets, measured.rows)
    print(report.table(measured.rows, machine))
    print("\n".join(f"{name}: {value:.3f}" for name, value in summary.items()))
    print("\n".join(targets))
    print(
        f"results: {out} (+ .md table, .png plot)" + (f", profiles in {plan.profile_dir}" if plan.profile_dir else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
