"""POST /v1/embed and /v1/embed/batch: an image's embedding, for "find similar images".

The embedding is ResNet50's pooled 2048-d vector (the final layer's input), L2-normalised, so the dot
product of two embeddings is their cosine similarity. It comes from the same forward pass as the scores.
`encoding=json` (default) gives a list of floats; `encoding=base64` the float32 little-endian bytes in
base64 (exact, and about a quarter of the size).
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from gateway import schemas
from gateway.auth import authenticate
from gateway.routes import batch_route, classify, model_block, run_batch, single_image, single_route, timing_ms
from gateway.validation import CheckedImage
from gateway.vectors import floats

router = APIRouter()
Authenticated = Annotated[str, Depends(authenticate)]
Encoding = Annotated[Literal["json", "base64"], Query(description="json: a list of floats; base64: float32 LE")]
UPSTREAM = {"X-Output": "embedding"}


def vector(result: dict[str, Any], encoding: str) -> dict[str, Any]:
    """The handler's base64 float32 vector, as the client asked for it."""
    raw = result["embedding"]
    values = floats(base64.b64decode(raw))
    return {"embedding": values if encoding == "json" else raw, "dimensions": len(values)}


async def embed_one(request: Request, image: CheckedImage, encoding: str) -> tuple[dict[str, Any], float]:
    result, upstream_s = await classify(request, image, 1, UPSTREAM)
    return {"model": model_block(result), **vector(result, encoding)}, upstream_s


@single_route(router, "/v1/embed", schemas.Embedding, "The image's embedding (L2-normalised, 2048-d)",
              "Input as for /v1/predict. The dot product of two embeddings is their cosine similarity.")  # fmt: skip
async def embed(request: Request, _: Authenticated, encoding: Encoding = "json") -> dict:
    started = time.perf_counter()
    answer, upstream_s = await embed_one(request, await single_image(request), encoding)
    request.app.state.metrics.images.labels("classified").inc()
    return {"request_id": request.state.request_id, "encoding": encoding, **answer,
            "timing_ms": timing_ms(started, upstream_s)}  # fmt: skip


@batch_route(router, "/v1/embed/batch", schemas.BatchEmbedding, "Embeddings of several images")
async def embed_batch(request: Request, _: Authenticated, encoding: Encoding = "json") -> dict:
    async def work(image: CheckedImage) -> dict[str, Any]:
        answer, _ = await embed_one(request, image, encoding)
        return answer

    return {**await run_batch(request, work), "encoding": encoding}
