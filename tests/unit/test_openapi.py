"""The gateway's /openapi.json is the committed schema (tests/unit/openapi.json), byte for byte: a refactor
that changes the public API's description shows up here as a diff of that file.

The app runs in process (httpx over ASGI, no server, no TorchServe: the schema needs neither). The file is
stored indented for readable diffs; the test compares the served bytes with it in the compact form FastAPI
serves (the key order is the file's own). After an intended change to the API, write it anew with
`python tests/unit/test_openapi.py` and review the diff."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from gateway.main import create_app
from gateway.settings import Settings

SCHEMA = Path(__file__).with_name("openapi.json")


def served_schema() -> bytes:
    """The bytes of GET /openapi.json of an app made from fixed settings (not the environment's)."""
    app = create_app(Settings(api_key_hashes=["a" * 64]))

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.get("/openapi.json")

    response = asyncio.run(get())
    assert response.status_code == 200, response.text
    return response.content


def compact(schema: object) -> bytes:
    """`schema` serialised as Starlette's JSONResponse serialises it."""
    return json.dumps(schema, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def test_the_schema_is_the_committed_one() -> None:
    committed = json.loads(SCHEMA.read_text())
    assert compact(committed) == served_schema(), "the API's schema changed: see this module's docstring"


if __name__ == "__main__":
    SCHEMA.write_text(json.dumps(json.loads(served_schema()), ensure_ascii=False, indent=1) + "\n")
