"""`python -m modelserver train-head DIR`: a new final layer for a built archive's backbone, fitted on a folder of
labelled photos (DIR/<label>/<image>), and the archive that serves it.

1. The folder: one class per sub-folder, its name the label (contract/labels.py's rules; refused with one line
   when one is broken), its image files (modelserver/image_folder.py) the class's photos; every class needs
   Holdout.min_images() of them (modelserver/holdout.py says why).
2. Features: every photo's pooled 2048-d vector from the base archive's backbone, through the handler's decode
   and preprocessing (modelserver/features.py), on the engine a worker on this CPU would serve for the base
   archive under FEATURE_POLICY. A photo that cannot be decoded is listed; more than MAX_UNREADABLE of them is
   fatal.
3. Held apart first: per class, seeded (modelserver/holdout.py); used once, for the report.
4. The fit on the rest (modelserver/head_fit.py), folded into ResNet50's fc.
5. The report on the held-apart photos (modelserver/head_report.py), next to the output: <stem>-report.json,
   <stem>-confusion.png, <stem>-held-apart.tsv (the list `evaluate --list` reads).
6. The archive: the base's backbone with the new fc and the folder's labels, built by modelserver/archive.py with
   the base archive's serving settings (engine, precision policy, workers, batch size...).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from contract.labels import LabelError, check
from handlers.engine_choice import AUTO
from handlers.engines import STATE_DICT_FILE
from modelserver import head_report
from modelserver.features import AUGMENTED, PLAIN, engine_for, pooled
from modelserver.head_fit import Head, fit, logits
from modelserver.holdout import CV_FOLDS, DEFAULT_HOLDOUT, Holdout, HoldoutError, Photo, check_counts, split
from modelserver.image_folder import class_folders, images_in
from modelserver.mar import UnreadableArchive, archive_info, unpack

if TYPE_CHECKING:  # torch and the archive builder are imported when the head is fitted
    from modelserver.archive import ServingConfig
    from modelserver.weights import Weights

# The precision policy of the engine that computes the features (handlers/engine_choice.py): `int8` lets the
# base archive's INT8 model serve where this CPU's gate passes it; measured in docs/model.md ("Your own
# categories") not to lower the held-apart accuracy against fp32 features.
FEATURE_POLICY = "int8"
MAX_UNREADABLE = 0.10  # the share of the folder's photos that may be undecodable (listed, then left out)


class TrainHeadError(Exception):
    """The folder, the base archive or the output cannot be used as they are; the message says why."""


@dataclass(frozen=True)
class Options:
    folder: Path
    base: Path
    output: Path
    seed: int = 0
    holdout: Holdout = Holdout.parse(DEFAULT_HOLDOUT)
    augment: bool = False
    gate_images: str = "bundled"  # or "own": the held-apart photos become the archive's gate set
    force: bool = False
    progress: bool = True  # the features' progress bar on stderr


@dataclass(frozen=True)
class Result:
    output: Path
    report: dict[str, Any]
    text: str


def report_paths(output: Path) -> dict[str, Path]:
    """The report's files, next to the archive and named after it."""
    stem = output.with_suffix("")
    return {
        "report": Path(f"{stem}-report.json"),
        "confusion": Path(f"{stem}-confusion.png"),
        "held_apart": Path(f"{stem}-held-apart.tsv"),
    }


def read_folder(folder: Path, holdout: Holdout) -> tuple[tuple[str, ...], list[Photo]]:
    """The folder's labels (its sub-folders' names, sorted, checked) and photos; refusals as TrainHeadError."""
    if not folder.is_dir():
        raise TrainHeadError(f"{folder} is not a folder (train-head reads DIR/<label>/<image>)")
    classes = class_folders(folder)
    try:
        labels = check([d.name for d in classes])
    except LabelError as exc:
        raise TrainHeadError(f"{folder}'s class folders cannot be labels: {exc}") from None
    photos = [Photo(path, label) for d, label in zip(classes, labels, strict=True) for path in images_in(d)]
    try:
        check_counts(photos, holdout)
    except HoldoutError as exc:
        raise TrainHeadError(str(exc)) from None
    return labels, photos


def check_unreadable(unreadable: dict[Path, str], total: int) -> list[str]:
    """The unreadable photos, one line each; a TrainHeadError when they are more than MAX_UNREADABLE."""
    lines = [f"{path}: {why}" for path, why in sorted(unreadable.items())]
    if len(unreadable) > MAX_UNREADABLE * total:
        shown = "; ".join(lines[:5]) + ("; ..." if len(lines) > 5 else "")
        raise TrainHeadError(
            f"{len(unreadable)} of {total} photos cannot be decoded (more than {MAX_UNREADABLE:.0%}): {shown}"
        )
    return lines


def serving_config(model_dir: Path) -> ServingConfig:
    """The unpacked base archive's serving settings (its model-config.yaml), for the new archive."""
    from modelserver.archive import ServingConfig

    return ServingConfig.from_yaml(yaml.safe_load((model_dir / "model-config.yaml").read_text()))


