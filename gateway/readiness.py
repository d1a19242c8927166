"""The readiness probes' service, apart from inference: /readyz (gateway/health.py) and v2's health and model
ready routes (gateway/v2.py) ask it whether TorchServe has a READY worker and whether the gateway drains."""

from __future__ import annotations

from gateway.drain import Drain
from gateway.problems import Problem
from gateway.schemas import Ready
from gateway.upstream import TorchServeClient


def refuse_while_draining(drain: Drain) -> None:
    if drain.draining:
        raise Problem("draining", "this instance is leaving the rotation; it answers requests until it stops")


async def ready(upstream: TorchServeClient) -> Ready:
    """A Problem unless TorchServe has a READY worker for the model."""
    readiness = await upstream.readiness()
    if not readiness.ready:
        raise upstream.unavailable(f"not ready: {readiness.reason}")
    return Ready(status="ready", detail=readiness.reason, workers_ready=readiness.workers_ready)
