"""The images INT8 quantisation is calibrated on, and the images its accuracy gate is measured on.

Two disjoint sets, both preprocessed exactly as the handler preprocesses a request:

- `--calibration DIR`: every image file under DIR (recursively, sorted by path). Every 4th one is held
  apart for the gate, the rest calibrate; at most MAX_IMAGES of each are used (evenly spread).
- no folder: the default set, real photographs bundled with scikit-image (`skimage/data`: an astronaut, a
  cat, a cup of coffee, a rocket, a motorcycle, coins, microscopy, textures...). CALIBRATION_PHOTOS
  calibrate, GATE_PHOTOS are held apart; each photo gives VIEWS crops and flips, so 80 images per set.
  Real photos give activation ranges like real traffic, which synthetic gradients do not.

The worker-start gate (handlers/gate.py) needs the held-apart images encoded, as requests bring them:
`gate_images` gives at most GATE_IMAGES of them, as JPEG (quality 95, at most 1024 px a side): the folder's
held-apart files, or the default gate photos' views.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from handlers.gate import GATE_IMAGES
from handlers.imaging import ImageError, decode, preprocess
from modelserver.image_folder import images_in

GATE_EVERY = 4
MAX_IMAGES = 256
MIN_IMAGES = 8
MAX_PIXELS = 100_000_000
CALIBRATION_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "camera.png",
    "moon.png",
    "grass.png",
    "page.png",
    "cell.png",
)
GATE_PHOTOS = (
    "chelsea.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "rocket.jpg",
    "coins.png",
    "brick.png",
    "gravel.png",
    "text.png",
    "microaneurysms.png",
    "clock_motion.png",
)
# (left, top, right, bottom) as fractions of the photo, and whether to mirror it
VIEWS = (
    ((0, 0, 1, 1), False),
    ((0, 0, 1, 1), True),
    ((0, 0, 0.6, 0.6), False),
    ((0.4, 0, 1, 0.6), False),
    ((0, 0.4, 0.6, 1), True),
    ((0.4, 0.4, 1, 1), True),
    ((0.25, 0.25, 0.75, 0.75), False),
    ((0.125, 0.125, 0.875, 0.875), True),
)


class CalibrationError(Exception):
    """The calibration images cannot be had or are too few; the message says what to do."""


@dataclass(frozen=True)
class ImageSets:
    source: str  # what the report calls them
    calibration: np.ndarray  # (N, 3, 224, 224) float32, preprocessed
    gate: np.ndarray  # held apart from calibration


def skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise CalibrationError(
            "the default calibration photos come from scikit-image: install the serve extra "
            "(pip install -e '.[serve]') or pass --calibration DIR"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def views(img: Image.Image) -> list[Image.Image]:
    width, height = img.size
    out = []
    for (left, top, right, bottom), mirror in VIEWS:
        crop = img.crop((round(left * width), round(top * height), round(right * width), round(bottom * height)))
        out.append(ImageOps.mirror(crop) if mirror else crop)
    return out


def load(path: Path) -> Image.Image:
    try:
        return decode(path.read_bytes(), MAX_PIXELS)
    except ImageError as exc:
        raise CalibrationError(f"{path}: {exc.detail}") from None


def default_sets() -> ImageSets:
    data = skimage_data_dir()

    def tensors(names: tuple[str, ...]) -> np.ndarray:
        return np.stack([preprocess(view) for name in names for view in views(load(data / name))])

    return ImageSets("scikit-image sample photos (default set)", tensors(CALIBRATION_PHOTOS), tensors(GATE_PHOTOS))


T = TypeVar("T")


def spread(items: list[T], limit: int = MAX_IMAGES) -> list[T]:
    """At most `limit` of `items`, evenly spaced."""
    if len(items) <= limit:
        return items
    return [items[int(i * len(items) / limit)] for i in range(limit)]


GATE_JPEG_SIDE, GATE_JPEG_QUALITY = 1024, 95


def jpeg(img: Image.Image) -> bytes:
    """A gate image as the archive carries it: JPEG, close to the original (the test model's INT8 agreed with
    fp32 on 0.84 of the default views re-encoded at 384 px / quality 90, 0.86-0.94 at this size and quality)."""
    small = img.convert("RGB")
    small.thumbnail((GATE_JPEG_SIDE, GATE_JPEG_SIDE))
    out = io.BytesIO()
    small.save(out, "JPEG", quality=GATE_JPEG_QUALITY)
    return out.getvalue()


def held_apart(folder: Path) -> tuple[list[Path], list[Path]]:
    """(calibration, gate) files of a folder: every GATE_EVERY-th is held apart."""
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder {folder} does not exist")
    paths = images_in(folder)
    if len(paths) < MIN_IMAGES:
        raise CalibrationError(
            f"{folder} holds {len(paths)} image(s); calibration needs at least {MIN_IMAGES} "
            f"(every {GATE_EVERY}th is held apart for the accuracy gate)"
        )
    gate = paths[GATE_EVERY - 1 :: GATE_EVERY]
    apart = set(gate)
    return [p for p in paths if p not in apart], gate


def folder_sets(folder: Path) -> ImageSets:
    calibration, gate = held_apart(folder)
    paths = len(calibration) + len(gate)

    def tensors(chosen: list[Path]) -> np.ndarray:
        return np.stack([preprocess(load(p)) for p in spread(chosen)])

    return ImageSets(f"{folder} ({paths} images)", tensors(calibration), tensors(gate))


def image_sets(folder: Path | None) -> ImageSets:
    return default_sets() if folder is None else folder_sets(folder)


def gate_images(folder: Path | None, files: tuple[Path, ...] | None = None) -> list[bytes]:
    """The worker-start gate's images, encoded, at most GATE_IMAGES: `files` when given, else those held apart
    from calibration."""
    if files is not None:
        return [jpeg(load(path)) for path in spread(list(files), GATE_IMAGES)]
    if folder is not None:
        return [jpeg(load(path)) for path in spread(held_apart(folder)[1], GATE_IMAGES)]
    data = skimage_data_dir()
    photos = [view for name in GATE_PHOTOS for view in views(load(data / name))]
    return [jpeg(view) for view in spread(photos, GATE_IMAGES)]
