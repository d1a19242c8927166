"""Response models and OpenAPI descriptions (with examples) of the public API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter
from pydantic import BaseModel, Field
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12

from contract.wire import MODEL_NAME
from gateway.problems import PROBLEM_JSON, problem_schema

UNTRAINED_NOTE = "true when the archive was built with random weights: predictions are then meaningless"


class ModelBlock(BaseModel):
    name: str | None
    version: str | None
    weights: str | None
    untrained: bool | None = Field(description=UNTRAINED_NOTE)


# The parts of an answer that gateway/ranking.py and the service build are TypedDicts: plain dicts to them,
# validated and documented by pydantic as members of the response models below (the same schema as models).
class Ranked(TypedDict):
    rank: Annotated[int, Field(ge=1)]
    class_id: Annotated[int, Field(ge=0, description="0 to N - 1 for the served model's N classes (/v1/models)")]
    label: str
    score: Annotated[float, Field(ge=0, le=1)]


class Decision(TypedDict):
    label: Annotated[str, Field(description='the top label, or "unknown" when the best score is below unknown_below')]
    class_id: int | None
    score: float | None


class Timing(TypedDict):
    total: float
    upstream: float


class Prediction(BaseModel):
    request_id: str
    model: ModelBlock
    predictions: list[Ranked] = Field(description="scores in descending order")
    decision: Decision
    timing_ms: Timing

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "request_id": "5b0d6c4e2f0a4c47",
                    "model": {
                        "name": MODEL_NAME,
                        "version": "1.0",
                        "weights": "ResNet50_Weights.IMAGENET1K_V2",
                        "untrained": False,
                    },
                    "predictions": [{"rank": 1, "class_id": 281, "label": "tabby", "score": 0.61}],
                    "decision": {"label": "tabby", "class_id": 281, "score": 0.61},
                    "timing_ms": {"total": 61.2, "upstream": 58.9},
                }
            ]
        }
    }


class BatchResult(BaseModel):
    filename: str | None
    predictions: list[Ranked] | None = None
    decision: Decision | None = None
    error: dict[str, Any] | None = Field(None, description="a problem object, as for a single request")


class BatchPrediction(BaseModel):
    request_id: str
    model: ModelBlock | None = Field(None, description="absent when no file could be classified")
    results: list[BatchResult] = Field(description="one per file, in input order")


class ModelInfo(BaseModel):
    name: str | None
    version: str | None
    weights: str | None
    untrained: bool | None = Field(description=UNTRAINED_NOTE)
    labels: int | None = Field(description="N: how many classes the model has (class ids 0 to N - 1)")
    label_names: list[str] | None = Field(None, description="the N labels, by class id")
    labels_source: str | None = Field(
        None,
        description="where the labels came from: `torchvision ImageNet-1K`, `file:NAME` (modelserver build --labels), "
        "`train-head:FOLDER`; null for archives built before custom labels",
    )
    engine: str | None
    int8_gate: dict[str, Any] | None = Field(
        None,
        description="for the onnx-int8 engine: INT8 against fp32 on images held apart from calibration, as "
        "measured by the build (top1_agreement, top5_overlap, max_prob_diff, thresholds); null for fp32",
    )
    outputs: list[str] | None = Field(
        None, description="what the model gives besides scores: embedding (/v1/embed), cam (/v1/explain)"
    )
    precision: str | None = Field(None, description="what the served engine computes in: fp32, bf16 or int8")
    precision_policy: str | None = Field(
        None, description="what the worker was allowed to serve: exact (fp32), near-fp32 (bf16 too), int8 (INT8 too)"
    )
    cpu_features: list[str] | None = Field(
        None, description="the instruction sets the serving CPU has that decide the engine (AVX2, VNNI, BF16, AMX)"
    )
    engine_choice: dict[str, Any] | None = Field(
        None,
        description="how the worker that answered chose its engine on its CPU: the engine asked for (or auto), the "
        "ones skipped and why, the ones refused by the gate against fp32 (with the measurement), and the served "
        "one's gate verdict; each worker decides alone",
    )
    workers_ready: int


class ClassMap(BaseModel):
    class_id: int = Field(ge=0, description="0 to N - 1 for the served model's N classes (/v1/models)")
    label: str
    score: float = Field(ge=0, le=1)
    cam: list[list[float]] = Field(description="7x7 class activation map (rows top to bottom), >= 0, unnormalised")


class Size(BaseModel):
    width: int
    height: int


class Box(BaseModel):
    left: float
    top: float
    right: float
    bottom: float


class Explanation(BaseModel):
    request_id: str
    model: ModelBlock
    predictions: list[Ranked] = Field(description="scores in descending order")
    decision: Decision
    explanations: list[ClassMap] = Field(description="one per prediction, in the same order (then class_id's)")
    image: Size = Field(description="the image as the model saw it: upright (EXIF orientation applied)")
    crop: Box = Field(description="the model's input crop, which the grids cover, in the image's pixels")
    timing_ms: Timing


class Embedding(BaseModel):
    request_id: str
    model: ModelBlock
    encoding: str = Field(description="json: embedding is a list of floats; base64: float32 little-endian bytes")
    embedding: list[float] | str = Field(description="L2-normalised: dot products are cosine similarities")
    dimensions: int
    timing_ms: Timing


class BatchEmbeddingResult(BaseModel):
    filename: str | None
    embedding: list[float] | str | None = None
    dimensions: int | None = None
    error: dict[str, Any] | None = Field(None, description="a problem object, as for a single request")


class BatchEmbedding(BaseModel):
    request_id: str
    model: ModelBlock | None = Field(None, description="absent when no file could be embedded")
    encoding: str
    results: list[BatchEmbeddingResult] = Field(description="one per file, in input order")


class Models(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    detail: str
    workers_ready: int


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": problem_schema()}}}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: _problem("Missing or invalid API key"),
    413: _problem("Upload or image dimensions too large"),
    415: _problem("Not a supported image format"),
    422: _problem("Invalid parameters, or an image that cannot be decoded"),
    429: _problem("Rate limit exceeded; see Retry-After"),
    502: _problem("The model server failed"),
    503: _problem("The model is not ready, or the server is at capacity; see Retry-After"),
    504: _problem("The model did not answer in time"),
}

_BINARY = {"type": "string", "format": "binary"}
SINGLE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": {"file": _BINARY}}
            },
            "image/*": {"schema": _BINARY},
        },
    }
}
BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {"files": {"type": "array", "items": _BINARY}},
                }
            }
        },
    }
}


Route = TypeVar("Route", bound=Callable[..., Any])


def single_route(
    on: APIRouter,
    path: str,
    response_model: type[BaseModel],
    summary: str,
    description: str,
    responses: dict[int | str, dict[str, Any]] | None = None,
) -> Callable[[Route], Route]:
    """The decorator of a one-image route: multipart `file` or the raw body."""
    return on.post(
        path,
        response_model=response_model,
        responses=responses or ERRORS,
        openapi_extra=SINGLE_BODY,
        summary=summary,
        description=description,
    )


def batch_route(on: APIRouter, path: str, response_model: type[BaseModel], summary: str) -> Callable[[Route], Route]:
    """The decorator of a batch route: multipart `files`, results in input order."""
    return on.post(
        path,
        response_model=response_model,
        response_model_exclude_unset=True,
        responses=ERRORS,
        openapi_extra=BATCH_BODY,
        summary=summary,
        description="Repeated multipart field `files`. Results come in input order; a bad file never fails the others.",
    )
