"""Prometheus metrics of the gateway, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
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
