"""`python -m gateway.warmup`, what deploy/rollout-instance.sh runs in a new gateway container: one inference
straight to a real TorchServe with its key from the key file, no client API key."""

from __future__ import annotations

import os
import subprocess

from support import PYTHON, gateway_env

from modelserver.paths import REPO_ROOT
from modelserver.torchserve import TorchServe


def warm_up(torchserve: TorchServe, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **gateway_env(torchserve, [], **settings)}
    return subprocess.run(
        [PYTHON, "-m", "gateway.warmup"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_warmup_gets_an_answer_from_torchserve(torchserve: TorchServe) -> None:
    done = warm_up(torchserve)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("warm-up inference answered: "), done.stdout


def test_warmup_fails_with_the_reason_when_torchserve_cannot_answer(torchserve: TorchServe) -> None:
    missing = warm_up(torchserve, model_name="missing")
    assert missing.returncode == 1 and "warm-up inference failed: the model has no free worker" in missing.stderr
    unreachable = warm_up(torchserve, inference_url="http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "the model server is unreachable" in unreachable.stderr
    assert "Traceback" not in missing.stderr + unreachable.stderr
