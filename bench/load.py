"""A bounded closed-loop load generator: N concurrent clients for S seconds, latency percentiles."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.processes import CpuMeter, cpu_ms_per_request, profiled


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
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU per answered request, by process role


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    if not latencies:
        return (float("nan"),) * 3
    ms = np.array(latencies) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(np.percentile(ms, 99))


async def _load(url: str, headers: dict[str, str], bodies: list[bytes], concurrency: int, seconds: float) -> Row:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def client_loop(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    ok = (await client.post(url, content=bodies[i % len(bodies)], headers=headers)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(client_loop(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Row("", "", concurrency, len(latencies), errors, elapsed, len(latencies) / elapsed, *percentiles(latencies))


def measure(
    part: str,
    contender: str,
    url: str,
    headers: dict[str, str],
    bodies: list[bytes],
    levels: tuple[int, ...],
    seconds: float,
    meter: CpuMeter,
    profile_dir: Path | None = None,
) -> list[Row]:
    """Warm up, then one row per concurrency level, with the CPU each watched process spent per request.
    With `profile_dir`, an extra, unrecorded pass at 8 clients (or the only level) is profiled with py-spy,
    so that the sampling does not slow the measured passes."""
    asyncio.run(_load(url, headers, bodies, 2, min(seconds, 3.0)))
    rows = []
    for concurrency in levels:
        before = meter.read()
        row = asyncio.run(_load(url, headers, bodies, concurrency, seconds))
        row.part, row.contender = part, contender
        row.cpu_ms = cpu_ms_per_request(before, meter.read(), row.images)
        cpu = ", ".join(f"{role} {ms:.2f}" for role, ms in row.cpu_ms.items())
        print(
            f"  {part:8} {contender:22} c={concurrency:<3} {row.img_per_s:8.2f}/s  p50 {row.p50_ms:7.1f} ms  "
            f"errors {row.errors}  CPU ms/request: {cpu}",
            flush=True,
        )
        rows.append(row)
        if profile_dir and concurrency == (8 if 8 in levels else max(levels)):
            with profiled(meter, seconds, profile_dir / f"{part}-{contender.replace(' ', '-')}-c{concurrency}"):
                asyncio.run(_load(url, headers, bodies, concurrency, seconds))
    return rows
