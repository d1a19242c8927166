"""What `train-head` reports about the held-apart photos: top-1, per-class precision and recall, the confusion
matrix (as text and as a PNG), and the held-apart list in `evaluate --list`'s format (path TAB label)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from modelserver.holdout import Photo

CELL = 40  # the PNG's cell size in pixels


def confusion(labels: tuple[str, ...], truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(N, N) counts: row = the photo's label, column = the head's top-1."""
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def scores(labels: tuple[str, ...], matrix: np.ndarray) -> dict[str, Any]:
    """Top-1 and each class's precision (of the photos called it, the share that are) and recall (of its
    photos, the share called it); a class nothing was called has precision None."""
    hits, called, held = np.diag(matrix), matrix.sum(axis=0), matrix.sum(axis=1)
    per_class = {
        label: {
            "held_apart": int(held[i]),
            "precision": round(float(hits[i] / called[i]), 4) if called[i] else None,
            "recall": round(float(hits[i] / held[i]), 4) if held[i] else None,
        }
        for i, label in enumerate(labels)
    }
    return {"top1": round(float(hits.sum() / matrix.sum()), 4), "per_class": per_class}


def confusion_text(labels: tuple[str, ...], matrix: np.ndarray) -> str:
    """The matrix as aligned text: rows are the true labels, columns the predicted ones (numbered)."""
    width = max(len(label) for label in labels)
    cells = max(3, len(str(int(matrix.max()))) + 1)
    head = " " * (width + 6) + "".join(f"{j:>{cells}}" for j in range(len(labels)))
    rows = [
        f"{i:>3}. {label:<{width}} " + "".join(f"{int(v):>{cells}}" for v in matrix[i])
        for i, label in enumerate(labels)
    ]
    return "\n".join(["confusion (rows: label, columns: predicted, numbered as the rows)", head, *rows])


def confusion_png(labels: tuple[str, ...], matrix: np.ndarray, path: Path) -> None:
    """The matrix as a heat map: each cell shaded by the share of its row, its count written in it."""
    n = len(labels)
    margin = 8 * max(len(label) for label in labels) + 16
    img = Image.new("RGB", (margin + n * CELL + 8, CELL + n * CELL + 8), "white")
    draw = ImageDraw.Draw(img)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    for j in range(n):
        draw.text((margin + j * CELL + CELL // 3, CELL // 3), str(j), fill="black")
    for i, label in enumerate(labels):
        top = CELL + i * CELL
        draw.text((4, top + CELL // 3), f"{i}. {label}", fill="black")
        for j in range(n):
            shade = int(255 * (1 - shares[i, j]))
            box = (margin + j * CELL, top, margin + (j + 1) * CELL - 1, top + CELL - 1)
            draw.rectangle(box, fill=(shade, shade, 255), outline="grey")
            draw.text(
                (box[0] + CELL // 3, top + CELL // 3), str(int(matrix[i, j])), fill="black" if shade > 128 else "white"
            )
    img.save(path, "PNG")


def held_apart_list(photos: list[Photo], path: Path) -> None:
    """`path TAB label` per line, paths relative to the list's folder (absolute when on another drive)."""
    lines = []
    for photo in photos:
        try:
            shown = os.path.relpath(photo.path.resolve(), path.parent.resolve())
        except ValueError:
            shown = str(photo.path.resolve())
        lines.append(f"{shown}\t{photo.label}")
    path.write_text("".join(f"{line}\n" for line in lines))


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def summary(report: dict[str, Any], matrix_text: str) -> str:
    """The report's text form, for stdout."""
    held, fit = report["held_apart"], report["fit"]
    lines = [
        f"held apart: {held['images']} photos, top-1 {held['top1']:.2%}",
        f"regularisation: C = {fit['C']:g}, chosen by {fit['cv_folds']}-fold cross-validation on the training part "
        f"({fit['training_images']} photos; accuracy {fit['cv_accuracy']:.2%} over its folds)",
        "per class: precision / recall on the held-apart photos",
        *(
            f"  {label}: {percent(s['precision'])} / {percent(s['recall'])}  ({s['held_apart']} held apart)"
            for label, s in held["per_class"].items()
        ),
        matrix_text,
    ]
    return "\n".join(lines)
