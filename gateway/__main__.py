"""`python -m gateway`: serve the gateway with uvicorn, configured from the GATEWAY_* settings."""

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
        workers=settings.workers,
        loop="uvloop",
        http="gateway.protocol:GuardedHttpToolsProtocol",
        timeout_keep_alive=settings.keep_alive_s,
        server_header=False,
        access_log=False,
        log_config=None,
    )


if __name__ == "__main__":
    main()
