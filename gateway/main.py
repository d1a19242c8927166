"""The gateway app: `create_app()` wires settings, auth, metrics, the TorchServe client and the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gateway import demo, docs, embed, explain, logs, routes, v2
from gateway.auth import KeyStore, RateLimiter
from gateway.budget import BodyBudget, BudgetMiddleware
from gateway.drain import Drain, DrainMiddleware
from gateway.metrics import Metrics
from gateway.observe import ObserveMiddleware
from gateway.problems import Problem
from gateway.renders import RenderSlots
from gateway.settings import Settings, get_settings
from gateway.upstream import TorchServeClient


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logs.configure(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.upstream = TorchServeClient(settings, app.state.metrics)
        try:
            yield
        finally:
            await app.state.upstream.close()

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
    app.state.drain = Drain(settings.drain_s)
    app.state.metrics = Metrics(settings.max_connections, lambda: app.state.drain.draining)
    app.state.renders = RenderSlots(settings.max_concurrent_renders, settings.queue_timeout_s, settings.retry_after_s)
    app.include_router(routes.router)
    app.include_router(explain.router)
    app.include_router(embed.router)
    app.include_router(v2.router)
    app.include_router(demo.router)
    app.include_router(docs.router)

    app.add_middleware(BudgetMiddleware, budget=BodyBudget.of(settings))
    app.add_middleware(ObserveMiddleware, metrics=app.state.metrics)
    app.add_middleware(DrainMiddleware, drain=app.state.drain)

    def answer(request: Request, problem: Problem) -> Response:
        """problem+json, or the Open Inference Protocol's {"error": ...} under /v2."""
        request_id = getattr(request.state, "request_id", None)
        if request.url.path.startswith("/v2/"):
            return JSONResponse(
                {"error": f"{problem.title}: {problem.detail}"}, problem.status, headers=problem.headers
            )
        return problem.response(request_id)

    @app.exception_handler(Problem)
    async def on_problem(request: Request, problem: Problem) -> Response:
        if problem.status < 500 and problem.slug not in ("unauthorized", "rate-limited"):
            app.state.metrics.rejected.labels(problem.slug).inc()
            app.state.metrics.images.labels("rejected").inc()
        elif problem.status >= 500 and problem.slug != "draining":  # a probe's answer, not an image's
            app.state.metrics.images.labels("failed").inc()
        return answer(request, problem)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        problem = Problem("invalid-request", detail or "invalid parameters", errors=errors)
        app.state.metrics.rejected.labels(problem.slug).inc()
        return answer(request, problem)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Response:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "invalid-request")
        headers = dict(exc.headers or {})
        problem = Problem(slug, "no such resource" if slug == "not-found" else str(exc.detail), headers=headers)
        return answer(request, problem)

    return app
