"""POST /v1/embed and /v1/embed/batch: an image's embedding, for "find similar images".

The embedding is ResNet50's pooled 2048-d vector (the final layer's input), L2-normalised, so the dot
product of two embeddings is their cosine similarity. It comes from the same forward pass as the scores.
`encoding=json` (default) gives a list of floats; `encoding=base64` the float32 little-endian bytes in
base64 (exact, and about a quarter of the size).
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from gateway import schemas
from gateway.deps import Authenticated, InferenceDep
from gateway.service import Asked, model_block
from gateway.validation import CheckedImage
from gateway.vectors import floats

router = APIRouter()
Encoding = Annotated[Literal["json", "base64"], Query(description="json: a list of floats; base64: float32 LE")]


def vector(asked: Asked, encoding: str) -> dict[str, Any]:
    """The model block and the handler's base64 float32 vector, as the client asked for it."""
    raw = asked.answer["embedding"]
    values = floats(base64.b64decode(raw))
    embedding = values if encoding == "json" else raw
    return {"model": model_block(asked.answer), "embedding": embedding, "dimensions": len(values)}


@schemas.single_route(
    router,
    "/v1/embed",
    schemas.Embedding,
    "The image's embedding (L2-normalised, 2048-d)",
    "Input as for /v1/predict. The dot product of two embeddings is their cosine similarity.",
)
async def embed(_: Authenticated, service: InferenceDep, encoding: Encoding = "json") -> dict[str, Any]:
    asked = await service.embed(await service.one_image())
    service.classified()
    return {
        "request_id": service.request_id,
        "encoding": encoding,
        **vector(asked, encoding),
        "timing_ms": service.timing_ms(asked.upstream_s),
    }


@schemas.batch_route(router, "/v1/embed/batch", schemas.BatchEmbedding, "Embeddings of several images")
async def embed_batch(caller: Authenticated, service: InferenceDep, encoding: Encoding = "json") -> dict[str, Any]:
    async def work(image: CheckedImage) -> dict[str, Any]:
        return vector(await service.embed(image), encoding)

    return {**await service.batch(caller, work), "encoding": encoding}
