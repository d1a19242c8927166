"""Process groups: a server and every process it starts, signalled and stopped as one.

Each server (TorchServe, whose Java frontend starts the Python workers itself; the gateway) runs in a
process group of its own, so stopping its group stops all of its processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence


def signal_group(group: int, sig: int) -> bool:
    """Send `sig` to a process group; False once the group has no process left."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    return True


def stop_groups(groups: list[int], grace_s: float, children: Sequence[subprocess.Popen[bytes]] = ()) -> None:
    """TERM every group, wait for them to empty, KILL what is left after `grace_s`. `children`: this process's
    own children among them, reaped while waiting (an unreaped zombie keeps its group alive) and at the end."""
    for group in groups:
        signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(signal_group(group, 0) for group in groups):
        for child in children:
            child.poll()
        time.sleep(0.1)
    for group in groups:
        signal_group(group, signal.SIGKILL)
    for child in children:
        child.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM interrupts the main thread as Ctrl-C does, so that every server started so far is stopped by
    the context manager or `finally` that started it (`make run`, `make bench`, the serve container)."""
    signal.signal(signal.SIGTERM, _interrupt)
