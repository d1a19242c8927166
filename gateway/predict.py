"""Classification on the /v1 API: /v1/predict (one image), /v1/predict/batch (several) and /v1/models
(what is served).

A request's path: this module (the image read and checked by gateway/uploads.py and gateway/validation.py;
auth and, once the image is read, ranking options from gateway/deps.py) → gateway/service.py (asking
gateway/upstream.py, the TorchServe client) → handlers/image_handler.py inside the TorchServe worker; the
scores come back and are ranked by gateway/ranking.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway import schemas, uploads
from gateway.deps import Authenticated, InferenceDep, RankQueryDep, SettingsDep, UpstreamDep, rank_options
from gateway.ranking import ranked
from gateway.service import model_block
from gateway.validation import CheckedImage

router = APIRouter()


@schemas.single_route(
    router,
    "/v1/predict",
    schemas.Prediction,
    "Classify one image",
    "Send the image as multipart field `file`, or as the raw body with an `image/*` type.",
)
async def predict(
    request: Request,
    _: Authenticated,
    query: RankQueryDep,
    settings: SettingsDep,
    upstream: UpstreamDep,
    service: InferenceDep,
) -> schemas.Prediction:
    image = await uploads.single_image(request, settings)
    options = await rank_options(query, upstream)
    asked = await service.classify(image, options.upstream_top_k)
    predictions, decision = ranked(asked.answer, options)
    return schemas.Prediction(
        request_id=service.request_id,
        model=model_block(asked.answer),
        predictions=predictions,
        decision=decision,
        timing_ms=service.timing_ms(asked.upstream_s),
    )


@schemas.batch_route(router, "/v1/predict/batch", schemas.BatchPrediction, "Classify several images")
async def predict_batch(
    request: Request,
    caller: Authenticated,
    query: RankQueryDep,
    settings: SettingsDep,
    upstream: UpstreamDep,
    service: InferenceDep,
) -> schemas.BatchPrediction:
    files = await uploads.batch_uploads(request, settings)
    options = await rank_options(query, upstream)

    async def work(filename: str | None, image: CheckedImage) -> tuple[schemas.ModelBlock, schemas.BatchResult]:
        asked = await service.classify(image, options.upstream_top_k)
        predictions, decision = ranked(asked.answer, options)
        return model_block(asked.answer), schemas.BatchResult(
            filename=filename, predictions=predictions, decision=decision
        )

    done = await service.batch(files, caller, work, schemas.BatchResult)
    return schemas.BatchPrediction(request_id=service.request_id, model=done.model, results=done.results)


@router.get("/v1/models", response_model=schemas.Models, responses=schemas.ERRORS, summary="What is served")
async def models(_: Authenticated, upstream: UpstreamDep) -> schemas.Models:
    info = await upstream.model_info()
    readiness = await upstream.readiness()
    fields = schemas.ModelInfo.model_fields.keys() - {"workers_ready"}
    served = {k: info.get(k) for k in fields}
    return schemas.Models(models=[schemas.ModelInfo(**served, workers_ready=readiness.workers_ready)])
