"""Image decoding and ImageNet preprocessing.

`preprocess(decode(data))` yields exactly the array that torchvision's reference pipeline produces:

    ResNet50_Weights.IMAGENET1K_V2.transforms()(ImageOps.exif_transpose(img).convert("RGB"))

i.e. EXIF orientation applied, any Pillow mode converted to RGB, the shorter side resized to 232 with
Pillow's antialiased bilinear filter, a centred 224x224 crop, scaling to [0, 1] and per-channel
normalisation, all in float32 and in the same order of operations, so the result is bit-identical.
It uses only Pillow and NumPy, so the ONNX Runtime path never touches torch.

That holds for every image by default, large JPEGs included. One opt-in exception, for speed: with
`jpeg_draft` set to 2, 4 or 8, a JPEG is decoded with libjpeg's DCT scaling (`Image.draft`) at the strongest
power-of-two reduction, at most 1/jpeg_draft, that keeps the shorter side at or above 232 px; it is then
resized exactly as above. That skips most of the decoding work for large photos, but the pixels, and so the
probabilities, are no longer the reference's (docs/model.md, "The handler", has the measured trade-off).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from contract.bounds import RESIZE_SIZE, BoundedReader, TooManyReads, refusal, resized_size
from contract.formats import ACCEPTED_FORMATS, ACCEPTED_LABELS

CROP_SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)

JPEG_DRAFT_CHOICES = (1, 2, 4, 8)  # 1: full decode (the reference); n: reduced-scale decode down to 1/n


class ImageError(Exception):
    """A per-item failure with a stable machine-readable code and a short human detail."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def decode(data: bytes, max_pixels: int, jpeg_draft: int = 1) -> Image.Image:
    """Decode `data` into an upright RGB image, refusing anything that is not a bounded, whole image.

    Raises ImageError with code `empty`, `unsupported_format`, `too_large`, `extreme_aspect_ratio`,
    `too_many_scans`, `too_fragmented` or `undecodable`. The pixel limit and the bounds of contract/bounds.py
    are checked from the header and the marker stream, before any pixel is decoded; Pillow's reads are
    bounded throughout. `jpeg_draft` > 1 allows reduced-scale decoding of JPEGs, down to 1/jpeg_draft (see
    the module docstring).
    """
    if not data:
        raise ImageError("empty", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces Pillow's global bomb guard.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(BoundedReader(data))
    except TooManyReads as exc:
        raise ImageError(exc.refusal.code, exc.refusal.detail) from None
    except Image.DecompressionBombError:
        raise ImageError("too_large", f"the image header claims more than {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise ImageError("undecodable", "the bytes are not a recognised image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError("undecodable", f"the image header is invalid ({type(exc).__name__})") from None
    if img.format not in ACCEPTED_FORMATS:
        raise ImageError("unsupported_format", f"format {img.format} is not accepted; send {ACCEPTED_LABELS}")
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError("undecodable", f"the image claims an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError("too_large", f"{width}x{height} is {width * height} pixels, above the limit of {max_pixels}")
    if refused := refusal(data, img.format, width, height):
        raise ImageError(refused.code, refused.detail)
    if jpeg_draft > 1 and img.format == "JPEG" and min(width, height) >= 2 * RESIZE_SIZE:
        # Pillow picks the strongest reduction 1/n (n = 1, 2, 4, 8) that keeps the image at least the requested
        # size: at least the resize target, and no smaller than 1/jpeg_draft allows.
        scale = RESIZE_SIZE / min(width, height)
        draft_width = max(math.ceil(width * scale), width // jpeg_draft)
        draft_height = max(math.ceil(height * scale), height // jpeg_draft)
        img.draft("RGB", (draft_width, draft_height))
    try:
        img.load()
        # In place, and no RGB-to-RGB copy: at most two full-size images exist at once (docs/model.md, "The handler").
        ImageOps.exif_transpose(img, in_place=True)
        return img if img.mode == "RGB" else img.convert("RGB")
    except TooManyReads as exc:
        raise ImageError(exc.refusal.code, exc.refusal.detail) from None
    except Image.DecompressionBombError:
        raise ImageError("too_large", "the image expands beyond the pixel limit") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError("undecodable", f"the image data is truncated or corrupt ({exc})") from None


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's CenterCrop(224) in an image of this (resized) size."""
    top = int(round((height - CROP_SIZE) / 2.0))
    left = int(round((width - CROP_SIZE) / 2.0))
    return left, top, left + CROP_SIZE, top + CROP_SIZE


def preprocess(img: Image.Image) -> npt.NDArray[np.float32]:
    """An RGB image → a normalised float32 array of shape (3, 224, 224)."""
    resized = img.resize(resized_size(*img.size), Image.Resampling.BILINEAR)
    cropped = resized.crop(crop_box(*resized.size))
    chw = np.asarray(cropped, dtype=np.uint8).transpose(2, 0, 1)
    scaled = chw.astype(np.float32) / np.float32(255.0)
    return (scaled - MEAN) / STD
