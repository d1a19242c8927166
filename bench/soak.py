"""Saturation and soak against the gateway: many concurrent clients, every answer accounted for, RSS sampled.

`python -m bench.soak --minutes 20` starts its own TorchServe (model_store/resnet50.mar) and gateway on free
loopback ports, drives them with `--concurrency` closed-loop clients and writes a JSON report plus a PNG of
the resident memory of the gateway, the TorchServe frontend (Java) and its python workers. `--url`,
`--api-key`, `--gateway-pid` and `--torchserve-pid` point it at a running stack instead. Loopback only:
any other host is refused. The load stops by itself after the given time.

What counts as a failure (the service's promise under load): anything but 200, 429, or 503 with a
`Retry-After`; any transport error (connection reset, refused, protocol error); any request without an
answer within the gateway's timeout plus a margin (a hang). The tests import `saturate`, `RssSampler`
and `growth` (tests/system/load/test_saturation.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.processes import process_roles, totals
from gateway.keys import key_hash
from modelserver.gateway_process import GatewayProcess, gateway_env
from modelserver.paths import ARCHIVE_NAME, MODEL_STORE, REPO_ROOT
from modelserver.ports import Ports
from modelserver.torchserve import TorchServe

RESULTS = REPO_ROOT / "bench" / "results"
ACCEPTED = {200, 429, 503}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --- load -----------------------------------------------------------------------------------------------------


@dataclass
class Saturation:
    concurrency: int
    seconds: float
    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # kind → count; empty when the promise held
    failure_examples: list[str] = field(default_factory=list)
    max_latency_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    ok_per_s: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to generate load against {host!r}: loopback only")


async def saturate(
    url: str,
    api_key: str,
    bodies: list[bytes],
    concurrency: int,
    seconds: float,
    client_timeout_s: float,
    path: str = "/v1/predict",
) -> Saturation:
    """`concurrency` closed-loop clients posting `bodies` (raw JPEG) for `seconds`; every answer classified."""
    check_loopback(url)
    result = Saturation(concurrency, seconds)
    statuses: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    latencies: list[float] = []
    headers = {"X-API-Key": api_key, "Content-Type": "image/jpeg"}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # The client's own timeout is only a backstop; asyncio.timeout below decides what is a hang.
    async with httpx.AsyncClient(base_url=url, timeout=client_timeout_s + 5, limits=limits) as client:

        def fail(kind: str, example: str) -> None:
            failures[kind] += 1
            if len(result.failure_examples) < 20:
                result.failure_examples.append(example[:300])

        async def one_client(offset: int) -> None:
            i = offset
            while time.monotonic() < deadline:
                started = time.monotonic()
                result.sent += 1
                try:
                    async with asyncio.timeout(client_timeout_s):
                        response = await client.post(path, content=bodies[i % len(bodies)], headers=headers)
                except TimeoutError:
                    fail("hang", f"no answer within {client_timeout_s} s")
                    continue
                except httpx.HTTPError as exc:
                    fail(type(exc).__name__, repr(exc))
                    continue
                finally:
                    elapsed = time.monotonic() - started
                    result.max_latency_s = max(result.max_latency_s, elapsed)
                    i += concurrency
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    latencies.append(elapsed)
                elif response.status_code not in ACCEPTED:
                    fail(f"status {response.status_code}", response.text)
                elif response.status_code in (429, 503) and not response.headers.get("retry-after"):
                    fail(f"{response.status_code} without Retry-After", response.text)

        started = time.monotonic()
        await asyncio.gather(*(one_client(n) for n in range(concurrency)))
        elapsed = time.monotonic() - started
    result.statuses, result.failures = dict(statuses), dict(failures)
    if latencies:
        ordered = sorted(latencies)
        result.p50_ms = round(ordered[len(ordered) // 2] * 1000, 1)
        result.p99_ms = round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1)
    result.ok_per_s = round(len(latencies) / elapsed, 2)
    result.max_latency_s = round(result.max_latency_s, 2)
    return result


# --- memory ---------------------------------------------------------------------------------------------------


class RssSampler:
    """Samples the summed RSS (MiB) per role every `interval` seconds in a background thread."""

    def __init__(self, gateway_pid: int, torchserve_pid: int, interval: float = 2.0) -> None:
        self.gateway_pid = gateway_pid
        self.torchserve_pid = torchserve_pid
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0

    def sample(self) -> dict[str, float]:
        rss = totals(process_roles(self.torchserve_pid, gateway=self.gateway_pid), lambda p: p.memory_info().rss)
        return {"t": round(time.monotonic() - self._t0, 2), **{role: round(b / 2**20, 1) for role, b in rss.items()}}

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.samples.append(self.sample())


def growth(samples: list[dict[str, float]], role: str, warmup_s: float, window: float = 0.1) -> dict[str, float]:
    """RSS growth of `role` after warm-up: mean of the last `window` of the samples vs the first, in MiB and %."""
    kept = [s[role] for s in samples if s["t"] >= warmup_s and s.get(role)]
    if len(kept) < 2:
        return {
            "start_mib": float("nan"),
            "end_mib": float("nan"),
            "growth_mib": float("nan"),
            "growth_pct": float("nan"),
        }
    n = max(1, int(len(kept) * window))
    start, end = sum(kept[:n]) / n, sum(kept[-n:]) / n
    return {
        "start_mib": round(start, 1),
        "end_mib": round(end, 1),
        "growth_mib": round(end - start, 1),
        "growth_pct": round((end - start) / start * 100, 2),
    }


def plot(samples: list[dict[str, float]], warmup_s: float, path: Path, title: str) -> Path:
    """RSS curves per role; matplotlib (the `bench` extra) is imported only here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    minutes = [s["t"] / 60 for s in samples]
    for role in ("gateway", "frontend", "worker"):
        ax.plot(minutes, [s.get(role, 0) for s in samples], label=role)
    ax.axvline(warmup_s / 60, color="grey", linestyle="--", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- a stack of our own ---------------------------------------------------------------------------------------


def images(count: int = 8) -> list[bytes]:
    """A few small JPEGs with structure (what the suite sends)."""
    import io

    import numpy as np
    from PIL import Image

    out = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


class Stack:
    """TorchServe + gateway started here, on free loopback ports, with a fresh API key; always stopped."""

    def __init__(self, model_store: Path, workdir: Path, rate_limit_rps: float, request_timeout_s: float) -> None:
        self.api_key = "ica_soak_" + secrets.token_urlsafe(16)
        self.torchserve = TorchServe(workdir / "torchserve", model_store, Ports.free())
        limits = {"rate_limit_rps": str(rate_limit_rps), "rate_limit_burst": str(int(rate_limit_rps * 2))}
        env = gateway_env(self.torchserve, [key_hash(self.api_key)], request_timeout_s=str(request_timeout_s), **limits)
        self.gateway = GatewayProcess(workdir / "gateway.log", env)
        self.url = self.gateway.url
        self._running = contextlib.ExitStack()

    def __enter__(self) -> Stack:
        with contextlib.ExitStack() as starting:
            starting.enter_context(self.torchserve.running(timeout=300))
            starting.enter_context(self.gateway)
            self._running = starting.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running.close()


# --- CLI ------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, url: str, api_key: str, gateway_pid: int, torchserve_pid: int) -> dict[str, Any]:
    seconds = args.minutes * 60
    warmup = min(args.warmup_s, seconds / 3)
    bodies = images()
    print(f"soak: {args.concurrency} clients for {seconds:.0f} s against {url}", flush=True)
    with RssSampler(gateway_pid, torchserve_pid, interval=args.sample_s) as sampler:
        load = asyncio.run(saturate(url, api_key, bodies, args.concurrency, seconds, args.timeout_s + args.margin_s))
    after = httpx.post(
        f"{url}/v1/predict", content=bodies[0], timeout=60, headers={"X-API-Key": api_key, "Content-Type": "image/jpeg"}
    )
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds)),
        "minutes": args.minutes,
        "warmup_s": warmup,
        "load": {**asdict(load), "failed": load.failed},
        "answers_normally_after": after.status_code == 200,
        "growth": {role: growth(sampler.samples, role, warmup) for role in ("gateway", "frontend", "worker")},
        "samples": sampler.samples,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=96)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="RSS growth is measured after this")
    parser.add_argument("--sample-s", type=float, default=2.0, help="RSS sampling interval")
    parser.add_argument("--timeout-s", type=float, default=25.0, help="the gateway's GATEWAY_REQUEST_TIMEOUT_S")
    parser.add_argument("--margin-s", type=float, default=10.0, help="beyond timeout + margin a request is a hang")
    parser.add_argument("--rate-limit-rps", type=float, default=10000.0, help="for the gateway started here")
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE)
    parser.add_argument("--url", help="a running gateway instead of starting one (loopback only)")
    parser.add_argument("--api-key", default=os.environ.get("API_KEY"), help="with --url (default $API_KEY)")
    parser.add_argument("--gateway-pid", type=int, help="with --url: the gateway's pid, for RSS")
    parser.add_argument("--torchserve-pid", type=int, help="with --url: TorchServe's launcher pid, for RSS")
    parser.add_argument("--out", type=Path, help="JSON report (default bench/results/soak-<time>.json)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or RESULTS / f"soak-{stamp}.json"
    if args.url:
        if not (args.api_key and args.gateway_pid and args.torchserve_pid):
            parser.error("--url needs --api-key, --gateway-pid and --torchserve-pid")
        check_loopback(args.url)
        report = run(args, args.url, args.api_key, args.gateway_pid, args.torchserve_pid)
    else:
        if not (args.model_store / ARCHIVE_NAME).exists():
            parser.error(f"{args.model_store / ARCHIVE_NAME} is missing: run `make mar` first")
        workdir = REPO_ROOT / ".run" / f"soak-{stamp}"
        with Stack(args.model_store, workdir, args.rate_limit_rps, args.timeout_s) as stack:
            report = run(args, stack.url, stack.api_key, stack.gateway.pid, stack.torchserve.pid)
        report["workdir"] = str(workdir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    summary = {k: v for k, v in report["load"].items() if k != "failure_examples"}
    print(
        json.dumps({"load": summary, "growth": report["growth"], "after": report["answers_normally_after"]}, indent=2)
    )
    print(f"report: {out}")
    if not args.no_plot:
        png = plot(
            report["samples"],
            report["warmup_s"],
            out.with_suffix(".png"),
            f"RSS during a {args.minutes:g}-minute soak, {args.concurrency} clients",
        )
        print(f"plot: {png}")
    return 0 if report["load"]["failed"] == 0 and report["answers_normally_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
