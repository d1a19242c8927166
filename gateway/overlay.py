"""The explanation as a picture: the upright image, at most max_side px, with a class activation map over it.

The handler's 7x7 grid covers the model's input crop, whose box in the original's pixels comes with it.
The grid is upsampled bilinearly (cell centres at the centres of the crop's 7x7 cells, clamped at its
edges) onto that box in the output's pixels; outside the box the model saw nothing and the image is left
as it is. Colours: blue (none) through green and yellow to red (the map's maximum). Only /v1/explain's PNG
form imports this module (and NumPy); the rest of the gateway does without.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import ExifTags, Image, ImageOps

from contract.wire import Geometry

PNG_COMPRESS_LEVEL = 1  # zlib's fastest: a 1024 px overlay in a few ms instead of tens
REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA"})
TURNED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The overlay's size: the original's, scaled down (aspect kept) so that neither side exceeds max_side."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def interpolation(cells: int, start: float, end: float, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, cells) bilinear weights of a grid of `cells` spread over [start, end) of an axis of `pixels`,
    and the mask of the pixels whose centres lie inside that span."""
    centres = np.arange(pixels) + 0.5
    position = np.clip((centres - start) / (end - start) * cells - 0.5, 0, cells - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, cells - 1)
    frac = position - low
    weights = np.zeros((pixels, cells))
    weights[np.arange(pixels), low] += 1 - frac
    weights[np.arange(pixels), high] += frac
    return weights, (centres >= start) & (centres < end)


def heatmap(cam: np.ndarray, crop: list[float], scale: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """The map in [0, 1] over an image of `size` (width, height); NaN outside the crop box."""
    (sx, sy), (width, height) = scale, size
    left, top, right, bottom = crop
    wy, inside_y = interpolation(cam.shape[0], top * sy, bottom * sy, height)
    wx, inside_x = interpolation(cam.shape[1], left * sx, right * sx, width)
    peak = float(cam.max())
    # float32 from here: half the work
    values: np.ndarray = (wy @ (cam / peak if peak > 0 else cam) @ wx.T).astype(np.float32)
    values[~inside_y, :] = np.nan
    values[:, ~inside_x] = np.nan
    return values


def colours(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map: (H, W) in [0, 1] → (H, W, 3) in [0, 1]."""
    channels = [np.clip(1.5 - np.abs(4 * values - shift), 0, 1) for shift in (3, 2, 1)]
    return np.stack(channels, axis=-1)


def reduced(img: Image.Image, target: tuple[int, int]) -> Image.Image:
    """`img` shrunk by the largest whole factor that divides both its sides and keeps it at least `target`: each
    pixel the mean of an f x f block, so the geometry stays exact and no full-size copy is turned or converted.
    `img` itself when no factor fits or its mode has no such mean (palette, 16-bit)."""
    limit = min(img.width // target[0], img.height // target[1])
    factor = next((f for f in range(limit, 1, -1) if img.width % f == 0 and img.height % f == 0), 1)
    return img.reduce(factor) if factor > 1 and img.mode in REDUCIBLE_MODES else img


def upright_thumbnail(data: bytes, size: tuple[int, int]) -> Image.Image:
    """The image decoded upright (EXIF orientation applied) in RGB, resized to `size`."""
    img: Image.Image = Image.open(io.BytesIO(data))
    if img.format == "JPEG":  # decode at a reduced DCT scale when the output is much smaller
        width, height = (math.ceil(side * max(size) / max(img.size)) for side in img.size)
        img.draft("RGB", (width, height))
    else:  # other formats decode in full: reduce at once, before the full-size copies below
        turned = img.getexif().get(ExifTags.Base.Orientation, 1) in TURNED
        img = reduced(img, (size[1], size[0]) if turned else size)
    img = ImageOps.exif_transpose(img).convert("RGB")
    return img if img.size == size else img.resize(size, Image.Resampling.BILINEAR)


def render(data: bytes, cam: list[list[float]], geometry: Geometry, max_side: int) -> bytes:
    """PNG bytes of the image `data` with `cam` laid over the crop box of `geometry` (the handler's)."""
    width, height = geometry["width"], geometry["height"]
    size = output_size(width, height, max_side)
    image = np.asarray(upright_thumbnail(data, size), dtype=np.float32) / 255.0
    values = heatmap(np.asarray(cam, dtype=np.float64), geometry["crop"], (size[0] / width, size[1] / height), size)
    inside = ~np.isnan(values)
    alpha = np.where(inside, 0.25 + 0.4 * np.nan_to_num(values), 0.0)[..., None]
    blended = image * (1 - alpha) + colours(np.nan_to_num(values)) * alpha
    out = io.BytesIO()
    Image.fromarray(np.round(blended * 255).astype(np.uint8)).save(out, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()
