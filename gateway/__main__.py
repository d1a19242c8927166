"""`python -m gateway`: serve the gateway with uvicorn, configured from the GATEWAY_* settings.

One process, on purpose: its /metrics and its per-key rate-limit buckets are then the whole gateway's (or
container's). It spends a twentieth of the CPU TorchServe spends per request (README, "Run with
Docker"), so one process keeps up with TorchServe; scale out with more containers, not workers.
"""

from __future__ import annotations

import uvicorn

from gateway.settings import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run(
        "gateway.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="gateway.protocol:GuardedHttpToolsProtocol",
        timeout_keep_alive=settings.keep_alive_s,
        server_header=False,
        access_log=False,
        log_config=None,
    )


if __name__ == "__main__":
    main()
