"""`make bench`: throughput and latency of the model in-process, through TorchServe, and through the gateway.

    python -m bench.run [--quick] [--seconds S] [--mar PATH]

Parts (same archive, same images for every contender):
  limit    in-process decode + preprocess + forward, eager and ONNX, batch 1/4/8, no HTTP
  direct   TorchServe with our handler, concurrency sweep
  gateway  through the gateway, concurrency sweep
  cold     TorchServe process start to first successful prediction
Writes bench/results/<timestamp>.json and prints a markdown table. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from gateway.auth import key_hash
from handlers.engines import load_engine
from handlers.imaging import decode, preprocess
from modelserver.torchserve import REPO_ROOT, Ports, TorchServe

RESULTS = REPO_ROOT / "bench" / "results"
BENCH_KEY = "ica_bench-key"


@dataclass
class Row:
    part: str
    contender: str
    concurrency: int
    images: int
    errors: int
    seconds: float
    img_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    if not latencies:
        return (float("nan"),) * 3
    ms = np.array(latencies) * 1000
    return tuple(float(np.percentile(ms, q)) for q in (50, 95, 99))  # type: ignore[return-value]


def sample_images(count: int = 16) -> list[bytes]:
    """Photo-sized JPEGs (640x480, quality 90) with structure, the same for every contender."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        x = np.linspace(0, 255, 640)[None, :, None]
        y = np.linspace(0, 255, 480)[:, None, None]
        base = np.concatenate([np.broadcast_to(x, (480, 640, 1)), np.broadcast_to(y, (480, 640, 1)),
                               np.full((480, 640, 1), 16.0 * i)], axis=2)  # fmt: skip
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    return images


def bench_limit(model_dir: Path, images: list[bytes], seconds: float) -> list[Row]:
    rows = []
    for engine_name in ("eager", "onnx"):
        engine = load_engine(engine_name, model_dir, threads=os.cpu_count() or 1)
        for batch in (1, 4, 8):
            done, latencies, started = 0, [], time.perf_counter()
            while time.perf_counter() - started < seconds:
                t0 = time.perf_counter()
                chunk = [images[(done + i) % len(images)] for i in range(batch)]
                engine.run(np.stack([preprocess(decode(data, 10**8)) for data in chunk]))
                latencies.append(time.perf_counter() - t0)
                done += batch
            elapsed = time.perf_counter() - started
            rows.append(Row("limit", f"{engine_name} batch {batch}", 1, done, 0, elapsed, done / elapsed,
                            *percentiles(latencies)))  # fmt: skip
    return rows


async def load(url: str, headers: dict[str, str], images: list[bytes], concurrency: int, seconds: float) -> Row:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    response = await client.post(url, content=images[i % len(images)], headers=headers)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0) if ok else None
                errors += 0 if ok else 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Row("", "", concurrency, len(latencies), errors, elapsed, len(latencies) / elapsed, *percentiles(latencies))


def sweep(part: str, contender: str, url: str, headers: dict, images: list[bytes], levels, seconds) -> list[Row]:
    rows = []
    asyncio.run(load(url, headers, images, 2, min(seconds, 3)))  # warm-up
    for concurrency in levels:
        row = asyncio.run(load(url, headers, images, concurrency, seconds))
        row.part, row.contender = part, contender
        rows.append(row)
        print(f"  {part} {contender} c={concurrency}: {row.img_per_s:.2f} img/s p50 {row.p50_ms:.0f} ms", flush=True)
    return rows


def cold_start(model_store: Path, workdir: Path, image: bytes) -> float:
    server = TorchServe(workdir, model_store, bench_ports(100))
    started = time.perf_counter()
    server.start()
    try:
        while True:
            if time.perf_counter() - started > 180:
                raise RuntimeError("no prediction within 180 s")
            try:
                key = server.keys()["inference"]
                response = httpx.post(f"{server.inference_url}/predictions/resnet50", content=image,
                                      headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
                if response.status_code == 200:
                    return time.perf_counter() - started
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            time.sleep(0.1)
    finally:
        server.stop()


def bench_ports(offset: int) -> Ports:
    base = 18100 + offset
    return Ports(base, base + 1, base + 2, base + 3, base + 4, 29100 + offset)


def table(rows: list[Row]) -> str:
    lines = ["| part | contender | concurrency | img/s | p50 ms | p95 ms | p99 ms | errors |", "|---" * 8 + "|"]
    for r in rows:
        lines.append(f"| {r.part} | {r.contender} | {r.concurrency} | {r.img_per_s:.2f} | {r.p50_ms:.1f} | "
                     f"{r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.errors} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: short and only concurrency 1 and 8")
    parser.add_argument("--seconds", type=float, default=None, help="per measurement (default 15, quick 3)")
    parser.add_argument("--mar", type=Path, default=REPO_ROOT / "model_store" / "resnet50.mar")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 15.0)
    levels = (1, 8) if args.quick else (1, 4, 8, 16)
    images = sample_images()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmpdir = Path(tmp)
        model_dir = tmpdir / "model"
        with zipfile.ZipFile(args.mar) as mar:
            mar.extractall(model_dir)
        meta = json.loads((model_dir / "metadata.json").read_text())
        print("limit (in-process)", flush=True)
        rows += bench_limit(model_dir, images, seconds)
        cold = cold_start(args.mar.parent, tmpdir / "cold", images[0])
        print(f"cold start to first prediction: {cold:.1f} s", flush=True)
        server = TorchServe(tmpdir / "ts", args.mar.parent, bench_ports(0))
        server.start()
        gateway = None
        try:
            server.wait_ready(180)
            direct_headers = {"Authorization": f"Bearer {server.keys()['inference']}"}
            rows += sweep("direct", "ours", f"{server.inference_url}/predictions/resnet50", direct_headers,
                          images, levels, seconds)  # fmt: skip
            env = {**os.environ, "GATEWAY_PORT": "18190", "GATEWAY_INFERENCE_URL": server.inference_url,
                   "GATEWAY_MANAGEMENT_URL": server.management_url, "GATEWAY_KEY_FILE": str(server.key_file),
                   "GATEWAY_API_KEY_HASHES": key_hash(BENCH_KEY), "GATEWAY_RATE_LIMIT_RPS": "100000",
                   "GATEWAY_RATE_LIMIT_BURST": "100000", "GATEWAY_LOG_LEVEL": "WARNING"}  # fmt: skip
            gateway = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, stdout=subprocess.DEVNULL)
            for _ in range(100):
                try:
                    if httpx.get("http://127.0.0.1:18190/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            gateway_headers = {"X-API-Key": BENCH_KEY, "Content-Type": "image/jpeg"}
            rows += sweep("gateway", "ours", "http://127.0.0.1:18190/v1/predict", gateway_headers, images, levels,
                          seconds)  # fmt: skip
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(15)
            server.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report = {
        "when": stamp,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "weights": meta["weights"],
        "seconds_per_point": seconds,
        "cold_start_s": cold,
        "rows": [asdict(r) for r in rows],
        "best_limit_img_per_s": max(r.img_per_s for r in rows if r.part == "limit"),
    }
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(table(rows))
    print(f"cold start: {cold:.1f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
