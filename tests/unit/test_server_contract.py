"""The contract between the gateway's HTTP layer and the server under it, pinned to the versions it was
checked against: this fails when uvicorn or httptools changes, before anything breaks silently.

Why the layer exists (docs/development.md, "The HTTP edge"): measured against the suite's guarantee tests, no
candidate server (uvicorn alone, Hypercorn 0.18.0, Granian 2.8.7) bounds request heads in time and size the
way test_security.py demands (empty lines before a head, a pipelined head, chunk-size lines and trailers
counted) and answers its refusals as problem+json with a request id; so gateway/protocol.py and
gateway/framing.py hold them, below ASGI, around uvicorn's httptools protocol. By composition and public
names only: `GuardedConnection` is uvicorn's `http` class (`--http` takes any), makes uvicorn's protocol with
its public constructor and hands it a transport of its own; it parses each piece with httptools' public parser
before uvicorn's protocol parses the same piece with the same parser, so both see the same requests (hence the
httptools pin). gateway/drain.py runs the public `uvicorn.Server` and replaces its SIGTERM handler once the
app's startup is complete, which relies on uvicorn installing its handlers before that (test_drain.py checks
it). On an upgrade: run tests/integration/test_security.py, test_fuzz.py, test_early_answers.py and
test_drain.py against the new version, then update PINNED and pyproject.toml together. (What ASGI can hold is
held in ASGI, on any server: early answers, gateway/early.py; the body pace, gateway/budget.py.)
"""

from __future__ import annotations

import inspect
import re
import tomllib
from importlib.metadata import version

import httptools
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelserver.paths import REPO_ROOT

PINNED = {"uvicorn": "0.54.0", "httptools": "0.9.0"}  # the versions gateway/protocol.py was checked against

# What gateway/protocol.py, gateway/drain.py and gateway/__main__.py use, all public.
CONSTRUCTOR = ["self", "config", "server_state", "app_state", "_loop"]  # what uvicorn passes to any `http` class
PROTOCOL_NAMES = (
    "connection_made",
    "data_received",
    "eof_received",
    "connection_lost",
    "pause_writing",
    "resume_writing",
)
PARSER_NAMES = ("feed_data", "get_method", "should_keep_alive")
ERRORS = ("HttpParserError", "HttpParserUpgrade")
SERVER_NAMES = ("run", "should_exit", "started")


@pytest.mark.parametrize("package", sorted(PINNED))
def test_the_server_is_the_version_the_http_layer_was_checked_against(package: str) -> None:
    assert version(package) == PINNED[package], (
        f"{package} {version(package)} is installed; gateway/protocol.py and gateway/drain.py were checked "
        f"against {PINNED[package]}: run the guarantee tests (this module's docstring), then update PINNED"
    )


@pytest.mark.parametrize("package", sorted(PINNED))
def test_the_pin_in_pyproject_is_the_checked_version(package: str) -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    pins = [
        d for d in [*project.get("dependencies", []), *(d for e in extras for d in e)] if re.match(rf"{package}\b", d)
    ]
    assert pins == [f"{package}=={PINNED[package]}"], pins


def test_the_names_the_layer_uses_are_there() -> None:
    """Names only: what they do is what the guarantee tests check."""
    assert list(inspect.signature(HttpToolsProtocol.__init__).parameters) == CONSTRUCTOR
    missing = [name for name in PROTOCOL_NAMES if not callable(getattr(HttpToolsProtocol, name, None))]
    parser = httptools.HttpRequestParser
    missing += [f"parser.{name}" for name in PARSER_NAMES if not callable(getattr(parser, name, None))]
    missing += [f"httptools.{name}" for name in ERRORS if not hasattr(httptools, name)]
    server = uvicorn.Server(uvicorn.Config(app=None, http=HttpToolsProtocol, ws="none"))
    missing += [f"Server.{name}" for name in SERVER_NAMES if not hasattr(server, name)]
    assert not missing, f"{missing} are gone: gateway/protocol.py or gateway/drain.py must change"
