"""`python -m gateway.warmup`: one inference straight to TorchServe, through the gateway's own client.

deploy/rollout-instance.sh runs it inside a freshly started gateway container (`docker compose exec
gateway python -m gateway.warmup`) before the instance goes back into rotation, so the first client's
request does not pay for a cold worker. It needs no client API key: it talks to TorchServe's inference
API with TorchServe's own key from the mounted key file, as every request of the gateway does. Prints
the top class and exits 0; exits 1 with the problem's detail when TorchServe gives no answer.
"""

from __future__ import annotations

import asyncio
import io
import sys
import uuid

from PIL import Image

from contract.wire import ItemAnswer
from gateway.problems import Problem
from gateway.settings import get_settings
from gateway.upstream import TorchServeClient


def warmup_image() -> bytes:
    """A small generated JPEG: it goes through the whole pipeline (decode, resize, model) like a photo."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 160, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


async def warm_up() -> ItemAnswer:
    client = TorchServeClient(get_settings())
    try:
        return await client.predict(warmup_image(), top_k=1, request_id=f"warmup-{uuid.uuid4().hex[:12]}")
    finally:
        await client.close()


def main() -> int:
    try:
        answer = asyncio.run(warm_up())
    except Problem as problem:
        print(f"warm-up inference failed: {problem.detail}", file=sys.stderr)
        return 1
    top = answer["predictions"][0]
    print(f"warm-up inference answered: {top['label']} {top['score']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
