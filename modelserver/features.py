"""The pooled 2048-d vectors of a list of photos, as the service would compute them from an archive's backbone.

Each photo goes through the handler's own decode and preprocessing (handlers/imaging.py, the archive's
max_pixels and jpeg_draft), several decoded at once, then through the engine a worker on this CPU would serve
for the archive's settings (handlers/engine_start.start: chosen and gated here), in batches. With `views`
beyond the first, each photo also gives the vectors of its transformed copies (mirrored, cropped): the
augmentation `train-head --augment` measured.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from handlers.cpu_features import this_cpu_flags
from handlers.engine_start import Started
from handlers.engine_start import start as start_engine
from handlers.imaging import ImageError, decode, preprocess

BATCH = 8
View = Callable[[Image.Image], Image.Image]


def as_is(img: Image.Image) -> Image.Image:
    return img


def mirrored(img: Image.Image) -> Image.Image:
    return ImageOps.mirror(img)


def cropped(img: Image.Image) -> Image.Image:
    """The central 80 % of the picture (the served crop then takes 224 of its shorter side)."""
    width, height = img.size
    return img.crop((width // 10, height // 10, width - width // 10, height - height // 10))


PLAIN: tuple[View, ...] = (as_is,)
AUGMENTED: tuple[View, ...] = (as_is, mirrored, cropped, lambda img: mirrored(cropped(img)))


@dataclass
class Features:
    """The vectors of the photos that could be read (`vectors[i]`: (views, 2048) for `paths[i]`), the ones that
    could not (path → why), and the engine that computed them."""

    paths: list[Path]
    vectors: np.ndarray
    unreadable: dict[Path, str]
    engine: Started


def engine_for(model_dir: Path, settings: Mapping[str, Any], untrained: bool) -> Started:
    """The engine a worker on this CPU would serve for `settings`, with the archive at `model_dir`."""
    return start_engine(model_dir, settings, untrained, os.cpu_count() or 1, os.environ, this_cpu_flags())


# One photo's input tensors (views, 3, 224, 224), or why it cannot be read.
Prepared = np.ndarray | str


def prepared_batches(
    paths: list[Path], settings: Mapping[str, Any], views: tuple[View, ...], progress: bool, desc: str | None = None
) -> Iterator[list[Prepared]]:
    """The photos in batches of BATCH, each decoded and preprocessed as the handler does (the archive's
    max_pixels and jpeg_draft), several at once, with a progress bar on stderr. A photo that cannot be decoded
    is its reason, not fatal here."""
    max_pixels, jpeg_draft = int(settings["max_pixels"]), int(settings["jpeg_draft"])

    def prepared(path: Path) -> Prepared:
        try:
            img = decode(path.read_bytes(), max_pixels, jpeg_draft)
        except ImageError as err:
            return f"{err.code}: {err.detail}"
        except OSError as err:
            return f"unreadable: {err.strerror or err}"
        return np.stack([preprocess(view(img)) for view in views])

    with (
        ThreadPoolExecutor(max(1, int(settings["decode_threads"]))) as pool,
        tqdm(total=len(paths), unit="img", desc=desc, disable=not progress) as bar,
    ):
        for start in range(0, len(paths), BATCH):
            yield list(pool.map(prepared, paths[start : start + BATCH]))
            bar.update(min(BATCH, len(paths) - start))


def pooled(
    engine: Started, settings: Mapping[str, Any], paths: list[Path], views: tuple[View, ...], progress: bool
) -> Features:
    """Every photo's pooled vectors, one per view; a photo that cannot be decoded is listed, not fatal here."""
    good: list[Path] = []
    vectors: list[np.ndarray] = []
    unreadable: dict[Path, str] = {}
    batches = prepared_batches(paths, settings, views, progress, "features")
    for start, batch in zip(range(0, len(paths), BATCH), batches, strict=True):
        chunk = paths[start : start + BATCH]
        for path, item in zip(chunk, batch, strict=True):
            if isinstance(item, str):
                unreadable[path] = item
        arrays = [item for item in batch if isinstance(item, np.ndarray)]
        if arrays:
            out = engine.engine.run_outputs(np.concatenate(arrays), ["pooled"])[0]
            vectors.extend(out.reshape(len(arrays), len(views), -1))
            good.extend(p for p, item in zip(chunk, batch, strict=True) if isinstance(item, np.ndarray))
    empty = np.zeros((0, len(views), 0), np.float32)
    return Features(good, np.stack(vectors) if vectors else empty, unreadable, engine)
