"""Reduced-scale JPEG decoding (the handler's `jpeg_draft`) is off by default; when allowed, it is faster
and not exact. On the test model's photos enlarged to 2-12 MP, what it promises is checked here: the model's
input stays within the pixel bounds docs/model.md documents ("The handler"), so a change that makes it worse
fails, and the answers move (not exact) but keep their top-1.

The bounds are on pixels, not on probabilities: libjpeg's DCT scaling and Pillow's fixed-point resize give
the same pixels on every CPU (checked with libjpeg-turbo's SIMD forced off and on), while the test model's
probabilities are those of a model fitted on the CPU at hand, so a bound on them is that CPU's number."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from imagegen import stored_with_orientation, with_orientation
from PIL import Image
from testmodel import LARGE, PROB_TOLERANCE, large_photo

from handlers.engines import OnnxEngine
from handlers.image_handler import softmax
from handlers.imaging import RESIZE_SIZE, crop_box, decode, preprocess, resized_size

LIMIT = 10**8
# floor → the largest mean absolute difference, in grey levels (0-255) over the 224x224x3 crop the model
# sees, of any of the 12 large photos from its full decode: measured 3.03, 3.30, 3.31 and rounded up.
PIXEL_BOUNDS = {2: 3.5, 4: 4.0, 8: 4.0}


def model_input(img: Image.Image) -> np.ndarray:
    """The pixels the model sees (the handler's resize and centre crop), as integers."""
    resized = img.resize(resized_size(*img.size), Image.Resampling.BILINEAR)
    return np.asarray(resized.crop(crop_box(*resized.size)), dtype=np.int16)


def pixel_deviation(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(model_input(a) - model_input(b)).mean())


@pytest.fixture(scope="module")
def engine(seeing_model_dir: Path) -> OnnxEngine:
    return OnnxEngine(seeing_model_dir, threads=2)


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [large_photo(name, megapixels) for name, megapixels in LARGE.items()]


def probabilities(engine: OnnxEngine, images: list[bytes], floor: int) -> np.ndarray:
    return softmax(engine.run(np.stack([preprocess(decode(data, LIMIT, jpeg_draft=floor)) for data in images])))


def test_large_jpegs_are_decoded_in_full_by_default(photos: list[bytes]) -> None:
    for data in photos:
        assert decode(data, LIMIT).size == Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize("floor", sorted(PIXEL_BOUNDS))
def test_reduced_scale_decode_deviates_within_the_documented_bound(
    engine: OnnxEngine, photos: list[bytes], floor: int
) -> None:
    for data in photos:
        width, height = Image.open(io.BytesIO(data)).size
        # the strongest reduction allowed that keeps the shorter side at or above the resize target
        n = max(n for n in (1, 2, 4, 8) if n <= floor and math.ceil(min(width, height) / n) >= RESIZE_SIZE)
        assert n > 1
        drafted = decode(data, LIMIT, jpeg_draft=floor)
        assert drafted.size == (math.ceil(width / n), math.ceil(height / n))
        assert 0 < pixel_deviation(drafted, decode(data, LIMIT)) <= PIXEL_BOUNDS[floor], "not exact, as documented"
    exact, drafted_probs = probabilities(engine, photos, 1), probabilities(engine, photos, floor)
    assert np.abs(drafted_probs - exact).max() > PROB_TOLERANCE, "the answers move"
    assert np.array_equal(drafted_probs.argmax(axis=1), exact.argmax(axis=1))


def test_reduced_scale_decode_respects_exif_orientation(engine: OnnxEngine) -> None:
    assert decode(with_orientation(6, 4000, 3000), LIMIT, jpeg_draft=8).size == (375, 500)  # portrait
    upright = large_photo("chelsea", 5)
    rotated = stored_with_orientation(Image.open(io.BytesIO(upright)), 6)
    assert (
        pixel_deviation(decode(upright, LIMIT, jpeg_draft=8), decode(rotated, LIMIT, jpeg_draft=8)) <= PIXEL_BOUNDS[8]
    )
    probs = probabilities(engine, [upright, rotated], 8)
    assert probs[0].argmax() == probs[1].argmax()
