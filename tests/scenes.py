"""A labelled folder of generated scenes, for `modelserver train-head`: DIR/<kind>/<kind>-<seed>.jpg.

Each image is drawn from its own seed (its colours, sizes, positions and counts), so no two are views of one
picture and a held-apart image is no near-copy of a training one. A kind is a layout and a range of hues,
as real categories differ (the sea is blue and has waves): the test model's random-feature backbone
(tests/testmodel.py) tells colour statistics apart far better than textures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from imagegen import encode
from PIL import Image, ImageColor, ImageDraw

Rng = np.random.Generator
Colour = Callable[[Rng], tuple[int, int, int]]


def hues(low: int, high: int, value: tuple[int, int] = (35, 95)) -> Colour:
    """Colours of hue `low`..`high` degrees, saturation 40-100 %, brightness `value` %."""

    def colour(rng: Rng) -> tuple[int, int, int]:
        h, s, v = int(rng.integers(low, high)), int(rng.integers(40, 100)), int(rng.integers(*value))
        red, green, blue = ImageColor.getrgb(f"hsv({h % 360},{s}%,{v}%)")[:3]
        return red, green, blue

    return colour


def _noisy(img: Image.Image, rng: Rng) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, 10, size=(img.height, img.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def waves(width: int, height: int, rng: Rng, colour: Colour) -> Image.Image:
    """Horizontal bands, wavy, in two colours."""
    period, amplitude, phase = rng.uniform(16, 60), rng.uniform(4, 30), rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width]
    band = (np.sin((y + amplitude * np.sin(x / rng.uniform(20, 80) + phase)) * 2 * np.pi / period) > 0)[..., None]
    img = np.where(band, colour(rng), colour(rng)).astype(np.uint8)
    return _noisy(Image.fromarray(img, "RGB"), rng)


def blobs(width: int, height: int, rng: Rng, colour: Colour) -> Image.Image:
    """Many overlapping ellipses."""
    img = Image.new("RGB", (width, height), colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(30, 80))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        rx, ry = int(rng.integers(10, width // 6)), int(rng.integers(10, height // 6))
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=colour(rng))
    return _noisy(img, rng)


def dunes(width: int, height: int, rng: Rng, colour: Colour) -> Image.Image:
    """A smooth blend between two colours, at an angle."""
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    t = ((x * np.cos(angle) + y * np.sin(angle)) % 1.0)[..., None]
    start, end = np.array(colour(rng), np.float32), np.array(colour(rng), np.float32)
    return _noisy(Image.fromarray((start + (end - start) * t).astype(np.uint8), "RGB"), rng)


def stars(width: int, height: int, rng: Rng, colour: Colour) -> Image.Image:
    """A dark ground with small bright dots."""
    img = Image.new("RGB", (width, height), colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(100, 300))):
        x, y, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(1, 4))
        grey = int(rng.integers(180, 256))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(grey, grey, int(rng.integers(150, 256))))
    return _noisy(img, rng)


def bricks(width: int, height: int, rng: Rng, colour: Colour) -> Image.Image:
    """Rows of offset blocks with mortar between."""
    img = Image.new("RGB", (width, height), (200, 200, 190))
    draw = ImageDraw.Draw(img)
    w, h = int(rng.integers(30, 80)), int(rng.integers(14, 36))
    for row, top in enumerate(range(0, height, h)):
        for left in range(-w + (row % 2) * w // 2, width, w):
            draw.rectangle((left + 2, top + 2, left + w - 2, top + h - 2), fill=colour(rng))
    return _noisy(img, rng)


Scene = Callable[[int, int, Rng], Image.Image]
KINDS: dict[str, Scene] = {
    "sea": lambda w, h, rng: waves(w, h, rng, hues(180, 240)),
    "forest": lambda w, h, rng: blobs(w, h, rng, hues(80, 150, (20, 70))),
    "desert": lambda w, h, rng: dunes(w, h, rng, hues(25, 50, (60, 100))),
    "night": lambda w, h, rng: stars(w, h, rng, hues(200, 280, (5, 25))),
    "wall": lambda w, h, rng: bricks(w, h, rng, hues(0, 20, (40, 80))),
}


def scene(kind: str, seed: int, width: int = 320, height: int = 240) -> bytes:
    """One scene of `kind` drawn from `seed`, as a JPEG (quality 90)."""
    return encode(KINDS[kind](width, height, np.random.default_rng(seed)), "JPEG", quality=90)


def labelled_folder(
    root: Path, per_class: int, kinds: tuple[str, ...] = tuple(KINDS), size: tuple[int, int] = (320, 240)
) -> Path:
    """`root`/<kind>/<kind>-<seed>.jpg, `per_class` scenes of each kind, every one from its own seed."""
    for k, kind in enumerate(kinds):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            seed = 1000 * k + i
            (root / kind / f"{kind}-{seed}.jpg").write_bytes(scene(kind, seed, *size))
    return root
