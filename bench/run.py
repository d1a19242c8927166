"""`make bench`: one command, one run, the same archive and images for every contender.

    python -m bench.run [--quick] [--seconds S] [--mar PATH]

1. limit     in-process decode + preprocess + forward, eager and ONNX, batch 1/4/8 (no HTTP)
2. peer      TorchServe with its stock `image_classifier` handler and stock settings, same weights
3. direct    TorchServe with our handler
4. gateway   our gateway in front of (3)
5. overhead  the gateway in front of an instant stub backend vs a bare Starlette endpoint reading the upload
6. large     p50 latency through the gateway, 12 MP JPEG vs 0.5 MP JPEG
plus cold start (TorchServe process start to first successful prediction).
Concurrency sweep 1, 4, 8, 16. Writes bench/results/<timestamp>.json, a markdown table and a PNG plot.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench import peer, servers
from bench.load import Row, measure, percentiles
from bench.processes import CpuMeter
from handlers.engines import load_engine
from handlers.imaging import decode, preprocess
from modelserver.gateway_process import Upstream
from modelserver.torchserve import REPO_ROOT, TorchServe

RESULTS = REPO_ROOT / "bench" / "results"
GATEWAY_HEADERS = {"X-API-Key": servers.BENCH_KEY, "Content-Type": "image/jpeg"}


def photo(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG (smooth gradients plus sensor-like noise, quality 90)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    tint = np.full((height, width, 1), 16.0 * (seed % 16), dtype=np.float32)
    base = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)), tint], 2)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


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
            row = Row("limit", f"{engine_name} batch {batch}", 1, done, 0, elapsed, done / elapsed,
                      *percentiles(latencies))  # fmt: skip
            print(f"  limit    {row.contender:22}        {row.img_per_s:8.2f}/s", flush=True)
            rows.append(row)
    return rows


def cold_start(model_store: Path, workdir: Path, image: bytes) -> float:
    server = TorchServe(workdir, model_store, servers.ports(9))
    started = time.perf_counter()
    server.start()
    try:
        while time.perf_counter() - started < 240:
            try:
                key = server.keys()["inference"]
                response = httpx.post(f"{server.inference_url}/predictions/resnet50", content=image,
                                      headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
                if response.status_code == 200:
                    return time.perf_counter() - started
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            time.sleep(0.05)
        raise RuntimeError("no prediction within 240 s")
    finally:
        server.stop()


def at(rows: list[Row], part: str, concurrency: int, contender: str | None = None) -> Row:
    return next(r for r in rows if r.part == part and r.concurrency == concurrency and contender in (None, r.contender))


def ratios(rows: list[Row], large: dict[str, float]) -> dict[str, float]:
    best_onnx = max(r.img_per_s for r in rows if r.part == "limit" and r.contender.startswith("onnx"))
    gateway8, peer8 = at(rows, "gateway", 8), at(rows, "peer", 8)
    stub = {c: at(rows, "overhead", c, "gateway + stub") for c in (1, 8)}
    bare = {c: at(rows, "overhead", c, "bare starlette") for c in (1, 8)}
    return {
        "gateway_c8_vs_stock_c8": gateway8.img_per_s / peer8.img_per_s,
        "gateway_c8_vs_onnx_limit": gateway8.img_per_s / best_onnx,
        "overhead_p50_added_ms_c1": stub[1].p50_ms - bare[1].p50_ms,
        "overhead_rps_vs_bare_c8": stub[8].img_per_s / bare[8].img_per_s,
        "large_12mp_p50_vs_0_5mp_p50": large["12mp"] / large["0.5mp"],
    }


def plot(rows: list[Row], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for part, contender in (("peer", "stock handler"), ("direct", "ours"), ("gateway", "ours")):
        series = [r for r in rows if r.part == part]
        c = [r.concurrency for r in series]
        left.plot(c, [r.img_per_s for r in series], marker="o", label=f"{part} ({contender})")
        right.plot(c, [r.p50_ms for r in series], marker="o", label=f"{part} p50")
        right.plot(c, [r.p99_ms for r in series], marker="x", linestyle="--", label=f"{part} p99")
    best = max(r.img_per_s for r in rows if r.part == "limit")
    left.axhline(best, color="grey", linestyle=":", label="in-process limit")
    left.set(xlabel="concurrent clients", ylabel="images/s", title="Throughput")
    right.set(xlabel="concurrent clients", ylabel="ms", title="Latency", yscale="log")
    left.legend(fontsize=8)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def table(rows: list[Row]) -> str:
    lines = ["| part | contender | clients | img/s | p50 ms | p95 ms | p99 ms | errors | CPU ms per request |",
             "|---" * 9 + "|"]  # fmt: skip
    for r in rows:
        cpu = ", ".join(f"{role} {ms:.2f}" for role, ms in r.cpu_ms.items())
        lines.append(f"| {r.part} | {r.contender} | {r.concurrency} | {r.img_per_s:.2f} | {r.p50_ms:.1f} "
                     f"| {r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.errors} | {cpu} |")  # fmt: skip
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so every server started so far is stopped by its context manager


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per point, clients 1 and 8")
    parser.add_argument("--seconds", type=float, default=None, help="per measurement point (default 10)")
    parser.add_argument("--mar", type=Path, default=REPO_ROOT / "model_store" / "resnet50.mar")
    parser.add_argument("--profile", action="store_true", help="also py-spy profiles: bench/results/<stamp>/")
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    levels = (1, 8) if args.quick else (1, 4, 8, 16)
    images = [photo(816, 612, seed) for seed in range(16)]  # 0.5 MP
    large = {"0.5mp": photo(816, 612, 99), "12mp": photo(4000, 3000, 99)}
    rows: list[Row] = []
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    profile_dir = RESULTS / stamp if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmpdir = Path(tmp)
        model_dir = tmpdir / "model"
        with zipfile.ZipFile(args.mar) as mar:
            mar.extractall(model_dir)
        meta = json.loads((model_dir / "metadata.json").read_text())
        print("1. limit (in-process)", flush=True)
        rows += bench_limit(model_dir, images, seconds)
        print("2. peer (stock image_classifier handler)", flush=True)
        peer_store = peer.build_stock_archive(model_dir, tmpdir / "peer_store", tmpdir / "peer_build")
        with servers.torchserve(peer_store, tmpdir / "ts-peer", 1) as stock:
            headers = {"Authorization": f"Bearer {stock.keys()['inference']}"}
            rows += measure("peer", "stock handler", f"{stock.inference_url}/predictions/resnet50", headers,
                            images, levels, seconds, CpuMeter(stock.process.pid), profile_dir)  # fmt: skip
        print("3-4, 6. ours: direct, through the gateway, large photos", flush=True)
        with servers.torchserve(args.mar.parent, tmpdir / "ts-ours", 2) as ours:
            headers = {"Authorization": f"Bearer {ours.keys()['inference']}"}
            rows += measure("direct", "ours", f"{ours.inference_url}/predictions/resnet50", headers, images,
                            levels, seconds, CpuMeter(ours.process.pid), profile_dir)  # fmt: skip
            with servers.gateway(ours, 18190) as gateway:
                url = "http://127.0.0.1:18190/v1/predict"
                meter = CpuMeter(ours.process.pid, gateway=gateway.process.pid)
                rows += measure("gateway", "ours", url, GATEWAY_HEADERS, images, levels, seconds, meter, profile_dir)
                large_rows = {name: measure("large", name, url, GATEWAY_HEADERS, [data], (1,), seconds, meter,
                                            profile_dir)[0] for name, data in large.items()}  # fmt: skip
                rows += large_rows.values()
        print("5. gateway overhead (instant stub backend vs bare Starlette)", flush=True)
        key_file = tmpdir / "stub_keys.json"
        key_file.write_text(json.dumps({k: {"key": "stub"} for k in ("inference", "management", "API")}))
        stub = Upstream("http://127.0.0.1:18180", "http://127.0.0.1:18180", key_file)
        with servers.torchserve_stub(18180) as stub_server, servers.gateway(stub, 18191) as gateway:
            meter = CpuMeter(gateway=gateway.process.pid, stub=stub_server.process.pid)
            rows += measure("overhead", "gateway + stub", "http://127.0.0.1:18191/v1/predict", GATEWAY_HEADERS,
                            images, levels, seconds, meter, profile_dir)  # fmt: skip
        with servers.uvicorn_app("bench.stubs:bare", 18181) as bare:
            rows += measure("overhead", "bare starlette", "http://127.0.0.1:18181/v1/predict", GATEWAY_HEADERS,
                            images, levels, seconds, CpuMeter(bare=bare.process.pid), profile_dir)  # fmt: skip
        print("cold start", flush=True)
        cold = cold_start(args.mar.parent, tmpdir / "ts-cold", images[0])
    large_p50 = {name: row.p50_ms for name, row in large_rows.items()}
    summary = {**ratios(rows, large_p50), "cold_start_s": cold}
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "when": stamp,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "weights": meta["weights"],
        "seconds_per_point": seconds,
        "summary": summary,
        "rows": [asdict(r) for r in rows],
    }
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    plot(rows, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(table(rows) + "\n")
    print(table(rows))
    print("\n".join(f"{name}: {value:.3f}" for name, value in summary.items()))
    print(f"results: {out} (+ .md table, .png plot)" + (f", profiles in {profile_dir}" if profile_dir else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
