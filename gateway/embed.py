"""POST /v1/embed and /v1/embed/batch: an image's embedding, for "find similar images".

The embedding is ResNet50's pooled 2048-d vector (the final layer's input), L2-normalised, so the dot
product of two embeddings is their cosine similarity. It comes from the same forward pass as the scores.
`encoding=json` (default) gives a list of floats; `encoding=base64` the float32 little-endian bytes in
base64 (exact, and about a quarter of the size).
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from contract.wire import ItemAnswer
from gateway import schemas, uploads
from gateway.deps import Authenticated, InferenceDep, SettingsDep
from gateway.service import model_block
from gateway.validation import CheckedImage
from gateway.vectors import floats

router = APIRouter()
Encoding = Annotated[Literal["json", "base64"], Query(description="json: a list of floats; base64: float32 LE")]


def vector(answer: ItemAnswer, encoding: str) -> tuple[list[float] | str, int]:
    """The handler's base64 float32 vector as the client asked for it, and its dimensions."""
    raw = answer["embedding"]
    values = floats(base64.b64decode(raw))
    return (values if encoding == "json" else raw), len(values)


@schemas.single_route(
    router,
    "/v1/embed",
    schemas.Embedding,
    "The image's embedding (L2-normalised, 2048-d)",
    "Input as for /v1/predict. The dot product of two embeddings is their cosine similarity.",
)
async def embed(
    request: Request, _: Authenticated, settings: SettingsDep, service: InferenceDep, encoding: Encoding = "json"
) -> schemas.Embedding:
    asked = await service.embed(await uploads.single_image(request, settings))
    embedding, dimensions = vector(asked.answer, encoding)
    return schemas.Embedding(
        request_id=service.request_id,
        model=model_block(asked.answer),
        encoding=encoding,
        embedding=embedding,
        dimensions=dimensions,
        timing_ms=service.timing_ms(asked.upstream_s),
    )


@schemas.batch_route(router, "/v1/embed/batch", schemas.BatchEmbedding, "Embeddings of several images")
async def embed_batch(
    request: Request, caller: Authenticated, settings: SettingsDep, service: InferenceDep, encoding: Encoding = "json"
) -> schemas.BatchEmbedding:
    async def work(
        filename: str | None, image: CheckedImage
    ) -> tuple[schemas.ModelBlock, schemas.BatchEmbeddingResult]:
        asked = await service.embed(image)
        embedding, dimensions = vector(asked.answer, encoding)
        return model_block(asked.answer), schemas.BatchEmbeddingResult(
            filename=filename, embedding=embedding, dimensions=dimensions
        )

    files = await uploads.batch_uploads(request, settings)
    done = await service.batch(files, caller, work, schemas.BatchEmbeddingResult)
    return schemas.BatchEmbedding(
        request_id=service.request_id, model=done.model, encoding=encoding, results=done.results
    )
