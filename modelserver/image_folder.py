"""Folders of photos as the commands read them: an image is a file with one of IMAGE_SUFFIXES, found
recursively, in path order; a class folder (ImageFolder layout, DIR/<class>/<image>) is a sub-folder not
hidden. `modelserver evaluate`, `train-head` and the INT8 calibration read folders this way.
"""

from __future__ import annotations

from pathlib import Path

from contract.formats import IMAGE_SUFFIXES


def images_in(folder: Path) -> list[Path]:
    """The image files under `folder`, recursively, sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(folder: Path) -> list[Path]:
    """The class folders of an ImageFolder: its sub-folders but hidden ones, sorted by name."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
