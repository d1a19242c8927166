"""The routes' dependencies, typed, defined once: each router takes what it needs as a parameter of its
route (`settings: SettingsDep`, `_: Authenticated`, ...) and none reads the app's state itself.

`create_app` (gateway/main.py) keeps the app's services in `app.state`; this module is the one place that
reads them back, each with its type.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response

from gateway.auth import Caller, KeyStore, RateLimiter, admit
from gateway.drain import Drain
from gateway.metrics import Metrics
from gateway.renders import RenderSlots
from gateway.service import Inference
from gateway.settings import Settings
from gateway.upstream import TorchServeClient


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def upstream_of(request: Request) -> TorchServeClient:
    upstream: TorchServeClient = request.app.state.upstream  # made by the app's lifespan
    return upstream


def keys_of(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


def limiter_of(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.limiter
    return limiter


def metrics_of(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def renders_of(request: Request) -> RenderSlots:
    renders: RenderSlots = request.app.state.renders
    return renders


def drain_of(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


SettingsDep = Annotated[Settings, Depends(settings_of)]
UpstreamDep = Annotated[TorchServeClient, Depends(upstream_of)]
KeysDep = Annotated[KeyStore, Depends(keys_of)]
LimiterDep = Annotated[RateLimiter, Depends(limiter_of)]
MetricsDep = Annotated[Metrics, Depends(metrics_of)]
RendersDep = Annotated[RenderSlots, Depends(renders_of)]
DrainDep = Annotated[Drain, Depends(drain_of)]


async def authenticate(
    request: Request, response: Response, keys: KeysDep, limiter: LimiterDep, metrics: MetricsDep
) -> Caller:
    """The caller, after auth and rate limiting (gateway/auth.py); else a 401 or 429 problem."""
    return admit(request, response, keys, limiter, metrics)


Authenticated = Annotated[Caller, Depends(authenticate)]


def inference(request: Request, settings: SettingsDep, upstream: UpstreamDep, metrics: MetricsDep) -> Inference:
    return Inference(request, settings, upstream, metrics)


InferenceDep = Annotated[Inference, Depends(inference)]
