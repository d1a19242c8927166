"""What the gateway and the handler say to each other: the model's name and sizes, the request headers, the
handler's answers. The class count is not here: it is the archive's (its labels; contract/labels.py), and the
gateway learns it from the handler's description.

The handler builds its JSON answers as these TypedDicts and the gateway reads TorchServe's answers as them, so
a field renamed on one side is a type error on the other; its custom describe is a ModelDescription.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

MODEL_NAME = "resnet50"  # the archive's name, TorchServe's /predictions/<name>, v2's /v2/models/<name>
EMBEDDING_SIZE = 2048  # the pooled vector of /v1/embed and v2's `embedding` output

# What the gateway asks of the handler, per image, in request headers (TorchServe passes them through)
TOP_K_HEADER = "X-Top-K"  # how many classes to return
OUTPUT_HEADER = "X-Output"  # comma-separated extras: EMBEDDING and/or CAM
EXPLAIN_CLASSES_HEADER = "X-Explain-Classes"  # with CAM: class ids to map besides the top-k
REQUEST_ID_HEADER = "X-Request-ID"  # echoed in the answer and the worker's log
EMBEDDING, CAM = "embedding", "cam"


class ServedModel(TypedDict):
    """The served model as the handler names it in every answer (the gateway's answers carry it as their model
    block, gateway/schemas.py's ModelBlock, without the engine) and in its description."""

    name: str
    version: str
    weights: str
    untrained: bool
    engine: str


class ClassScore(TypedDict):
    """One class's softmax probability for the image."""

    class_id: int
    label: str
    score: float


class ClassMap(ClassScore):
    """A class's score and its class activation map (gateway/schemas.py's ClassMap in /v1/explain's answer)."""

    cam: list[list[float]]  # 7x7 class activation map, over the model's input crop


class Geometry(TypedDict):
    width: int  # the upright image's size, in its pixels
    height: int
    crop: list[float]  # the model's input crop in those pixels: left, top, right, bottom


class ItemError(TypedDict):
    code: str
    detail: str


class ItemAnswer(TypedDict):
    """The handler's JSON answer for one image: predictions (with the extras asked for) or an error."""

    request_id: str | None
    model: ServedModel
    predictions: NotRequired[list[ClassScore]]
    embedding: NotRequired[str]  # base64 of the L2-normalised pooled vector, float32 little-endian
    explanations: NotRequired[list[ClassMap]]
    geometry: NotRequired[Geometry]
    error: NotRequired[ItemError]


class ModelDescription(ServedModel):
    """The handler's custom describe, TorchServe's `customizedMetadata` of GET /models/<name>?customized=true
    (the gateway's /v1/models): the model block, the labels, what the engine can add to an answer and the
    archive's limits."""

    labels: int  # how many classes: N, the archive's (contract/labels.py)
    label_names: list[str]  # by class id
    labels_source: NotRequired[str | None]  # where they came from (metadata.json); None for older archives
    int8_gate: dict[str, object] | None  # the INT8 archive's accuracy gate against fp32 (modelserver/quantize.py)
    # How the worker that answered chose its engine on its CPU (handlers/engine_start.py; absent from older
    # archives' handlers): what the engine computes in (fp32, bf16, int8), the precision policy it was allowed
    # (exact, near-fp32, int8), the instruction sets the choice saw, and the choice itself: the engine asked
    # for, the ones skipped and refused (with their gate against fp32), the served one's verdict.
    precision: NotRequired[str]
    precision_policy: NotRequired[str]
    cpu_features: NotRequired[list[str]]
    engine_choice: NotRequired[dict[str, object]]
    outputs: list[str]  # the X-Output extras this archive serves: embedding, cam
    max_pixels: int
    default_top_k: int
    max_top_k: int
