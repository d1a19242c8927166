"""`python -m gateway`: serve the gateway with uvicorn, configured from the GATEWAY_* settings.

One process, on purpose: its /metrics and its per-key rate-limit buckets are then the whole gateway's (or
container's). It spends a twentieth of the CPU TorchServe spends per request (docs/docker.md,
"What runs"), so one process keeps up with TorchServe; scale out with more containers, not workers.
Signals (gateway/drain.py): SIGTERM drains for GATEWAY_DRAIN_S, then stops; SIGUSR1 drains; SIGINT stops.
"""

from __future__ import annotations

import contextlib
import sys

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from gateway import logs
from gateway.drain import DrainSignals
from gateway.main import create_app
from gateway.protocol import ConnectionLimits, guarded_protocol
from gateway.settings import get_settings


def main() -> None:
    settings = get_settings()
    logs.configure(settings.log_level)  # the process's logging: JSON lines on stdout
    app = create_app(settings)
    signals = DrainSignals(app.state.drain)
    config = uvicorn.Config(
        signals.around(app),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=guarded_protocol(ConnectionLimits.of(settings)),
        ws="none",  # no WebSocket route: an Upgrade request is answered as HTTP
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # typed int; used as call_later's float
        # once stopping, a request in flight has this long to finish: a wait for an upstream slot, then the call
        timeout_graceful_shutdown=settings.queue_timeout_s + settings.request_timeout_s,  # type: ignore[arg-type]  # typed int; asyncio.wait's float timeout
        server_header=False,
        access_log=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, re-raised by uvicorn once stopped: as uvicorn.run
        signals.run(server)
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
