"""Draining: taking the gateway out of a load balancer's rotation before it stops, so that no request is lost.

SIGTERM or SIGUSR1 starts draining: from then on `/readyz` and `/v2/health/ready` answer 503 `draining`, every
other route keeps serving, and every answer carries `Connection: close` (a keep-alive client reconnects, and
the balancer sends the new connection elsewhere). SIGUSR1 only drains; SIGTERM also stops the gateway once
`GATEWAY_DRAIN_S` has passed since draining began (the first of the two signals): it stops accepting,
finishes what is in flight (up to the queue and request timeouts) and exits 0. With the default 0 a SIGTERM
stops at once, as uvicorn does. SIGINT (Ctrl-C) stops without draining.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
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


class DrainSignals:
    """SIGTERM and SIGUSR1 turned into drains of `Drain`, around uvicorn's public `Server`, not a subclass of it.

    uvicorn installs its own handlers for SIGINT and SIGTERM as it begins serving (and puts back the previous
    ones when it stops): ours replace its SIGTERM handler once the app's startup is complete, which is before
    uvicorn listens, so no request is served without them; SIGUSR1 is ours from the start; SIGINT stays
    uvicorn's. They are Python signal handlers, as uvicorn's are: they run in the main thread, which runs the
    event loop, before any further Python code, so a request read after the signal sees the drain (run on
    another thread, the drain began a few milliseconds late and readiness probes sent right after SIGUSR1 still
    answered 200). Only flags there; a task on the loop acts on them every `TICK_S` (uvicorn's own tick)."""

    TICK_S = 0.1

    def __init__(self, drain: Drain) -> None:
        self.drain = drain
        self.stop_asked = False  # SIGTERM received: stop once the drain is over
        self._server: uvicorn.Server | None = None
        self._watching: asyncio.Task[None] | None = None  # held: the loop keeps only a weak reference to a task

    def run(self, server: uvicorn.Server) -> None:
        """`server.run()`, its config's app made by `around`, with the signals above."""
        self._server = server
        previous = signal.signal(signal.SIGUSR1, self.handle)
        try:
            server.run()
        finally:
            signal.signal(signal.SIGUSR1, previous)

    def around(self, app: ASGIApp) -> ASGIApp:
        """`app`, which installs the SIGTERM handler when its startup is complete (the lifespan protocol)."""

        async def started(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "lifespan":
                await app(scope, receive, send)
                return

            async def send_started(message: Message) -> None:
                await send(message)
                if message["type"] == "lifespan.startup.complete":
                    signal.signal(signal.SIGTERM, self.handle)
                    self._watching = asyncio.get_running_loop().create_task(self._watch())

            await app(scope, receive, send_started)

        return started

    def handle(self, sig: int, frame: FrameType | None) -> None:
        self.drain.start()
        self.stop_asked = self.stop_asked or sig == signal.SIGTERM

    async def _watch(self) -> None:
        while not self.drain.draining:
            await asyncio.sleep(self.TICK_S)
        logger.info(
            "draining: /readyz answers 503, answers close their connections; SIGTERM stops %g s after the drain began",
            self.drain.drain_s,
        )
        while not (self.stop_asked and self.drain.over()):
            await asyncio.sleep(self.TICK_S)
        logger.info("drain over: stopping (SIGTERM)")
        assert self._server is not None
        self._server.should_exit = True
