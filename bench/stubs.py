"""Two instant servers for measuring the gateway's own overhead.

`torchserve_stub`: answers like TorchServe with our handler, at once (predictions, model description).
`bare`: a bare Starlette endpoint that only reads the same upload. Run either with uvicorn.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

PREDICTION = {
    "predictions": [{"class_id": i, "label": f"class {i}", "score": 0.5 / (i + 1)} for i in range(20)],
    "model": {"name": "resnet50", "version": "1.0", "weights": "stub", "untrained": True, "engine": "stub"},
}
DESCRIPTION = [{"modelName": "resnet50", "workers": [{"id": "9000", "status": "READY"}],
                "customizedMetadata": {**PREDICTION["model"], "labels": 1000}}]  # fmt: skip


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def predict(request: Request) -> Response:
    await request.body()
    return JSONResponse({**PREDICTION, "request_id": request.headers.get("x-request-id")})


async def describe(request: Request) -> Response:
    return JSONResponse(DESCRIPTION)


async def bare_upload(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


torchserve_stub = Starlette(
    routes=[
        Route("/predictions/{name}", predict, methods=["POST"]),
        Route("/models/{name}", describe),
        Route("/healthz", healthz),
    ]
)
bare = Starlette(routes=[Route("/v1/predict", bare_upload, methods=["POST"]), Route("/healthz", healthz)])
