"""Servers die with their launcher, however the launcher dies (SIGKILL, a crash, a closed terminal).

TorchServe and the gateway each run in a process group of their own (so that stopping one takes all its
processes: TorchServe's Java frontend starts the Python workers itself), and no signal sent to the launcher
reaches them. `PR_SET_PDEATHSIG` would not do either: it covers a direct child only, not Java nor its workers.

So the launcher starts this watchdog first, in a session of its own, with a pipe on its stdin of which the
launcher holds the only write end, and writes the id of each process group it starts. When the pipe closes
(the launcher leaves its `with` block, or dies: the kernel closes its end whatever killed it), the watchdog
stops every group that still has a process: TERM, then KILL after a grace period. After a clean stop by the
launcher there is nothing left to stop, and it exits at once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from contextlib import suppress
from typing import IO, Self

from modelserver.process_groups import stop_groups

GRACE_S = 20.0


def watch(commands: IO[str]) -> list[int]:
    """The group ids written to `commands`, read until its writer closes it."""
    return [int(line) for line in commands]


class Watchdog:
    """`with Watchdog() as watchdog:` then `watchdog.watch(pgid)` for each server started. Leaving the block
    waits until whatever the launcher did not stop (a second Ctrl-C in its cleanup) is stopped."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        # A session of its own: Ctrl-C in the terminal (SIGINT to the launcher's group) does not reach it.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelserver.watchdog"], stdin=subprocess.PIPE, text=True, start_new_session=True
        )
        return self

    def watch(self, group: int) -> None:
        assert self.process is not None and self.process.stdin is not None, "enter the block first"
        self.process.stdin.write(f"{group}\n")
        self.process.stdin.flush()

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None and self.process.stdin is not None
        with suppress(BrokenPipeError):
            self.process.stdin.close()
        self.process.wait()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_groups(watch(sys.stdin), GRACE_S)


if __name__ == "__main__":
    main()
