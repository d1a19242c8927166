"""Two instant servers for measuring the gateway's own overhead.

`python -m bench.stubs PORT`: answers like TorchServe with our handler, at once (predictions, model
description), on aiohttp's low-level server: the cheapest well-kept HTTP server at hand, so that the
backend's own CPU (which shares the machine) counts as little as possible against the gateway.
`bare`: a bare Starlette endpoint that only reads the same upload; run it with uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contract.wire import MODEL_NAME, ServedModel

MODEL: ServedModel = {"name": MODEL_NAME, "version": "1.0", "weights": "stub", "untrained": True, "engine": "stub"}
LABELS = [f"class {i}" for i in range(1000)]  # ImageNet's count: the gateway reads it from the description
PREDICTION = {
    "predictions": [{"class_id": i, "label": LABELS[i], "score": 0.5 / (i + 1)} for i in range(20)],
    "model": MODEL,
}
DESCRIPTION = [
    {
        "modelName": MODEL_NAME,
        "workers": [{"id": "9000", "status": "READY"}],
        "customizedMetadata": {**MODEL, "labels": len(LABELS), "label_names": LABELS},
    }
]
PREDICTION_BODY = json.dumps(PREDICTION).encode()
DESCRIPTION_BODY = json.dumps(DESCRIPTION).encode()
HEALTHY_BODY = b'{"status": "ok"}'


async def torchserve_stub(request: web.BaseRequest) -> web.Response:
    if request.method == "POST" and request.path.startswith("/predictions/"):
        await request.read()
        body = PREDICTION_BODY
    elif request.path.startswith("/models/"):
        body = DESCRIPTION_BODY
    elif request.path == "/healthz":
        body = HEALTHY_BODY
    else:
        return web.Response(status=404)
    return web.Response(body=body, content_type="application/json")


async def serve_stub(port: int) -> None:
    runner = web.ServerRunner(web.Server(torchserve_stub, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until terminated


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def bare_upload(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


bare = Starlette(routes=[Route("/v1/predict", bare_upload, methods=["POST"]), Route("/healthz", healthz)])

if __name__ == "__main__":
    asyncio.run(serve_stub(int(sys.argv[1])))
