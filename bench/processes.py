"""The processes a benchmark watches, by role: where the time goes (CPU per request, py-spy profiles).

Roles: any named process with its children (`gateway=pid`), and TorchServe's tree split into its Java
frontend and its python `model_service_worker`s (worker pids change on restarts, so roles are looked up
again at each reading). The load generator is this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil

LOAD_GENERATOR = "load generator"


def tree(pid: int) -> list[psutil.Process]:
    if pid <= 0:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def process_roles(torchserve_pid: int = -1, **named: int) -> dict[str, list[psutil.Process]]:
    roles = {name: tree(pid) for name, pid in named.items()}
    if torchserve_pid > 0:
        roles["frontend"], roles["worker"] = [], []
    for proc in tree(torchserve_pid):
        try:
            cmdline = " ".join(proc.cmdline())
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "model_service_worker" in cmdline:
            roles["worker"].append(proc)
        elif name == "java" or cmdline.startswith("java ") or "/java " in cmdline:
            roles["frontend"].append(proc)
    return roles


def totals(roles: dict[str, list[psutil.Process]], measure: Callable[[psutil.Process], float]) -> dict[str, float]:
    """`measure` summed over each role's processes (one that has exited meanwhile counts nothing)."""
    summed = {}
    for role, procs in roles.items():
        summed[role] = 0.0
        for proc in procs:
            with suppress(psutil.NoSuchProcess):
                summed[role] += measure(proc)
    return summed


class CpuMeter:
    """CPU seconds (user + system) used so far by each role and by the load generator."""

    def __init__(self, torchserve_pid: int = -1, **named: int) -> None:
        self.torchserve_pid = torchserve_pid
        self.named = named

    def roles(self) -> dict[str, list[psutil.Process]]:
        return process_roles(self.torchserve_pid, **self.named)

    def read(self) -> dict[str, float]:
        used = totals(self.roles(), lambda proc: sum(proc.cpu_times()[:2]))  # user + system
        me = os.times()
        used[LOAD_GENERATOR] = me.user + me.system
        return used


def cpu_ms_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    return {role: round((after[role] - before.get(role, 0.0)) * 1000 / max(requests, 1), 3) for role in after}


@contextmanager
def profiled(meter: CpuMeter, seconds: float, prefix: Path) -> Iterator[None]:
    """py-spy flame graphs (SVG, `<prefix>-<role>-<pid>.svg`) of every python process of `meter`, and of the
    load generator, for `seconds`; a process py-spy cannot attach to is reported and skipped."""
    targets = [(role, proc.pid) for role, procs in meter.roles().items() for proc in procs if "python" in proc.name()]
    targets.append((LOAD_GENERATOR, os.getpid()))
    py_spy = Path(sys.executable).parent / "py-spy"
    spies = []
    for role, pid in targets:
        path = prefix.with_name(f"{prefix.name}-{role.replace(' ', '-')}-{pid}.svg")
        args = [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "200",
            "--nonblocking",
            "--output",
            str(path),
        ]
        spies.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        yield
    finally:
        for spy, (role, pid) in zip(spies, targets, strict=True):
            try:
                _, err = spy.communicate(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                spy.kill()
                err = b"timed out"
            if spy.returncode != 0:
                print(f"  py-spy could not profile {role} ({pid}): {err.decode(errors='replace').strip()[-200:]}")
