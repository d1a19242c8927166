"""Prometheus metrics of the gateway, in a registry of its own (one per app).

Labels are low-cardinality only: method, the route template, status, outcome, a problem type slug. Never
an API key, a key id, an image's name or a request id (tests/integration/test_gateway.py scrapes and checks).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Up to API Gateway's 29 s integration cap and past it: 25, 29 and 30 tell a slow answer from one the edge
# would already have cut (the upstream timeout is 25 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 25.0, 29.0, 30.0, 60.0)


class Metrics:
    def __init__(self, upstream_slots: int = 0, draining: Callable[[], bool] = lambda: False) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time to answer a request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "gateway_upstream_duration_seconds",
            "Time TorchServe took per image",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "gateway_images_total",
            "Images by outcome (classified, rejected, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "gateway_rejected_inputs_total", "Inputs refused, by problem type", ["reason"], registry=self.registry
        )
        self.rate_limited = Counter(
            "gateway_rate_limited_requests_total", "Requests refused by the rate limit", registry=self.registry
        )
        self.in_flight = Gauge("gateway_requests_in_flight", "HTTP requests being served", registry=self.registry)
        self.upstream_in_flight = Gauge(
            "gateway_upstream_in_flight", "Predictions holding an upstream slot", registry=self.registry
        )
        self.upstream_slots = Gauge(
            "gateway_upstream_slots", "Upstream slots: GATEWAY_MAX_CONNECTIONS", registry=self.registry
        )
        self.upstream_slots.set(upstream_slots)
        self.queue_wait = Histogram(
            "gateway_upstream_queue_wait_seconds",
            "Wait for an upstream slot, granted or timed out",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.draining = Gauge("gateway_draining", "1 while this gateway drains, else 0", registry=self.registry)
        self.draining.set_function(lambda: float(draining()))

    def image_refused(self, status: int, reason: str) -> None:
        """One image not classified: rejected (a client's mistake, below 500, counted by its problem type
        `reason`) or failed (the service's)."""
        if status < 500:
            self.rejected.labels(reason).inc()
            self.images.labels("rejected").inc()
        else:
            self.images.labels("failed").inc()
