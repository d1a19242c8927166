"""Helpers shared by the tests. The gateway and free ports come from the code `make run` uses too."""

from __future__ import annotations

import os
import sys

from modelserver.gateway_process import GatewayProcess as Gateway
from modelserver.gateway_process import gateway_env
from modelserver.torchserve import free_port

__all__ = ["PYTHON", "Gateway", "free_port", "gateway_env", "group_alive"]

PYTHON = sys.executable


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
