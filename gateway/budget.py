"""The bytes of request bodies the gateway process holds in memory at once, shared by all its requests, and
for how long a request may hold them while its body arrives.

A request reserves what it will hold before it holds it: its declared Content-Length up front (so the
refusal comes from the head alone, before the upload), else its bytes as they arrive. A reservation that
would pass `max_buffered_bytes`, or the caller's share of it (`key_share_bytes`, once its API key is known),
gets 503 `server-busy` with Retry-After; one that could never fit, even alone, 413. `BudgetMiddleware` gives
every HTTP request its `Hold` and releases it when the request ends, however it ends (answered, failed,
cancelled, client gone).

Pace: a body must keep up with `body_rate_bytes_s` on average from its head, after `body_grace_s`: its n-th
byte is due `body_grace_s + n / body_rate_bytes_s` after the head. A read still waiting when the next byte is
due fails with 408 `request-timeout`, and the request's reservation is released before the answer. A wait
between reads alone would not do: a client sending a byte a second never waits long, and holds its
reservation for as long as it likes.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.problems import Problem
from gateway.settings import Settings


class BodyBudget:
    def __init__(self, capacity: int, key_share: int, retry_after_s: int) -> None:
        self.capacity = capacity
        self.key_share = key_share
        self.retry_after_s = retry_after_s
        self.used = 0
        self.used_by: dict[str, int] = {}  # by API key id: only keys that hold something

    @classmethod
    def of(cls, settings: Settings) -> BodyBudget:
        return cls(settings.max_buffered_bytes, settings.key_share_bytes, settings.retry_after_s)

    def limit(self, key_id: str | None) -> int:
        """The most a request of `key_id` (None: not known yet) could ever hold."""
        return self.capacity if key_id is None else min(self.capacity, self.key_share)

    def take(self, size: int, key_id: str | None) -> None:
        if self.used + size > self.capacity:
            raise self._busy("the gateway is holding as many uploads as it can")
        if key_id is not None:
            if self.used_by.get(key_id, 0) + size > self.key_share:
                raise self._busy("this API key's uploads in flight already hold its share of the gateway's memory")
            self.used_by[key_id] = self.used_by.get(key_id, 0) + size
        self.used += size

    def give(self, size: int, key_id: str | None) -> None:
        self.used -= size
        if key_id is not None and size:
            left = self.used_by.pop(key_id) - size
            if left:
                self.used_by[key_id] = left

    def _busy(self, detail: str) -> Problem:
        return Problem("server-busy", f"{detail}; retry shortly", headers={"Retry-After": str(self.retry_after_s)})


class Hold:
    """What one request has reserved, charged to its API key once that is known (`belongs_to`)."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0
        self.key_id: str | None = None

    def belongs_to(self, key_id: str) -> None:
        """Charge what the request holds to `key_id` from now on (its caller, known from the head)."""
        held = self.held
        self.release()
        self.key_id = key_id
        self.cover(held)

    def cover(self, size: int) -> None:
        """Have at least `size` bytes reserved for this request, or raise the Problem that refuses it."""
        if size <= self.held:
            return
        limit = self.budget.limit(self.key_id)
        if size > limit:
            whose = "for all uploads together" if self.key_id is None else "for one API key's uploads"
            raise Problem(
                "payload-too-large",
                f"the request needs {size} bytes of memory, more than the {limit} this gateway holds {whose}",
            )
        self.budget.take(size - self.held, self.key_id)
        self.held = size

    def release(self) -> None:
        self.budget.give(self.held, self.key_id)
        self.held = 0


def hold_of(request: Request) -> Hold:
    """The request's reservation, from its state (set by `BudgetMiddleware`)."""
    hold: Hold = request.state.body_hold
    return hold


class BudgetMiddleware:
    """Pure ASGI: a `Hold` for every HTTP request (in its state), released when the request has ended or its
    body has fallen behind the pace (the module's docstring)."""

    def __init__(self, app: ASGIApp, budget: BodyBudget, rate_bytes_s: int, grace_s: float) -> None:
        self.app = app
        self.budget = budget
        self.rate_bytes_s = rate_bytes_s
        self.grace_s = grace_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hold = Hold(self.budget)
        scope.setdefault("state", {})["body_hold"] = hold
        try:
            await self.app(scope, self.paced(receive, hold), send)
        finally:
            hold.release()

    def paced(self, receive: Receive, hold: Hold) -> Receive:
        """`receive`, with each read of the body failing once the body is behind the pace."""
        began = time.monotonic()
        received = 0
        body_done = False

        async def receive_in_time() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body, a read waits for the client to leave: no pace
                return await receive()
            due = began + self.grace_s + received / self.rate_bytes_s
            try:
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                hold.release()
                detail = f"the request body arrived slower than {self.rate_bytes_s} bytes/s"
                raise Problem("request-timeout", f"{detail} (after the first {self.grace_s:g} s)") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        return receive_in_time
