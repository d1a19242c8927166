"""Fixtures of the infra suite: a clean environment for terraform and boto3, and a moto server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from support import free_port

REGION = "us-east-1"


@pytest.fixture(scope="module")
def tf_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for terraform: fake credentials, no user AWS/Terraform config leaking in."""
    home = tmp_path_factory.mktemp("tf-home")
    cli_config = home / "terraformrc"
    cli_config.write_text("")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "TF_VAR_", "TF_CLI_ARGS", "TF_LOG", "TF_DATA_DIR", "TF_WORKSPACE"))
    }
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(home / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        TF_CLI_CONFIG_FILE=str(cli_config),
        TF_IN_AUTOMATION="1",
        CHECKPOINT_DISABLE="1",
    )
    return env


@pytest.fixture(scope="module")
def moto_url(tf_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server on 127.0.0.1:<free port>, started with this interpreter, always stopped."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = dict(tf_env, MOTO_IAM_LOAD_MANAGED_POLICIES="true")
    with log.open("w") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"moto server exited with {proc.returncode} (is `moto[server]` installed for "
                    f"{sys.executable}?):\n{log.read_text()[-3000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"moto server did not listen on {port}:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
