"""How the archive's serving defaults were chosen: TorchServe direct throughput per model-config.

    python -m bench.serving_defaults [--seconds S] [--rounds N] [--engine ENGINE ...] [--candidate NAME ...]

Builds one `auto` archive (random weights: speed does not depend on the values, so the accuracy gates are
waived here) and serves it with each candidate model-config per engine (modelserver/archive.py `reconfigured`),
measuring 1 and 8 concurrent clients. The candidates are interleaved (A B C A B C ...) over `--rounds` rounds,
so that a machine shared with other work slows each alike; the table gives the median of the rounds, the
8-client median relative to the engine's first candidate, and the load average. Prints the CPU first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bench import cpu, servers
from bench.inputs import ENGINES, photos
from bench.load import Row, measure
from bench.processes import CpuMeter
from handlers.engine_choice import AUTO
from modelserver.archive import Int8Options, ServingConfig, build, reconfigured
from modelserver.paths import ARCHIVE_NAME
from modelserver.quantize import Thresholds
from modelserver.weights import from_seed

WAIVED = Int8Options(thresholds=Thresholds(min_top1_agreement=0, min_top5_overlap=0, max_prob_diff=1))

CANDIDATES = {
    "1 worker x 2 threads, batch 8, delay 5 ms": ServingConfig(workers=1, batch_size=8, max_batch_delay_ms=5),
    "1 worker x 2 threads, batch 1": ServingConfig(workers=1, batch_size=1, max_batch_delay_ms=0),
    "2 workers x 1 thread, batch 4, delay 5 ms": ServingConfig(workers=2, batch_size=4, max_batch_delay_ms=5),
    "1 worker x 2 threads, batch 8, delay 5 ms, decode one by one": ServingConfig(
        workers=1, batch_size=8, max_batch_delay_ms=5, decode_threads=1
    ),
    "2 workers x 1 thread, batch 8, delay 5 ms": ServingConfig(workers=2, batch_size=8, max_batch_delay_ms=5),
}


def median_row(rows: list[Row]) -> tuple[float, float, float]:
    """(median img/s, median p50 ms, median worker CPU ms per image) over the rounds' rows."""
    worker = [r.cpu_ms.get("worker", 0.0) for r in rows]
    return statistics.median(r.img_per_s for r in rows), statistics.median(r.p50_ms for r in rows), median(worker)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_defaults", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds over the candidates")
    parser.add_argument("--engine", nargs="+", choices=ENGINES, default=["onnx", "onnx-int8"])
    parser.add_argument("--candidate", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    args = parser.parse_args(argv)
    print(cpu.line(cpu.this_cpu()), flush=True)
    images = photos()
    candidates = [(engine, name) for engine in args.engine for name in args.candidate]
    one: dict[tuple[str, str], list[Row]] = {c: [] for c in candidates}
    eight: dict[tuple[str, str], list[Row]] = {c: [] for c in candidates}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="serving-defaults-") as tmp:
        base = build(from_seed(), ServingConfig(engine=AUTO), Path(tmp) / "auto" / ARCHIVE_NAME, WAIVED)
        for round_ in range(args.rounds):
            for n, (engine, name) in enumerate(candidates):
                store = Path(tmp) / f"store{n}"
                policy = "int8" if engine == AUTO else ServingConfig.for_engine(engine).precision
                reconfigured(base, replace(CANDIDATES[name], engine=engine, precision=policy), store / ARCHIVE_NAME)
                with servers.torchserve(store, Path(tmp) / f"ts{n}-{round_}") as server:
                    url, headers, meter = server.predictions_url, server.inference_headers(), CpuMeter(server.pid)
                    a, b = measure("defaults", name, url, headers, images, (1, 8), args.seconds, meter)
                one[engine, name].append(a)
                eight[engine, name].append(b)
                loads.append(os.getloadavg()[0])
                print(f"round {round_ + 1}, {engine}, {name}: {a.img_per_s:.2f} / {b.img_per_s:.2f} img/s", flush=True)
    lines = [
        f"{args.rounds} interleaved round(s), {args.seconds:g} s per point, medians; load average (1 min) "
        f"{min(loads):.1f}-{max(loads):.1f}",
        "",
        "| engine | model-config | 1 client img/s | 1 client p50 ms | 8 clients img/s | 8 clients p50 ms "
        "| 8 clients vs the engine's first | worker CPU ms per image, 8 clients |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for engine, name in candidates:
        (i1, p1, _), (i8, p8, w8) = median_row(one[engine, name]), median_row(eight[engine, name])
        first = median_row(eight[engine, args.candidate[0]])[0]
        lines.append(f"| {engine} | {name} | {i1:.2f} | {p1:.0f} | {i8:.2f} | {p8:.0f} | {i8 / first:.2f} | {w8:.1f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
