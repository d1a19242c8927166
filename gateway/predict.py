"""Classification on the /v1 API: /v1/predict (one image), /v1/predict/batch (several) and /v1/models
(what is served).

A request's path: this module (auth, ranking options) → gateway/service.py (reading the image through
gateway/uploads.py and gateway/validation.py, then asking gateway/upstream.py, the TorchServe client) →
handlers/image_handler.py inside the TorchServe worker; the scores come back and are ranked by
gateway/ranking.py.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from gateway import schemas
from gateway.deps import Authenticated, InferenceDep, UpstreamDep
from gateway.ranking import RankOptions, rank_options, ranked
from gateway.service import model_block
from gateway.validation import CheckedImage

router = APIRouter()
Ranking = Annotated[RankOptions, Depends(rank_options)]


@schemas.single_route(
    router,
    "/v1/predict",
    schemas.Prediction,
    "Classify one image",
    "Send the image as multipart field `file`, or as the raw body with an `image/*` type.",
)
async def predict(_: Authenticated, options: Ranking, service: InferenceDep) -> dict[str, Any]:
    asked = await service.classify(await service.one_image(), options.upstream_top_k)
    service.classified()
    predictions, decision = ranked(asked.answer, options)
    return {
        "request_id": service.request_id,
        "model": model_block(asked.answer),
        "predictions": predictions,
        "decision": decision,
        "timing_ms": service.timing_ms(asked.upstream_s),
    }


@schemas.batch_route(router, "/v1/predict/batch", schemas.BatchPrediction, "Classify several images")
async def predict_batch(caller: Authenticated, options: Ranking, service: InferenceDep) -> dict[str, Any]:
    async def work(image: CheckedImage) -> dict[str, Any]:
        asked = await service.classify(image, options.upstream_top_k)
        predictions, decision = ranked(asked.answer, options)
        return {"model": model_block(asked.answer), "predictions": predictions, "decision": decision}

    return await service.batch(caller, work)


@router.get("/v1/models", response_model=schemas.Models, responses=schemas.ERRORS, summary="What is served")
async def models(_: Authenticated, upstream: UpstreamDep) -> dict[str, Any]:
    info = await upstream.model_info()
    readiness = await upstream.readiness()
    fields = schemas.ModelInfo.model_fields.keys() - {"workers_ready"}
    return {"models": [{**{k: info.get(k) for k in fields}, "workers_ready": readiness.workers_ready}]}
