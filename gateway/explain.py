"""POST /v1/explain: where in the image the model saw its top classes (class activation maps).

Same input forms, validation and errors as /v1/predict. The handler computes the maps from the same
forward pass as the scores (handlers/maps.py); this module shapes them as JSON (the 7x7 grids and the crop
box they cover, in the original's pixels) or draws one of them over the image as a PNG (gateway/overlay.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response

from contract.wire import ClassMap, ItemAnswer
from gateway import schemas, uploads
from gateway.deps import Authenticated, InferenceDep, RendersDep, SettingsDep, UpstreamDep
from gateway.ranking import RankOptions, class_id_within, ranked, top_k_note, top_k_within
from gateway.service import model_block
from gateway.upstream import TorchServeClient

router = APIRouter()
MAX_SIDE = 1024  # the PNG's longer side at most
# What X-Explained-Label carries as it is: printable ASCII but `%`; the rest of a label is percent-encoded (UTF-8).
HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


@dataclass(frozen=True)
class ExplainQuery:
    """The options as the client sent them; `explain_options` checks them against the served model."""

    top_k: int | None
    class_id: int | None
    format: Literal["json", "png"]


async def explain_query(
    top_k: Annotated[int | None, Query(ge=1, description=top_k_note("explain"))] = None,
    class_id: Annotated[
        int | None,
        Query(ge=0, description="also explain this class (below the model's classes); the PNG shows it, not the top-1"),
    ] = None,
    format: Annotated[Literal["json", "png"], Query(description="json: the grids; png: the overlay")] = "json",
) -> ExplainQuery:
    return ExplainQuery(top_k, class_id, format)


@dataclass(frozen=True)
class ExplainOptions:
    top_k: int
    class_id: int | None
    format: Literal["json", "png"]
    model_classes: int


async def explain_options(query: ExplainQuery, upstream: TorchServeClient) -> ExplainOptions:
    """The options, `top_k` and `class_id` checked against the served model's N classes (after the image is
    read, as gateway/deps.py's rank_options)."""
    classes = (await upstream.model_info())["labels"]
    top_k, class_id = top_k_within(query.top_k, classes), class_id_within(query.class_id, classes)
    return ExplainOptions(top_k, class_id, query.format, classes)


def explained(answer: ItemAnswer, class_ids: list[int]) -> list[ClassMap]:
    by_class = {e["class_id"]: e for e in answer["explanations"]}
    return [by_class[c] for c in dict.fromkeys(class_ids)]


@schemas.single_route(
    router,
    "/v1/explain",
    schemas.Explanation,
    "Where the model looked: class activation maps of the top classes",
    "Input as for /v1/predict. `format=json`: per class a 7x7 grid (non-negative, unnormalised) that covers "
    "`crop`, the model's input crop in the original's pixels (EXIF orientation applied). `format=png`: the image, "
    f"at most {MAX_SIDE} px, with the map of `class_id` (default: the top class) over it.",
    responses={200: {"content": {"image/png": {}}}, **schemas.ERRORS},
)
async def explain(
    request: Request,
    _: Authenticated,
    query: Annotated[ExplainQuery, Depends(explain_query)],
    renders: RendersDep,
    settings: SettingsDep,
    upstream: UpstreamDep,
    service: InferenceDep,
) -> schemas.Explanation | Response:
    image = await uploads.single_image(request, settings)
    options = await explain_options(query, upstream)
    asked = await service.explain(image, options.top_k, options.class_id)
    answer = asked.answer
    predictions, decision = ranked(answer, RankOptions(options.top_k, None, None, None, options.model_classes))
    geometry = answer["geometry"]
    if options.format == "png":
        [chosen] = explained(answer, [options.class_id if options.class_id is not None else predictions[0]["class_id"]])
        from gateway.overlay import render  # NumPy, only for this form

        png = await renders.run(render, image.data, chosen["cam"], geometry, MAX_SIDE)
        label = quote(chosen["label"], safe=HEADER_SAFE)  # a header is Latin-1: a label may be any Unicode
        headers = {"X-Explained-Class-Id": str(chosen["class_id"]), "X-Explained-Label": label}
        return Response(png, media_type="image/png", headers=headers)
    left, top, right, bottom = geometry["crop"]
    extra = [options.class_id] if options.class_id is not None else []
    return schemas.Explanation(
        request_id=service.request_id,
        model=model_block(answer),
        predictions=predictions,
        decision=decision,
        explanations=explained(answer, [p["class_id"] for p in predictions] + extra),
        image=schemas.Size(width=geometry["width"], height=geometry["height"]),
        crop=schemas.Box(left=left, top=top, right=right, bottom=bottom),
        timing_ms=service.timing_ms(asked.upstream_s),
    )
