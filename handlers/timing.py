"""The handler's own timings, reported through TorchServe's custom metrics API (`context.metrics`).

Four counters, labelled like TorchServe's model metrics (ModelName, Level; TorchServe adds Hostname), a pair
per stage the way TorchServe counts its own queue and inference latency: `handler_preprocess_seconds_total`
(seconds spent decoding and preprocessing the images that were classified) with
`handler_preprocessed_images_total` (how many), and `handler_inference_seconds_total` (seconds of the engine's
forward passes) with `handler_inference_batches_total` (how many passes). A stage's mean is the rate of its
seconds over the rate of its count; images per batch, preprocessed images over batches. Counters, not
histograms: the CloudWatch agent on EC2 drops histograms. The worker writes each increment as a `[METRICS]` log
line; TorchServe's frontend adds it to a Prometheus counter of that exact name on its metrics port. It
registers metrics it was not told about because config*.properties set `model_metrics_auto_detect=true`
(TorchServe 0.12 drops them otherwise; the line carries the type). A context without metrics (the tests' own)
gets timings that report nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Stage:
    """A timed stage: the counter its seconds add to, and the counter of what it handled (one per block)."""

    seconds: str
    count: str


PREPROCESS = Stage("handler_preprocess_seconds_total", "handler_preprocessed_images_total")
INFERENCE = Stage("handler_inference_seconds_total", "handler_inference_batches_total")
# Every counter the handler exports, with its TorchServe unit.
COUNTERS = {
    name: unit for stage in (PREPROCESS, INFERENCE) for name, unit in ((stage.seconds, "s"), (stage.count, "count"))
}
DIMENSIONS = ["ModelName", "Level"]


class Counter(Protocol):
    def add_or_update(self, value: float, dimension_values: list[str]) -> None: ...


class Timings:
    def __init__(self, context: Any) -> None:
        self.counters: dict[str, Counter] = {}
        self.dimensions = [str(getattr(context, "model_name", "")), "Model"]
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return
        from ts.metrics.metric_type_enum import MetricTypes  # only a TorchServe worker gives metrics

        for name, unit in COUNTERS.items():
            self.counters[name] = metrics.add_metric_to_cache(name, unit, DIMENSIONS, MetricTypes.COUNTER)

    @contextmanager
    def timed(self, stage: Stage) -> Iterator[None]:
        """Count the block and add its duration to `stage`, if it finishes (an exception is not a timing)."""
        started = time.perf_counter()
        yield
        if self.counters:
            self.counters[stage.seconds].add_or_update(time.perf_counter() - started, self.dimensions)
            self.counters[stage.count].add_or_update(1, self.dimensions)
