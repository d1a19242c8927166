"""How the archive's serving defaults were chosen: TorchServe direct throughput per model-config.

    python -m bench.serving_defaults [--seconds S] [--engine onnx|onnx-int8 ...]

Builds one archive per candidate and engine (random weights: speed does not depend on the values, so the
INT8 accuracy gate is waived here), serves each with our handler and measures 1 and 8 concurrent
clients. Prints the CPU and a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bench import cpu, servers
from bench.inputs import ENGINES, photos
from bench.load import measure
from bench.processes import CpuMeter
from modelserver.archive import Int8Options, ServingConfig, build
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_defaults", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--engine", nargs="+", choices=ENGINES, default=list(ENGINES))
    args = parser.parse_args(argv)
    print(cpu.line(cpu.this_cpu()), flush=True)
    images = photos()
    weights = from_seed()
    lines = [
        "| engine | model-config | 1 client img/s | 1 client p50 ms | 8 clients img/s | 8 clients p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    candidates = [
        (engine, name, replace(config, engine=engine)) for engine in args.engine for name, config in CANDIDATES.items()
    ]
    with tempfile.TemporaryDirectory(prefix="serving-defaults-") as tmp:
        for n, (engine, name, config) in enumerate(candidates):
            store = Path(tmp) / f"store{n}"
            build(weights, config, store / ARCHIVE_NAME, WAIVED)
            with servers.torchserve(store, Path(tmp) / f"ts{n}") as server:
                url, headers, meter = server.predictions_url, server.inference_headers(), CpuMeter(server.pid)
                one, eight = measure("defaults", name, url, headers, images, (1, 8), args.seconds, meter)
            print(f"{engine}, {name}: {one.img_per_s:.2f} / {eight.img_per_s:.2f} img/s", flush=True)
            lines.append(
                f"| {engine} | {name} | {one.img_per_s:.2f} | {one.p50_ms:.0f} | {eight.img_per_s:.2f} | "
                f"{eight.p50_ms:.0f} |"
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
