"""The bytes of request bodies the gateway process holds in memory at once, shared by all its requests.

A request reserves what it will hold before it holds it: its declared Content-Length up front (so the
refusal comes from the head alone, before the upload), else its bytes as they arrive. A reservation that
would pass `max_buffered_bytes` gets 503 `server-busy` with Retry-After; one that could never fit, even
alone, 413. `BudgetMiddleware` gives every HTTP request its `Hold` and releases it when the request ends,
however it ends (answered, failed, cancelled, client gone).
"""

from __future__ import annotations

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.problems import Problem
from gateway.settings import Settings

ENVELOPE_BYTES = 64 * 1024  # allowed on top of the image limits for what wraps them: multipart parts, v2's JSON


class BodyBudget:
    def __init__(self, capacity: int, retry_after_s: int) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self.used = 0

    @classmethod
    def of(cls, settings: Settings) -> BodyBudget:
        """The budget of `settings`; it must hold the largest request the limits allow, or that request could
        never be served."""
        largest = settings.max_batch_bytes + ENVELOPE_BYTES
        if settings.max_buffered_bytes < largest:
            raise ValueError(
                f"GATEWAY_MAX_BUFFERED_BYTES ({settings.max_buffered_bytes}) must be at least the "
                f"largest batch body, max_upload_bytes x max_batch_files + {ENVELOPE_BYTES} ({largest})"
            )
        return cls(settings.max_buffered_bytes, settings.retry_after_s)

    def take(self, size: int) -> None:
        if self.used + size > self.capacity:
            raise Problem(
                "server-busy",
                "the gateway is holding as many uploads as it can; retry shortly",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size


class Hold:
    """What one request has reserved."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0

    def cover(self, size: int) -> None:
        """Have at least `size` bytes reserved for this request, or raise the Problem that refuses it."""
        if size <= self.held:
            return
        if size > self.budget.capacity:
            raise Problem(
                "payload-too-large",
                f"the request needs {size} bytes of memory, more than the "
                f"{self.budget.capacity} this gateway holds for all uploads together",
            )
        self.budget.take(size - self.held)
        self.held = size

    def release(self) -> None:
        self.budget.give(self.held)
        self.held = 0


def hold_of(request: Request) -> Hold:
    """The request's reservation, from its state (set by `BudgetMiddleware`)."""
    hold: Hold = request.state.body_hold
    return hold


class BudgetMiddleware:
    """Pure ASGI: a `Hold` for every HTTP request (in its state), released when the request has ended."""

    def __init__(self, app: ASGIApp, budget: BodyBudget) -> None:
        self.app = app
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hold = Hold(self.budget)
        scope.setdefault("state", {})["body_hold"] = hold
        try:
            await self.app(scope, receive, send)
        finally:
            hold.release()
