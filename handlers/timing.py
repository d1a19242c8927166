"""The handler's own timings, reported through TorchServe's custom metrics API (`context.metrics`).

Two histograms, in seconds, labelled like TorchServe's model metrics (ModelName, Level; TorchServe adds
Hostname): `handler_preprocess_seconds`, the decode and preprocess of one image that was classified, and
`handler_inference_seconds`, the engine's forward pass over one batch. The worker writes each observation as
a `[METRICS]` log line; TorchServe's frontend turns it into a Prometheus histogram on its metrics port. It
registers metrics it was not told about because config*.properties set `model_metrics_auto_detect=true`
(TorchServe 0.12 drops them otherwise; the line carries the type, so they become histograms, with the Java
client's default buckets, 5 ms to 10 s). A context without metrics (the tests' own) gets timings that
report nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

PREPROCESS = "handler_preprocess_seconds"
INFERENCE = "handler_inference_seconds"
DIMENSIONS = ["ModelName", "Level"]


class Observer(Protocol):
    def add_or_update(self, value: float, dimension_values: list[str]) -> None: ...


class Timings:
    def __init__(self, context: Any) -> None:
        self.observers: dict[str, Observer] = {}
        self.dimensions = [str(getattr(context, "model_name", "")), "Model"]
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return
        from ts.metrics.metric_type_enum import MetricTypes  # only a TorchServe worker gives metrics

        for name in (PREPROCESS, INFERENCE):
            self.observers[name] = metrics.add_metric_to_cache(name, "s", DIMENSIONS, MetricTypes.HISTOGRAM)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Observe the block's duration under `name`, if it finishes (an exception is not a timing)."""
        started = time.perf_counter()
        yield
        if (observer := self.observers.get(name)) is not None:
            observer.add_or_update(time.perf_counter() - started, self.dimensions)
