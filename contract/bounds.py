"""Bounds on the work one image may cost, shared by the gateway and the handler.

The gateway refuses from the header, before forwarding; the handler checks again before decoding, because
TorchServe can be called directly; both ask `refusal` and read through BoundedReader.

- Aspect ratio. The shorter side is resized to 232 px, so the resize of a W x 1 image is W*232 x 232: a
  143-byte 20000x1 PNG cost 4.6 GB. Sides at most MAX_ASPECT_RATIO:1 cap the resize at 232 x 46,400 px.
- Progressive JPEG scans. libjpeg visits every block of the image for each scan, and a refinement scan with
  nothing to add takes 23 bytes: 3,000 of them on a 1000x1000 image (40 KB) kept a worker busy 8.6 s.
  Real encoders write a handful (libjpeg's default progression: 6 for grey, 10 for colour), so scans times
  pixels is capped at 16 scans of a 40 MP image, and scans at 100 whatever the size.
- Reads. Pillow parses headers in Python, one file read per chunk, segment or block, and per byte of
  padding between JPEG markers: 8 MiB of empty PNG chunks, GIF extensions, JPEG 0xFF padding or BMP RLE
  no-ops took 2-7 s each. Real images take tens to hundreds of reads, so a decode may make MAX_READS.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Literal

RESIZE_SIZE = 232  # the shorter side after torchvision's Resize for ResNet50_Weights.IMAGENET1K_V2
MAX_ASPECT_RATIO = 200  # longer side / shorter side
MAX_JPEG_SCANS = 100  # start-of-scan markers before the end of the image
MAX_PIXELS = 40_000_000  # the default decoded-pixel limit of the gateway (GATEWAY_MAX_PIXELS) and the archive
MAX_SCAN_PIXELS = 16 * MAX_PIXELS  # scans x width x height
MAX_READS = 20_000  # file reads by Pillow to open and decode one image

# 0xFF then a marker code: not a stuffed 0x00, a fill 0xFF or a restart marker (0xD0-0xD7), the only
# other bytes that can follow 0xFF inside a scan's entropy-coded data
_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_STANDALONE = frozenset({0x01, 0xD8})  # markers without a length field (TEM, SOI)
_SOS, _EOI = 0xDA, 0xD9


RefusalCode = Literal["extreme_aspect_ratio", "too_many_scans", "too_fragmented"]


@dataclass(frozen=True)
class Refusal:
    """Why an image is refused before decoding: a stable per-image `code` and a human `detail`."""

    code: RefusalCode
    detail: str


class TooManyReads(Exception):
    """Raised by BoundedReader once its reads are spent; `refusal` says why."""

    refusal = Refusal(
        "too_fragmented",
        f"the image takes more than {MAX_READS} reads to decode (chunks, segments, blocks or padding); re-encode it",
    )


class BoundedReader(io.BytesIO):
    """The bytes of one image, for Pillow, that raise TooManyReads on every read after MAX_READS reads."""

    def __init__(self, data: bytes, budget: int = MAX_READS) -> None:
        super().__init__(data)
        self.left = budget

    def read(self, size: int | None = -1, /) -> bytes:
        self.left -= 1
        if self.left < 0:
            raise TooManyReads
        return super().read(size)


def resized_size(width: int, height: int, short_side: int = RESIZE_SIZE) -> tuple[int, int]:
    """The (width, height) torchvision's Resize(int) gives: shorter side to `short_side`, aspect kept."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def shape_refusal(width: int, height: int) -> Refusal | None:
    """A refusal for an image (of at least 1x1) too thin to resize at a bounded cost, else None."""
    if max(width, height) <= MAX_ASPECT_RATIO * min(width, height):
        return None
    resized = "x".join(map(str, resized_size(width, height)))
    detail = f"{width}x{height} is more elongated than {MAX_ASPECT_RATIO}:1 (its resize would be {resized})"
    return Refusal("extreme_aspect_ratio", detail)


def jpeg_scans(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """The number of scans of a JPEG up to its end-of-image marker, counted up to `stop_after` + 1.

    Walks the marker segments as libjpeg reads them; a scan's entropy-coded data is skipped by a regex
    search for the next marker (C speed), so this costs milliseconds for 8 MiB. Raises TooManyReads after
    MAX_READS markers (between scans Pillow's reads do not count them: libjpeg parses those).
    """
    scans, pos = 0, 2  # after SOI
    for _ in range(MAX_READS):
        found = _MARKER.search(data, pos)
        if found is None or scans > stop_after:
            return scans
        pos, marker = found.start(), data[found.start() + 1]
        if marker == _EOI:
            return scans
        if marker in _STANDALONE:
            pos += 2
            continue
        scans += marker == _SOS
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    raise TooManyReads


def jpeg_refusal(data: bytes, width: int, height: int) -> Refusal | None:
    """A refusal for a JPEG of this size with more scans than the bounds allow (each costs a pass over every
    block), else None."""
    allowed = min(MAX_JPEG_SCANS, max(1, MAX_SCAN_PIXELS // (width * height)))
    try:
        if jpeg_scans(data, allowed) <= allowed:
            return None
    except TooManyReads as exc:
        return exc.refusal
    detail = f"the {width}x{height} JPEG has more than {allowed} scans; re-encode it (baseline, or fewer scans)"
    return Refusal("too_many_scans", detail)


def refusal(data: bytes, fmt: str, width: int, height: int) -> Refusal | None:
    """Why this image (of format `fmt`, at least 1x1, within the pixel limit) is refused before decoding, or None:
    `extreme_aspect_ratio`, then for a JPEG `too_many_scans` or `too_fragmented`."""
    return shape_refusal(width, height) or (jpeg_refusal(data, width, height) if fmt == "JPEG" else None)
