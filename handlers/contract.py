"""What the gateway and the handler agree on: the model's name, the image formats, the shapes of the answers.

Standard library only, like handlers/bounds.py: the gateway image carries this file, bounds.py and
handlers/__init__.py alone from handlers/ (Dockerfile.gateway copies them; tests/unit/test_containers.py checks
it), and the model archive carries all of handlers/ (modelserver/archive.py). The handler builds its JSON
answers as these TypedDicts and the gateway reads TorchServe's answers as them, so a field renamed on one
side is a type error on the other; its custom describe is a ModelDescription. The gateway sniffs an upload's
format with `sniffed_format`; the handler lets Pillow identify it and accepts ACCEPTED_FORMATS; tools that
read folders pick images by IMAGE_SUFFIXES; both sides' refusals name ACCEPTED_LABELS.
"""

from __future__ import annotations

import re
from typing import NotRequired, TypedDict

MODEL_NAME = "resnet50"  # the archive's name, TorchServe's /predictions/<name>, v2's /v2/models/<name>
CLASSES = 1000  # ImageNet's classes: class ids 0 to CLASSES - 1
EMBEDDING_SIZE = 2048  # the pooled vector of /v1/embed and v2's `embedding` output

# What the gateway asks of the handler, per image, in request headers (TorchServe passes them through)
TOP_K_HEADER = "X-Top-K"  # how many classes to return
OUTPUT_HEADER = "X-Output"  # comma-separated extras: EMBEDDING and/or CAM
EXPLAIN_CLASSES_HEADER = "X-Explain-Classes"  # with CAM: class ids to map besides the top-k
REQUEST_ID_HEADER = "X-Request-ID"  # echoed in the answer and the worker's log
EMBEDDING, CAM = "embedding", "cam"


class ImageFormat(TypedDict):
    """One accepted format: its name as Pillow reports it, its magic bytes and its usual file suffixes."""

    name: str
    label: str  # as people write it, for messages
    magic: re.Pattern[bytes]  # matched at the start of the bytes
    suffixes: tuple[str, ...]  # how tools that read folders (calibration, evaluate, the client) pick images out


IMAGE_FORMATS: tuple[ImageFormat, ...] = (
    {"name": "JPEG", "label": "JPEG", "magic": re.compile(rb"\xff\xd8\xff"), "suffixes": (".jpg", ".jpeg")},
    {"name": "PNG", "label": "PNG", "magic": re.compile(rb"\x89PNG\r\n\x1a\n"), "suffixes": (".png",)},
    {"name": "WEBP", "label": "WebP", "magic": re.compile(rb"RIFF.{4}WEBP", re.DOTALL), "suffixes": (".webp",)},
    {"name": "GIF", "label": "GIF", "magic": re.compile(rb"GIF8[79]a"), "suffixes": (".gif",)},
    {"name": "BMP", "label": "BMP", "magic": re.compile(rb"BM"), "suffixes": (".bmp",)},
    {"name": "TIFF", "label": "TIFF", "magic": re.compile(rb"II\*\x00|MM\x00\*"), "suffixes": (".tif", ".tiff")},
)
ACCEPTED_FORMATS = frozenset(fmt["name"] for fmt in IMAGE_FORMATS)
IMAGE_SUFFIXES = frozenset(suffix for fmt in IMAGE_FORMATS for suffix in fmt["suffixes"])
ACCEPTED_LABELS = ", ".join(fmt["label"] for fmt in IMAGE_FORMATS[:-1]) + f" or {IMAGE_FORMATS[-1]['label']}"


def sniffed_format(data: bytes) -> str | None:
    """The name of the accepted format whose magic bytes `data` starts with, else None."""
    return next((fmt["name"] for fmt in IMAGE_FORMATS if fmt["magic"].match(data)), None)


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
    """The handler's custom describe, TorchServe's `customizedMetadata` of GET /models/<name>?customized=true
    (the gateway's /v1/models): the model block, the labels, what the engine can add to an answer and the
    archive's limits."""

    labels: int  # how many classes
    label_names: list[str]  # by class id
    int8_gate: dict[str, object] | None  # the INT8 archive's accuracy gate against fp32 (modelserver/quantize.py)
    outputs: list[str]  # the X-Output extras this archive serves: embedding, cam
    max_pixels: int
    default_top_k: int
    max_top_k: int
