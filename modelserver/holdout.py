"""The held-apart split of `train-head`: per class, seeded, set aside before anything is fitted.

Pure logic on (path, label) pairs: tested without torch (tests/unit/test_holdout.py). A class needs
`min_images(holdout)` photos: CV_FOLDS for the training part (stratified k-fold cross-validation puts at least
one of each class in every fold) and its held-apart share, at least one.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

CV_FOLDS = 5  # the k of the k-fold cross-validation that chooses the regularisation
DEFAULT_HOLDOUT = "0.2"


class HoldoutError(ValueError):
    """The photos cannot be split as asked; the message says why."""


@dataclass(frozen=True)
class Photo:
    path: Path
    label: str


@dataclass(frozen=True)
class Holdout:
    """How many photos of a class are held apart: a fraction of its photos (rounded, at least one) or a count."""

    fraction: float | None = None
    count: int | None = None

    @classmethod
    def parse(cls, text: str) -> Holdout:
        """`0.2` (a fraction, 0 < f < 1) or `8` (photos per class, at least 1)."""
        try:
            value = float(text)
        except ValueError:
            raise HoldoutError(
                f"--holdout {text!r}: give a fraction (0.2) or a count of photos per class (8)"
            ) from None
        if 0 < value < 1:
            return cls(fraction=value)
        if value >= 1 and value == int(value):
            return cls(count=int(value))
        raise HoldoutError(f"--holdout {text!r}: a fraction must lie between 0 and 1, a count be a whole number >= 1")

    def of(self, images: int) -> int:
        """The photos held apart from a class of `images` photos."""
        if self.count is not None:
            return self.count
        assert self.fraction is not None
        return max(1, math.floor(self.fraction * images + 0.5))

    def min_images(self) -> int:
        """The fewest photos a class may have: CV_FOLDS to train on and its held-apart share."""
        if self.count is not None:
            return self.count + CV_FOLDS
        assert self.fraction is not None
        n = CV_FOLDS + 1
        while n - self.of(n) < CV_FOLDS:
            n += 1
        return n

    def describe(self) -> str:
        return f"{self.count} per class" if self.count is not None else f"{self.fraction:g} of each class"


def by_label(photos: list[Photo]) -> dict[str, list[Photo]]:
    """The photos of each label, labels in sorted order, photos sorted by path."""
    grouped: dict[str, list[Photo]] = defaultdict(list)
    for photo in photos:
        grouped[photo.label].append(photo)
    return {label: sorted(grouped[label], key=lambda p: str(p.path)) for label in sorted(grouped)}


def check_counts(photos: list[Photo], holdout: Holdout) -> None:
    """Refuse a class with fewer than holdout.min_images() photos, naming every such class."""
    least = holdout.min_images()
    short = {label: len(group) for label, group in by_label(photos).items() if len(group) < least}
    if short:
        listed = ", ".join(f"{label} ({count})" for label, count in short.items())
        raise HoldoutError(
            f"every class needs at least {least} readable photos ({CV_FOLDS} to train on, for {CV_FOLDS}-fold "
            f"cross-validation, and {holdout.describe()} held apart); too few in: {listed}"
        )


def split(photos: list[Photo], holdout: Holdout, seed: int) -> tuple[list[Photo], list[Photo]]:
    """(training, held apart): from each class, holdout.of(n) photos drawn at random with `seed`. The same
    photos and seed give the same split whatever order the photos come in."""
    check_counts(photos, holdout)
    training: list[Photo] = []
    held: list[Photo] = []
    for label, group in by_label(photos).items():
        draw = random.Random(f"{seed}:{label}")  # noqa: S311  # reproducible on purpose, not a secret
        chosen = set(draw.sample(range(len(group)), holdout.of(len(group))))
        for i, photo in enumerate(group):
            (held if i in chosen else training).append(photo)
    return training, held
