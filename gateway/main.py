"""The gateway app: `create_app()` wires settings, auth, metrics, the TorchServe client, the routers (equals:
none imports another) and the error shape of each protocol (gateway/errors.py). The routes take these
services through the typed dependencies of gateway/deps.py, which read them back from `app.state`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import demo, docs, embed, explain, health, predict, v2
from gateway.auth import KeyStore, RateLimiter
from gateway.budget import BodyBudget, BudgetMiddleware
from gateway.drain import Drain, DrainMiddleware
from gateway.early import EarlyAnswerMiddleware
from gateway.errors import ErrorShapes, install
from gateway.metrics import Metrics
from gateway.observe import ObserveMiddleware
from gateway.problems import problem_response
from gateway.renders import RenderSlots
from gateway.settings import Settings, get_settings
from gateway.upstream import TorchServeClient

ROUTERS = (predict.router, health.router, explain.router, embed.router, v2.router, demo.router, docs.router)
# v2's shape for every path under /v2/, unknown ones included; problem+json for every other path
ERROR_SHAPES = ErrorShapes(((v2.PREFIX + "/", v2.error_response), ("/", problem_response)))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    drain = Drain(settings.drain_s)
    metrics = Metrics(settings.max_connections, lambda: drain.draining)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.upstream = upstream = TorchServeClient(settings, metrics)  # its session needs the running loop
        try:
            yield
        finally:
            await upstream.close()

    app = FastAPI(
        title="image-classification-api",
        version="1.0.0",
        description="ImageNet classification (ResNet50) behind API-key auth. Errors are application/problem+json.",
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would name the Host header's host: `/v1/predict/` is a 404
        docs_url=None,  # FastAPI's /docs and /redoc load scripts from a CDN: /docs is gateway/docs.py
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.keys = KeyStore(settings.all_key_hashes())
    app.state.limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
    app.state.metrics = metrics
    app.state.drain = drain
    app.state.renders = RenderSlots(settings.max_concurrent_renders, settings.queue_timeout_s, settings.retry_after_s)
    for router in ROUTERS:
        app.include_router(router)
    install(app, metrics, ERROR_SHAPES)

    budget = BodyBudget.of(settings)
    app.add_middleware(
        BudgetMiddleware, budget=budget, rate_bytes_s=settings.body_rate_bytes_s, grace_s=settings.body_grace_s
    )
    app.add_middleware(ObserveMiddleware, metrics=metrics, shape_of=ERROR_SHAPES.of)
    app.add_middleware(DrainMiddleware, drain=drain)
    app.add_middleware(EarlyAnswerMiddleware, linger_s=settings.linger_s)  # outermost: the server's receive
    return app
