"""The test model sees its input: distinct labels for its photos, and every preprocessing mistake shows."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from imagegen import stored_with_orientation
from PIL import Image, ImageOps
from reference import reference
from testmodel import LABELS, PHOTOS, PROB_TOLERANCE, Reference, max_difference, photo, picture

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_each_photo_gets_its_own_label(seeing_model: Reference) -> None:
    probabilities = seeing_model.probabilities_of(torch.stack([reference(photo(name)) for name in PHOTOS]))
    top1 = {name: LABELS[int(np.argmax(p))] for name, p in zip(PHOTOS, probabilities, strict=True)}
    assert top1 == PHOTOS
    assert len(set(top1.values())) >= 10


def upright(data: bytes) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def pipeline(
    img: Image.Image, size: int = 232, shift: int = 0, antialias: bool = True, normalise: bool = True
) -> torch.Tensor:
    """The reference transforms written out, with a knob for each mistake: resize, crop, scale, normalise."""
    pixels = F.pil_to_tensor(F.resize(img, size) if antialias else img)
    if not antialias:
        pixels = F.resize(pixels, size, antialias=False)
    height, width = pixels.shape[-2:]
    top, left = round((height - 224) / 2.0) + shift, round((width - 224) / 2.0)
    scaled = pixels[:, top : top + 224, left : left + 224].float() / 255
    return F.normalize(scaled, MEAN, STD) if normalise else scaled


MUTATIONS: dict[str, Callable[[bytes], torch.Tensor]] = {
    "BGR for RGB": lambda data: pipeline(Image.fromarray(np.asarray(upright(data))[:, :, ::-1].copy())),
    "no normalisation": lambda data: pipeline(upright(data), normalise=False),
    "Resize 256 for 232": lambda data: pipeline(upright(data), size=256),
    "crop one pixel off": lambda data: pipeline(upright(data), shift=1),
    "EXIF orientation ignored": lambda data: pipeline(Image.open(io.BytesIO(data)).convert("RGB")),
    "resize without antialias": lambda data: pipeline(upright(data), antialias=False),
}
COLOUR = [name for name in PHOTOS if picture(name).mode == "RGB"]  # BGR and RGB are the same grey


def test_the_written_out_pipeline_is_the_reference(seeing_model: Reference) -> None:
    """Without a mutation, `pipeline` gives the reference's probabilities: the mutations below are the only change."""
    images = [stored_with_orientation(picture(name), 6) for name in PHOTOS]
    ours = seeing_model.probabilities_of(torch.stack([pipeline(upright(data)) for data in images]))
    theirs = seeing_model.probabilities_of(torch.stack([reference(data) for data in images]))
    assert max_difference(ours, theirs) <= PROB_TOLERANCE


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_every_preprocessing_mistake_moves_the_probabilities(seeing_model: Reference, mutation: str) -> None:
    """For each photo (sent with EXIF orientation 6), the mistake moves some probability beyond the tolerance
    the equality tests use, by a wide margin."""
    names = COLOUR if mutation == "BGR for RGB" else list(PHOTOS)
    images = [stored_with_orientation(picture(name), 6) for name in names]
    right = seeing_model.probabilities_of(torch.stack([pipeline(upright(data)) for data in images]))
    wrong = seeing_model.probabilities_of(torch.stack([MUTATIONS[mutation](data) for data in images]))
    moved = {name: max_difference(r, w) for name, r, w in zip(names, right, wrong, strict=True)}
    assert min(moved.values()) > 10 * PROB_TOLERANCE, moved
