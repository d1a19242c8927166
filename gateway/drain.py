"""Draining: taking the gateway out of a load balancer's rotation before it stops, so that no request is lost.

SIGTERM or SIGUSR1 starts draining: from then on `/readyz` and `/v2/health/ready` answer 503 `draining`, every
other route keeps serving, and every answer carries `Connection: close` (a keep-alive client reconnects, and
the balancer sends the new connection elsewhere). SIGUSR1 only drains; SIGTERM also stops the gateway once
`GATEWAY_DRAIN_S` has passed since draining began (the first of the two signals): it stops accepting,
finishes what is in flight (up to the queue and request timeouts) and exits 0. With the default 0 a SIGTERM
stops at once, as uvicorn does. SIGINT (Ctrl-C) stops without draining.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from types import FrameType

import uvicorn
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("gateway.drain")


class Drain:
    """Whether the gateway is draining, and since when. Set from signal handlers, read by the routes."""

    def __init__(self, drain_s: float) -> None:
        self.drain_s = drain_s
        self.began: float | None = None

    @property
    def draining(self) -> bool:
        return self.began is not None

    def start(self) -> None:
        if self.began is None:
            self.began = time.monotonic()

    def over(self) -> bool:
        """Draining began at least `drain_s` ago."""
        return self.began is not None and time.monotonic() - self.began >= self.drain_s


class DrainMiddleware:
    """While draining, every answer says `Connection: close` (uvicorn then closes the connection after it)."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.drain.draining:
                MutableHeaders(scope=message)["Connection"] = "close"
            await send(message)

        await self.app(scope, receive, send_closing)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with SIGTERM turned into drain-then-stop and SIGUSR1 into drain, for `Drain`."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self.stop_asked = False  # SIGTERM received: stop once the drain is over
        self._logged_drain = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = signal.signal(signal.SIGUSR1, self.handle_exit)
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(signal.SIGUSR1, previous)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Only flags here (a signal handler): the main loop acts on them at its next tick (0.1 s).
        if sig in (signal.SIGTERM, signal.SIGUSR1):
            self.drain.start()
            self.stop_asked = self.stop_asked or sig == signal.SIGTERM
        else:  # SIGINT: uvicorn's own (stop now; a second one stops without waiting for requests)
            super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain.draining and not self._logged_drain:
            self._logged_drain = True
            logger.info(
                "draining: /readyz answers 503, answers close their connections; SIGTERM stops %g s "
                "after the drain began",
                self.drain.drain_s,
            )
        if self.stop_asked and not self.should_exit and self.drain.over():
            logger.info("drain over: stopping (SIGTERM)")
            self.should_exit = True
        return await super().on_tick(counter)
