"""The benchmark's "where the time goes" accounting: CPU per request of each watched process tree."""

from __future__ import annotations

import subprocess
import sys

import psutil

from bench.processes import LOAD_GENERATOR, CpuMeter, cpu_ms_per_request

BURN_2S = "import time\nend = time.process_time() + 2\nwhile time.process_time() < end: pass\n"
PARENT = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {BURN_2S!r}])\ninput()\n"


def test_cpu_of_each_process_tree_and_of_the_load_generator() -> None:
    busy = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE)  # idle parent, busy child
    idle = subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE)
    try:
        meter = CpuMeter(busy=busy.pid, idle=idle.pid)
        before = meter.read()
        while meter.read()["busy"] - before["busy"] < 0.5:  # this loop is the "load generator"'s work
            pass
        per_request = cpu_ms_per_request(before, meter.read(), requests=10)
        assert set(per_request) == {"busy", "idle", LOAD_GENERATOR}
        assert 50 <= per_request["busy"] <= 70, per_request  # ~0.5 s over 10 requests, all in the child
        assert per_request["idle"] < 5, per_request
        assert per_request[LOAD_GENERATOR] > 1, per_request
    finally:
        for child in psutil.Process(busy.pid).children(recursive=True):
            child.kill()
        for proc in (busy, idle):
            proc.kill()
            proc.wait()
