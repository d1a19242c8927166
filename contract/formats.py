"""The image formats both sides accept. The gateway sniffs an upload's format with `sniffed_format`; the handler
lets Pillow identify it and accepts ACCEPTED_FORMATS; tools that read folders pick images by IMAGE_SUFFIXES;
both sides' refusals name ACCEPTED_LABELS."""

from __future__ import annotations

import re
from typing import TypedDict


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