def head_weights(model_dir: Path, head: Head, labels: tuple[str, ...], meta: dict[str, Any], folder: Path) -> Weights:
    """The base archive's backbone with the fitted final layer, as modelserver/weights.py's Weights."""
    import torch
    from torchvision.models import resnet50

    from modelserver.weights import Weights

    state = torch.load(model_dir / STATE_DICT_FILE, map_location="cpu", weights_only=True)
    state["fc.weight"], state["fc.bias"] = torch.from_numpy(head.weight), torch.from_numpy(head.bias)
    model = resnet50(weights=None, num_classes=len(labels))
    model.load_state_dict(state, strict=True)
    return Weights(
        model=model.eval(),
        name=f"{meta['weights']}+head:{folder.name}",
        source_sha256=None,
        untrained=bool(meta["untrained"]),
        reference_acc1=None,
        labels=labels,
        labels_source=f"train-head:{folder.name}",
    )


def train(options: Options) -> Result:
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 2)
        return now

    if options.output.exists() and not options.force:
        raise TrainHeadError(f"{options.output} exists; pass --force to replace it, or choose --output PATH")
    if not options.base.is_file():
        raise TrainHeadError(f"base archive {options.base} does not exist; build it with `make mar`")
    try:
        meta, settings = archive_info(options.base)
    except UnreadableArchive as exc:
        raise TrainHeadError(str(exc)) from None
    labels, photos = read_folder(options.folder, options.holdout)
    with tempfile.TemporaryDirectory(prefix="train-head-") as tmp:
        model_dir = unpack(options.base, Path(tmp))
        feature_settings = {**settings, "engine": AUTO, "precision": FEATURE_POLICY}
        engine = engine_for(model_dir, feature_settings, bool(meta["untrained"]))
        now = lap("engine_start_s", started)
        views = AUGMENTED if options.augment else PLAIN
        features = pooled(engine, settings, [p.path for p in photos], views, options.progress)
        now = lap("features_s", now)
        unreadable = check_unreadable(features.unreadable, len(photos))
        vectors = dict(zip(features.paths, features.vectors, strict=True))
        readable = [p for p in photos if p.path in vectors]
        try:
            training, held = split(readable, options.holdout, options.seed)
        except HoldoutError as exc:
            raise TrainHeadError(f"after leaving out the unreadable photos: {exc}") from None
        index = {label: i for i, label in enumerate(labels)}
        x = np.concatenate([vectors[p.path] for p in training])  # every view of every training photo
        y = np.repeat([index[p.label] for p in training], len(views))
        groups = np.repeat(np.arange(len(training)), len(views))
        head, _ = fit(x, y, groups, options.seed)
        now = lap("fit_s", now)
        truth = np.array([index[p.label] for p in held])
        predicted = logits(head.weight, head.bias, np.stack([vectors[p.path][0] for p in held])).argmax(axis=1)
        matrix = head_report.confusion(labels, truth, predicted)
        weights = head_weights(model_dir, head, labels, meta, options.folder)
        build_archive(weights, serving_config(model_dir), options, held)
        lap("archive_s", now)
    paths = report_paths(options.output)
    head_report.held_apart_list(held, paths["held_apart"])
    head_report.confusion_png(labels, matrix, paths["confusion"])
    timings["total_s"] = round(time.perf_counter() - started, 2)
    report = {
        "folder": str(options.folder),
        "base": str(options.base),
        "output": str(options.output),
        "labels": list(labels),
        "seed": options.seed,
        "feature_engine": {"engine": engine.engine.name, "precision": engine.precision, "choice": engine.record},
        "augment": options.augment,
        "unreadable": unreadable,
        "fit": {
            "training_images": len(training),
            "cv_folds": CV_FOLDS,
            "C": head.c,
            "cv_log_loss": {f"{c:g}": loss for c, loss in head.cv_log_loss.items()},
            "cv_accuracy": head.cv_accuracy,
        },
        "held_apart": {
            "images": len(held),
            "holdout": options.holdout.describe(),
            **head_report.scores(labels, matrix),
            "confusion": matrix.tolist(),
            "list": str(paths["held_apart"]),
        },
        "gate_images": options.gate_images,
        "timings": timings,
    }
    paths["report"].write_text(json.dumps(report, indent=2) + "\n")
    return Result(options.output, report, head_report.summary(report, head_report.confusion_text(labels, matrix)))


def build_archive(weights: Weights, config: ServingConfig, options: Options, held: list[Photo]) -> None:
    """The archive, with the base archive's serving settings. Its INT8 model (for an INT8 or `auto` base) is
    calibrated and gated, and its worker-start gate set drawn, from the bundled generic photos; with
    `--gate-images own`, from the folder's photos (calibration, the build's gate on every 4th) and the
    held-apart ones (the worker-start gate set)."""
    from modelserver.archive import Int8Options, build

    if options.gate_images == "own":
        int8 = Int8Options(calibration=options.folder, gate=tuple(p.path for p in held))
    else:
        int8 = Int8Options()
    build(weights, config, options.output, int8)
