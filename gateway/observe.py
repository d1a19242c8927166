"""Pure ASGI middleware around every request: request id, security headers, metrics, one JSON log line.

It also turns any unhandled exception into a logged `internal-error` problem: never a stack trace to a
client. (Pure ASGI rather than Starlette's BaseHTTPMiddleware: no extra task or body copy per request.)
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.headers import API_CSP, SECURITY_HEADERS
from gateway.metrics import Metrics
from gateway.problems import ErrorShape, Problem

logger = logging.getLogger("gateway")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ObserveMiddleware:
    """`shape_of` gives the error shape of a path's protocol (gateway/errors.py), for the internal error."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        shape_of: Callable[[str], ErrorShape],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.shape_of = shape_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        path: str = scope["path"]
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers.update(SECURITY_HEADERS)
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = API_CSP  # the demo page and /docs set their own
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            logger.exception("unhandled error", extra={"request_id": request_id})
            if response_started:
                raise
            problem = Problem("internal-error", "an internal error occurred; it has been logged")
            await self.shape_of(path)(problem, request_id)(scope, receive, send_with_headers)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            client = scope.get("client")
            logger.info(
                "request",
                extra={
                    "request_id": request_id,
                    "key_id": state.get("key_id"),
                    "method": scope["method"],
                    "route": route,
                    "path": path[:200],
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 2),
                    "client": client[0] if client else None,
                },
            )
