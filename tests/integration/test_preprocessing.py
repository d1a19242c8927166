"""Our Pillow/NumPy preprocessing equals torchvision's reference transform bit for bit."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from imagegen import (
    FORMATS,
    FRAGMENTED,
    MODES,
    encode,
    fragmented,
    gradient,
    in_format,
    in_mode,
    jpeg,
    scan_repeated_jpeg,
    stored_with_orientation,
    thin_png,
    truncated_jpeg,
    with_orientation,
)
from PIL import Image
from reference import MAX_PIXELS, assert_identical, ours
from testmodel import large_photo

from contract.bounds import MAX_JPEG_SCANS, jpeg_refusal, jpeg_scans
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


@pytest.mark.parametrize("size", [(200, 1), (1, 200), (4000, 20), (20, 4000), (600, 3), (3, 17), (20000, 100)])
def test_the_thinnest_accepted_shapes_match_reference(size: tuple[int, int]) -> None:
    """Up to the aspect-ratio bound (200:1, contract/bounds.py) the whole resize runs, bit-identical."""
    assert_identical(encode(gradient(*size), "PNG"))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (thin_png(20000, 1), "extreme_aspect_ratio"),
        (thin_png(1, 20000), "extreme_aspect_ratio"),
        (thin_png(20000, 2), "extreme_aspect_ratio"),
        (thin_png(201, 1), "extreme_aspect_ratio"),
        (thin_png(3, 601), "extreme_aspect_ratio"),
        (scan_repeated_jpeg(MAX_JPEG_SCANS + 1), "too_many_scans"),
        (scan_repeated_jpeg(3000), "too_many_scans"),
        *[(fragmented(fmt), "too_fragmented") for fmt in FRAGMENTED],
    ],
    ids=[
        "20000x1",
        "1x20000",
        "20000x2",
        "201x1",
        "3x601",
        "jpeg-101-scans",
        "jpeg-3000-scans",
        *[f"fragmented-{fmt}" for fmt in FRAGMENTED],
    ],
)
def test_costly_images_are_refused(data: bytes, code: str) -> None:
    with pytest.raises(ImageError) as caught:
        decode(data, MAX_PIXELS)
    assert caught.value.code == code
    assert caught.value.detail


def test_the_scan_bound_shrinks_with_the_pixels() -> None:
    """Each scan costs a pass over every block: 100 scans at most, and at most 16 for 40 MP."""
    allowed = scan_repeated_jpeg(MAX_JPEG_SCANS)
    assert jpeg_scans(allowed, 10**6) == MAX_JPEG_SCANS
    assert jpeg_refusal(allowed, 1000, 1000) is None
    assert_identical(allowed)
    assert jpeg_refusal(scan_repeated_jpeg(16), 8000, 5000) is None
    assert jpeg_refusal(scan_repeated_jpeg(17), 8000, 5000).code == "too_many_scans"


def test_scan_count_ends_on_any_cut() -> None:
    """The marker walk stops on every prefix of a JPEG (cut inside a segment, a length or a scan) and never
    counts more scans than there are."""
    data = scan_repeated_jpeg(12, 64, 64)
    counts = [jpeg_scans(data[:end], 10**6) for end in range(len(data) + 1)]
    assert counts == sorted(counts) and counts[-1] == 12


def test_fragments_below_the_read_bound_decode() -> None:
    """The same constructions with a few pieces are ordinary images: the bound counts, it does not ban."""
    for fmt in FRAGMENTED:
        assert_identical(fragmented(fmt, pieces=50))


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
