"""How a failure is answered: in the error shape of the wire protocol it was asked in.

Each protocol declares its shape with its routes (v1: problem+json, gateway/problems.py; v2: KServe's
`{"error": ...}`, gateway/v2.py), and the app names them in its ErrorShapes (gateway/main.py), so this module
imports no router. Errors raised before a route is chosen (404, 405, request validation) and an unhandled
exception turned into `internal-error` by the middleware (gateway/observe.py) are answered by the path they
were asked on, so the shapes are the one decision, by path prefix: the first that matches wins, and "/"
matches every path. (What the HTTP protocol refuses before there is a request to route, gateway/protocol.py,
is problem+json: it has no path yet that it could trust.)
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from gateway.metrics import Metrics
from gateway.problems import ErrorShape, Problem

# Refusals of a caller (401, 429) or a probe's answer while draining (503): no image was judged.
NOT_ABOUT_AN_IMAGE = frozenset({"unauthorized", "rate-limited", "draining"})


class ErrorShapes:
    """The error shape of each protocol, by path prefix; the last prefix must be "/", so every path has one."""

    def __init__(self, shapes: tuple[tuple[str, ErrorShape], ...]) -> None:
        if not shapes or shapes[-1][0] != "/":
            raise ValueError('the last error shape must be the default, for "/"')
        self.shapes = shapes

    def of(self, path: str) -> ErrorShape:
        """The error shape of the protocol that `path` belongs to."""
        return next(shape for prefix, shape in self.shapes if path.startswith(prefix))

    def response(self, request: Request, problem: Problem) -> Response:
        """`problem` in the shape of the protocol of the request's path."""
        return self.of(request.url.path)(problem, getattr(request.state, "request_id", None))


def install(app: FastAPI, metrics: Metrics, shapes: ErrorShapes) -> None:
    """The app's exception handlers: every Problem, validation error and HTTP error, counted and shaped."""

    @app.exception_handler(Problem)
    async def on_problem(request: Request, problem: Problem) -> Response:
        if problem.slug not in NOT_ABOUT_AN_IMAGE:
            metrics.image_refused(problem.status, problem.slug)
        return shapes.response(request, problem)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        problem = Problem("invalid-request", detail or "invalid parameters", errors=errors)
        metrics.rejected.labels(problem.slug).inc()
        return shapes.response(request, problem)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Response:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "invalid-request")
        headers = dict(exc.headers or {})
        problem = Problem(slug, "no such resource" if slug == "not-found" else str(exc.detail), headers=headers)
        return shapes.response(request, problem)
