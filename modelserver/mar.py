"""A built archive: its metadata.json and handler settings read in place, or the whole archive unpacked."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import yaml

from handlers.engines import LABELS_FILE
from handlers.image_handler import DEFAULTS as HANDLER_DEFAULTS


class UnreadableArchive(Exception):
    """The file is not an archive this project built (not a zip, or without its metadata or config)."""


def archive_info(mar: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The archive's metadata.json and its handler settings (model-config.yaml over the handler's defaults)."""
    try:
        with zipfile.ZipFile(mar) as archive:
            config = yaml.safe_load(archive.read("model-config.yaml")) or {}
            return json.loads(archive.read("metadata.json")), {**HANDLER_DEFAULTS, **(config.get("handler") or {})}
    except (zipfile.BadZipFile, KeyError, ValueError, yaml.YAMLError) as exc:
        raise UnreadableArchive(f"{mar} is not a readable model archive ({exc})") from exc


def archive_labels(mar: Path) -> list[str]:
    """The archive's labels, by class id (its LABELS_FILE)."""
    try:
        with zipfile.ZipFile(mar) as archive:
            labels = json.loads(archive.read(LABELS_FILE))
        return [labels[str(i)] for i in range(len(labels))]
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise UnreadableArchive(f"{mar} is not a readable model archive ({exc})") from exc


def unpack(mar: Path, target: Path) -> Path:
    """The archive extracted into `target` (as TorchServe unpacks it for a worker); returns `target`."""
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(target)
    return target
