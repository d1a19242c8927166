"""Our Pillow/NumPy preprocessing equals torchvision's reference transform bit for bit."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from imagegen import (
    FORMATS,
    MODES,
    encode,
    gradient,
    in_format,
    in_mode,
    jpeg,
    stored_with_orientation,
    truncated_jpeg,
    with_orientation,
)
from PIL import Image
from support import MAX_PIXELS, assert_identical, ours
from testmodel import large_photo

from handlers.imaging import ImageError, decode, preprocess


@pytest.mark.parametrize("mode", MODES)
def test_every_pillow_mode_matches_reference(mode: str) -> None:
    fmt, data = in_mode(mode)
    assert Image.open(io.BytesIO(data)).mode == mode, "the generator must really produce this mode"
    assert_identical(data)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_accepted_format_matches_reference(fmt: str) -> None:
    data = in_format(fmt)
    assert Image.open(io.BytesIO(data)).format == fmt
    assert_identical(data)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_match_reference(orientation: int) -> None:
    data = with_orientation(orientation)
    assert_identical(data)


def test_exif_rotation_is_applied() -> None:
    """Orientation 6 (rotate 90° CW) must change the result, not be ignored by both sides alike."""
    upright = ours(with_orientation(1, 300, 200))
    rotated = ours(with_orientation(6, 300, 200))
    assert not torch.equal(upright, rotated)
    raw = torch.from_numpy(preprocess(Image.open(io.BytesIO(with_orientation(6, 300, 200))).convert("RGB")))
    assert not torch.equal(raw, rotated)


@pytest.mark.parametrize(
    "size", [(1, 1), (2, 3), (224, 224), (231, 233), (232, 232), (4000, 30), (30, 4000), (1920, 1080), (3000, 4000)]
)
def test_sizes_match_reference(size: tuple[int, int]) -> None:
    assert_identical(encode(gradient(*size), "PNG"))


@pytest.mark.parametrize("size", [(1200, 928), (4000, 3000), (3000, 4000), (6000, 1000), (5000, 2400)])
def test_large_jpegs_match_reference(size: tuple[int, int]) -> None:
    """By default large JPEGs are decoded in full: bit-identical too (reduced-scale decode is opt-in)."""
    assert_identical(encode(gradient(*size, seed=sum(size)), "JPEG", quality=90))


@pytest.mark.parametrize("name", ["rocket", "shapes-2"])
def test_large_photos_match_reference(name: str) -> None:
    """12 MP photos, as sent and EXIF-rotated."""
    assert_identical(large_photo(name, 12))
    assert_identical(stored_with_orientation(Image.open(io.BytesIO(large_photo(name, 12))), 6))


def test_animated_gif_uses_first_frame() -> None:
    data = in_format("GIF")
    first = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.array_equal(np.asarray(decode(data, MAX_PIXELS)), np.asarray(first))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty"),
        (b"definitely not an image", "undecodable"),
        (truncated_jpeg(), "undecodable"),
        (encode(gradient(64, 64), "ICO"), "unsupported_format"),
        (jpeg(300, 200), "too_large"),
    ],
    ids=["empty", "text", "truncated-jpeg", "ico", "over-pixel-limit"],
)
def test_bad_inputs_raise_image_error_with_stable_code(data: bytes, code: str) -> None:
    with pytest.raises(ImageError) as caught:
        decode(data, max_pixels=50_000)
    assert caught.value.code == code
    assert caught.value.detail
