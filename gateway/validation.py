"""Input checks before anything is forwarded: size cap while streaming, format sniffing, header-only decode.

The format is decided from the bytes alone; the client's content type and filename are never trusted.
Dimensions come from the image header, so a decompression bomb is refused without decoding a pixel; so are
the bounds the handler applies too (contract/bounds.py: aspect ratio, progressive JPEG scans, reads).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from contract.bounds import BoundedReader, RefusalCode, TooManyReads, refusal
from contract.formats import ACCEPTED_LABELS, sniffed_format
from gateway.problems import Problem
from gateway.settings import Settings

# The problem type of each refusal of contract/bounds.py: too costly to resize is too large, the others malformed.
REFUSAL_TYPES: dict[RefusalCode, str] = {
    "extreme_aspect_ratio": "image-too-large",
    "too_many_scans": "invalid-image",
    "too_fragmented": "invalid-image",
}


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    format: str
    width: int
    height: int


def sniff(data: bytes) -> str:
    if not data:
        raise Problem("invalid-image", "the image is empty (0 bytes)", code="empty")
    if data[:4] == b"RIFF" and data[8:12] != b"WEBP":
        raise Problem("unsupported-media-type", f"RIFF data that is not WebP; send {ACCEPTED_LABELS}")
    if fmt := sniffed_format(data):
        return fmt
    raise Problem("unsupported-media-type", f"the bytes are not a supported image; send {ACCEPTED_LABELS}")


def check_image(data: bytes, settings: Settings) -> CheckedImage:
    """Sniff the format and read the dimensions from the header; raise a Problem for anything off."""
    fmt = sniff(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(BoundedReader(data))
            width, height = img.size
            actual = img.format
    except TooManyReads as exc:
        raise Problem(REFUSAL_TYPES[exc.refusal.code], exc.refusal.detail, code=exc.refusal.code) from None
    except Image.DecompressionBombError:
        raise Problem("image-too-large", f"the image header claims more than {settings.max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise Problem("invalid-image", f"the {fmt} header cannot be read", code="undecodable") from None
    if actual != fmt:
        raise Problem("invalid-image", f"the bytes start like {fmt} but decode as {actual}", code="undecodable")
    if width < 1 or height < 1:
        raise Problem("invalid-image", f"the image claims an empty size {width}x{height}", code="undecodable")
    if max(width, height) > settings.max_side:
        raise Problem("image-too-large", f"{width}x{height} has a side above {settings.max_side} pixels")
    if width * height > settings.max_pixels:
        raise Problem("image-too-large", f"{width}x{height} is above the limit of {settings.max_pixels} pixels")
    if refused := refusal(data, fmt, width, height):
        raise Problem(REFUSAL_TYPES[refused.code], refused.detail, code=refused.code)
    return CheckedImage(data=data, format=fmt, width=width, height=height)
