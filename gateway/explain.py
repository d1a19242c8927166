"""POST /v1/explain: where in the image the model saw its top classes (class activation maps).

Same input forms, validation and errors as /v1/predict. The handler computes the maps from the same
forward pass as the scores (handlers/maps.py); this module shapes them as JSON (the 7x7 grids and the crop
box they cover, in the original's pixels) or draws one of them over the image as a PNG (gateway/overlay.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from gateway import schemas
from gateway.answers import MAX_TOP_K, AnswerOptions, shape
from gateway.auth import authenticate
from gateway.routes import classify, model_block, single_image, single_route, timing_ms

router = APIRouter()
MAX_SIDE = 1024  # the PNG's longer side at most
Authenticated = Annotated[str, Depends(authenticate)]


@dataclass(frozen=True)
class ExplainOptions:
    top_k: int
    class_id: int | None
    format: Literal["json", "png"]

    def upstream_headers(self) -> dict[str, str]:
        headers = {"X-Output": "cam"}
        if self.class_id is not None:
            headers["X-Explain-Classes"] = str(self.class_id)
        return headers


async def explain_options(
    top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K, description="number of classes to explain")] = 5,
    class_id: Annotated[
        int | None, Query(ge=0, le=999, description="also explain this class; the PNG shows it instead of the top-1")
    ] = None,
    format: Annotated[Literal["json", "png"], Query(description="json: the grids; png: the overlay")] = "json",
) -> ExplainOptions:
    return ExplainOptions(top_k, class_id, format)


Options = Annotated[ExplainOptions, Depends(explain_options)]


def explained(result: dict[str, Any], class_ids: list[int]) -> list[dict[str, Any]]:
    by_class = {e["class_id"]: e for e in result["explanations"]}
    return [by_class[c] for c in dict.fromkeys(class_ids)]


@single_route(
    router,
    "/v1/explain",
    schemas.Explanation,
    "Where the model looked: class activation maps of the top classes",
    "Input as for /v1/predict. `format=json`: per class a 7x7 grid (non-negative, unnormalised) that covers "
    "`crop`, the model's input crop in the original's pixels (EXIF orientation applied). `format=png`: the image, "
    f"at most {MAX_SIDE} px, with the map of `class_id` (default: the top class) over it.",
    responses={200: {"content": {"image/png": {}}}, **schemas.ERRORS},
)
async def explain(request: Request, _: Authenticated, options: Options) -> Any:
    started = time.perf_counter()
    image = await single_image(request)
    result, upstream_s = await classify(request, image, options.top_k, options.upstream_headers())
    request.app.state.metrics.images.labels("classified").inc()
    predictions, decision = shape(result, AnswerOptions(options.top_k, None, None, None))
    geometry = result["geometry"]
    if options.format == "png":
        [chosen] = explained(result, [options.class_id if options.class_id is not None else predictions[0]["class_id"]])
        from gateway.overlay import render  # NumPy, only for this form

        png = await request.app.state.renders.run(render, image.data, chosen["cam"], geometry, MAX_SIDE)
        headers = {"X-Explained-Class-Id": str(chosen["class_id"]), "X-Explained-Label": chosen["label"]}
        return Response(png, media_type="image/png", headers=headers)
    left, top, right, bottom = geometry["crop"]
    extra = [options.class_id] if options.class_id is not None else []
    return {
        "request_id": request.state.request_id,
        "model": model_block(result),
        "predictions": predictions,
        "decision": decision,
        "explanations": explained(result, [p["class_id"] for p in predictions] + extra),
        "image": {"width": geometry["width"], "height": geometry["height"]},
        "crop": {"left": left, "top": top, "right": right, "bottom": bottom},
        "timing_ms": timing_ms(started, upstream_s),
    }
