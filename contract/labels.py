"""A model's class labels: the rules a custom archive's labels must follow, and the one normalisation by which a
label is matched everywhere (the gateway's `classes` allow-list, `modelserver evaluate`'s class folders, the
collision rule below).

An archive's labels are its final layer's classes, in class-id order. ImageNet's come from torchvision and are
served as they are; labels a user brings (`modelserver build --labels FILE`, `modelserver train-head`) are
refused, with one line that says why, when one of them would be misread by the service:

- fewer than 2 labels (a classifier of one class answers nothing), or more than MAX_CLASSES;
- an empty label, or one with a line break or another control character (the labels file and evaluate's
  lists hold one per line), or longer than MAX_LABEL_LENGTH characters;
- a comma (the allow-list `classes=a,b` splits on commas);
- only digits (the allow-list reads an entry of digits as a class id);
- `unknown` in any case (the `decision` of an answer says "unknown" when the best score is too low);
- two labels equal after `normalise` (the allow-list and evaluate could not tell them apart).

MAX_CLASSES is ImageNet's own 1000: every answer can carry all N scores (v2's dense [n, N] tensor, the
handler's full list when the allow-list renormalises, /v1/models' label list, the gate set's logits). That
list is about 150 bytes a class with a long label: under TorchServe's max_response_size of 1 MiB
(config.properties) at 1000 classes, over it at 10,000. And every per-request cost of the service (its memory
bounds included) was measured at 1000 classes; the cap keeps a custom archive within what was measured.
Standard library only: the gateway, the handler and modelserver import it, and the host's python3 through
modelserver/trained_archive.py.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

MAX_CLASSES = 1000
IMAGENET_LABELS_SOURCE = "torchvision ImageNet-1K"  # metadata.json's labels_source of ImageNet's labels
MAX_LABEL_LENGTH = 100  # characters
UNKNOWN = "unknown"  # the decision's label when no class is chosen (gateway/ranking.py)
_SPACES = re.compile(r"\s+")
_BREAKS = frozenset({"Cc", "Zl", "Zp"})  # control characters, line and paragraph separators


class LabelError(ValueError):
    """Labels that cannot be served; the message is one line that says why."""


def normalise(label: str) -> str:
    """A label as it is matched: Unicode NFKC, underscores as spaces, runs of spaces as one, trimmed,
    case-folded (`Golden_Retriever` and `golden  retriever` are `golden retriever`)."""
    folded = unicodedata.normalize("NFKC", label).replace("_", " ")
    return _SPACES.sub(" ", folded).strip().casefold()


def _problem(number: int, label: str) -> str | None:
    """Why label `number` (1-based) cannot be served, or None."""
    shown = f"label {number} ({label!r})"
    if not label:
        return f"label {number} is empty"
    if any(unicodedata.category(c) in _BREAKS for c in label):
        return f"{shown} has a line break or another control character"
    if len(label) > MAX_LABEL_LENGTH:
        return f"label {number} is longer than {MAX_LABEL_LENGTH} characters"
    if "," in label:
        return f"{shown} has a comma: the `classes` allow-list splits on commas"
    key = normalise(label)
    if key.isdigit():
        return f"{shown} is all digits: the `classes` allow-list reads digits as a class id"
    if key == UNKNOWN:
        return f"{shown} is reserved: an answer's decision says {UNKNOWN!r} when no class is chosen"
    return None


def check(labels: Sequence[str]) -> tuple[str, ...]:
    """The labels, each trimmed of surrounding spaces, if they can be served; else a LabelError naming the first
    rule broken (module docstring)."""
    if isinstance(labels, str) or not all(isinstance(label, str) for label in labels):
        raise LabelError("labels must be a list of strings")
    if len(labels) < 2:
        raise LabelError(f"a classifier needs 2 labels at least, got {len(labels)}")
    if len(labels) > MAX_CLASSES:
        raise LabelError(f"{len(labels)} labels is more than the {MAX_CLASSES} classes an archive may have")
    trimmed = tuple(label.strip() for label in labels)
    seen: dict[str, int] = {}
    for number, label in enumerate(trimmed, start=1):
        if (problem := _problem(number, label)) is not None:
            raise LabelError(problem)
        key = normalise(label)
        if key in seen:
            first = seen[key]
            raise LabelError(
                f"labels {first} ({trimmed[first - 1]!r}) and {number} ({label!r}) are the same label once "
                f"normalised ({key!r}: case, underscores and spaces do not count)"
            )
        seen[key] = number
    return trimmed


def read(path: Path) -> tuple[str, ...]:
    """The checked labels of a file: a JSON list of strings, or one label per line (blank lines at the end
    ignored). Raises LabelError, naming the file, when it cannot be read or its labels cannot be served."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise LabelError(f"labels file {path}: cannot be read ({reason})") from None
    labels: Sequence[str]
    if text.lstrip()[:1] in ("[", "{"):  # JSON: a list
        try:
            labels = json.loads(text)
        except ValueError as exc:
            raise LabelError(f"labels file {path}: not a valid JSON list ({exc})") from None
        if not isinstance(labels, list):
            raise LabelError(f"labels file {path}: not a valid JSON list")
    else:
        labels = text.rstrip("\r\n\t ").splitlines() if text.strip() else []
    try:
        return check(labels)
    except LabelError as exc:
        raise LabelError(f"labels file {path}: {exc}") from None
