"""Draining: taking the gateway out of a load balancer's rotation before it stops, so that no request is lost.

SIGTERM or SIGUSR1 starts draining: from then on `/readyz` and `/v2/health/ready` answer 503 `draining`, every
other route keeps serving, and every answer carries `Connection: close` (a keep-alive client reconnects, and
the balancer sends the new connection elsewhere). SIGUSR1 only drains; SIGTERM also stops the gateway once
`GATEWAY_DRAIN_S` has passed since draining began (the first of the two signals): it stops accepting,
finishes what is in flight (up to the queue and request timeouts) and exits 0. With the default 0 a SIGTERM
stops at once, as uvicorn does. SIGINT (Ctrl-C) stops without draining (a second one without waiting for
the requests in flight).

The signals are ours, not uvicorn's: `serve` runs uvicorn's server in a thread of its own, where uvicorn
installs no signal handlers, and handles them in the main thread, telling the server to stop through its
public `should_exit` and `force_exit` (no uvicorn class is subclassed; tests/unit/test_server_contract.py).
"""

from __future__ import annotations

import logging
import signal
import threading
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


SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
TICK_S = 0.1  # how often the main thread looks at the drain and the server


def serve(server: uvicorn.Server, drain: Drain) -> None:
    """Run `server` until it stops: SIGTERM turned into drain-then-stop, SIGUSR1 into drain (for `drain`),
    SIGINT into stop. Returns once the server has stopped (see `server.started` for whether it ever ran)."""
    stop_asked = False  # SIGTERM received: stop once the drain is over

    def on_signal(sig: int, frame: FrameType | None) -> None:
        # Only flags here (a signal handler): the loop below acts on them at its next tick.
        nonlocal stop_asked
        if sig == signal.SIGINT:
            server.force_exit = server.should_exit  # a second Ctrl-C: stop without waiting for requests
            server.should_exit = True
        else:
            drain.start()
            stop_asked = stop_asked or sig == signal.SIGTERM

    previous = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
    thread = threading.Thread(target=server.run, name="uvicorn")
    logged_drain = False
    try:
        thread.start()
        while thread.is_alive():
            thread.join(TICK_S)
            if drain.draining and not logged_drain:
                logged_drain = True
                logger.info(
                    "draining: /readyz answers 503, answers close their connections; SIGTERM stops %g s "
                    "after the drain began",
                    drain.drain_s,
                )
            if stop_asked and not server.should_exit and drain.over():
                logger.info("drain over: stopping (SIGTERM)")
                server.should_exit = True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
