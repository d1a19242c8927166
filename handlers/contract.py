"""What the gateway and the handler agree on: the model's name, the image formats, the shapes of the answers.

Standard library only, like handlers/bounds.py: the gateway image carries this file, bounds.py and
handlers/__init__.py alone from handlers/ (Dockerfile.gateway copies them; tests/test_containers.py checks
it), and the model archive carries all of handlers/ (modelserver/archive.py). The handler builds its JSON
answers as these TypedDicts and the gateway reads TorchServe's answers as them, so a field renamed on one
side is a type error on the other.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

MODEL_NAME = "resnet50"  # the archive's name, TorchServe's /predictions/<name>, v2's /v2/models/<name>


class ImageFormat(TypedDict):
    """One accepted format: its name as Pillow reports it, its magic bytes (at an offset) and file suffixes."""

    name: str
    label: str  # as people write it, for messages
    magics: tuple[tuple[int, bytes], ...]
    suffixes: tuple[str, ...]


IMAGE_FORMATS: tuple[ImageFormat, ...] = (
    {"name": "JPEG", "label": "JPEG", "magics": ((0, b"\xff\xd8\xff"),), "suffixes": (".jpg", ".jpeg")},
    {"name": "PNG", "label": "PNG", "magics": ((0, b"\x89PNG\r\n\x1a\n"),), "suffixes": (".png",)},
    # RIFF....WEBP: both parts must match (sniffers check the RIFF prefix too)
    {"name": "WEBP", "label": "WebP", "magics": ((8, b"WEBP"),), "suffixes": (".webp",)},
    {"name": "GIF", "label": "GIF", "magics": ((0, b"GIF87a"), (0, b"GIF89a")), "suffixes": (".gif",)},
    {"name": "BMP", "label": "BMP", "magics": ((0, b"BM"),), "suffixes": (".bmp",)},
    {"name": "TIFF", "label": "TIFF", "magics": ((0, b"II*\x00"), (0, b"MM\x00*")), "suffixes": (".tif", ".tiff")},
)
ACCEPTED_FORMATS = frozenset(fmt["name"] for fmt in IMAGE_FORMATS)
IMAGE_SUFFIXES = frozenset(suffix for fmt in IMAGE_FORMATS for suffix in fmt["suffixes"])
ACCEPTED_LABELS = ", ".join(fmt["label"] for fmt in IMAGE_FORMATS[:-1]) + f" or {IMAGE_FORMATS[-1]['label']}"


class ModelBlock(TypedDict):
    """The served model, in every answer and in /v1/models."""

    name: str
    version: str
    weights: str
    untrained: bool
    engine: str


class Prediction(TypedDict):
    class_id: int
    label: str
    score: float


class Explanation(Prediction):
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
    model: ModelBlock
    predictions: NotRequired[list[Prediction]]
    embedding: NotRequired[str]  # base64 of the L2-normalised pooled vector, float32 little-endian
    explanations: NotRequired[list[Explanation]]
    geometry: NotRequired[Geometry]
    error: NotRequired[ItemError]


class ModelDescription(ModelBlock):
    """The handler's own description (TorchServe's custom describe, `customizedMetadata` in the management
    API's answer): the model block, its labels, what it gives besides scores and its bounds."""

    labels: int
    label_names: list[str]
    int8_gate: dict[str, object] | None  # onnx-int8: INT8 against fp32 as the build measured it; else null
    outputs: list[str]  # the extras the archive supports: "embedding", "cam"
    max_pixels: int
    default_top_k: int
    max_top_k: int
