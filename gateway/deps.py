"""The routes' dependencies, typed, defined once: each router takes what it needs as a parameter of its
route (`settings: SettingsDep`, `_: Authenticated`, ...) and none reads the app's state itself.

`create_app` (gateway/main.py) keeps the app's services in `app.state`; this module is the one place that
reads them back, each with its type. It also turns what a request carries into the plain values the service
layer takes: the caller (after auth), the ranking options (`top_k` checked against the served model's N
classes, `classes` resolved against its labels), the service itself with the request's id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request, Response

from gateway.auth import Caller, KeyStore, RateLimiter, admit
from gateway.budget import hold_of
from gateway.drain import Drain
from gateway.metrics import Metrics
from gateway.ranking import RankOptions, RankQuery, rank_query, resolve_classes, top_k_within
from gateway.renders import RenderSlots
from gateway.service import Inference
from gateway.settings import Settings
from gateway.upstream import TorchServeClient

T = TypeVar("T")


def from_state(name: str, kind: type[T]) -> Callable[[Request], Awaitable[T]]:
    """A dependency: the app's service `name` (gateway/main.py sets it in app.state), which must be a `kind`.
    Async, as every dependency here: FastAPI runs a plain function in the thread pool, a hop per request."""

    async def read(request: Request) -> T:
        service = getattr(request.app.state, name)
        if not isinstance(service, kind):
            raise TypeError(f"app.state.{name} is a {type(service).__name__}, not a {kind.__name__}")
        return service

    return read


SettingsDep = Annotated[Settings, Depends(from_state("settings", Settings))]
UpstreamDep = Annotated[TorchServeClient, Depends(from_state("upstream", TorchServeClient))]  # made by the lifespan
KeysDep = Annotated[KeyStore, Depends(from_state("keys", KeyStore))]
LimiterDep = Annotated[RateLimiter, Depends(from_state("limiter", RateLimiter))]
MetricsDep = Annotated[Metrics, Depends(from_state("metrics", Metrics))]
RendersDep = Annotated[RenderSlots, Depends(from_state("renders", RenderSlots))]
DrainDep = Annotated[Drain, Depends(from_state("drain", Drain))]


async def authenticate(
    request: Request, response: Response, keys: KeysDep, limiter: LimiterDep, metrics: MetricsDep
) -> Caller:
    """The caller, after auth and rate limiting (gateway/auth.py), its request's body charged to its key's
    share of the body budget (gateway/budget.py); else a 401 or 429 problem."""
    caller = admit(request, response, keys, limiter, metrics)
    hold_of(request).belongs_to(caller.key_id)
    return caller


Authenticated = Annotated[Caller, Depends(authenticate)]


RankQueryDep = Annotated[RankQuery, Depends(rank_query)]


async def rank_options(query: RankQuery, upstream: TorchServeClient) -> RankOptions:
    """The ranking the client asked for (gateway/ranking.py): `top_k` checked against the served model's N
    classes, an allow-list of `classes` resolved against its labels (the model's description, kept by the
    upstream client: asked of TorchServe once, not per request). Called by a route once it has read and checked
    the request's images, so that what a request's head decides (401, 413, 415, 429) needs no model."""
    described = await upstream.model_info()
    classes = described["labels"]
    allowed = None if query.classes is None else resolve_classes(query.classes, described["label_names"])
    return RankOptions(
        top_k_within(query.top_k, classes), query.min_score, query.unknown_below, allowed, model_classes=classes
    )


async def inference(request: Request, settings: SettingsDep, upstream: UpstreamDep, metrics: MetricsDep) -> Inference:
    request_id: str = request.state.request_id  # set by gateway/observe.py
    return Inference(settings, upstream, metrics, request_id)


InferenceDep = Annotated[Inference, Depends(inference)]
