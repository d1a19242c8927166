"""Large JPEGs are decoded at reduced scale; the answer (top-5) matches the full decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from imagegen import encode, gradient, with_orientation
from support import assert_identical

from handlers.engines import OnnxEngine
from handlers.imaging import DRAFT_MIN_SIDE, decode, preprocess

LIMIT = 10**8


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> OnnxEngine:
    return OnnxEngine(model_dir, threads=2)


def top5(engine: OnnxEngine, data: bytes, draft: bool) -> list[int]:
    logits = engine.run(preprocess(decode(data, LIMIT, draft=draft))[None])
    return np.argsort(-logits[0])[:5].tolist()


@pytest.mark.parametrize("size", [(4000, 3000), (3000, 4000), (1200, 928), (6000, 1000)])
def test_draft_top5_matches_full_decode(engine: OnnxEngine, size: tuple[int, int]) -> None:
    data = encode(gradient(*size, seed=sum(size)), "JPEG", quality=90)
    drafted = decode(data, LIMIT)
    assert min(drafted.size) < min(size), "large JPEGs must be decoded at reduced scale"
    assert min(drafted.size) >= 232
    assert top5(engine, data, draft=True) == top5(engine, data, draft=False)


def test_draft_respects_exif_orientation(engine: OnnxEngine) -> None:
    data = with_orientation(6, 4000, 3000)
    drafted = decode(data, LIMIT)
    assert drafted.size[0] < drafted.size[1]  # rotated to portrait
    assert top5(engine, data, draft=True) == top5(engine, data, draft=False)


def test_jpegs_below_the_draft_threshold_stay_bit_identical() -> None:
    side = DRAFT_MIN_SIDE - 1
    assert_identical(encode(gradient(side + 300, side), "JPEG", quality=90))
