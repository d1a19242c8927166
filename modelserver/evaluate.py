"""`python -m modelserver evaluate DIR|--list FILE`: top-1 and top-k accuracy of a built archive on labelled images.

DIR is in ImageFolder layout: one folder per class, holding that class's images. FILE lists images, one
`path<TAB>label` per line (a path relative to the list's folder, or absolute; blank lines ignored), as
`modelserver train-head` writes its held-apart split. A class is named by its label, matched as contract/labels.py
normalises labels (case, `_` for spaces and runs of spaces do not matter). For an ImageNet archive it may also be
named by its WordNet id (`n01440764`, as in ImageNet's validation set sorted into class folders, or
ImageNetV2), from `imagenet_classes.tsv` (class index, WordNet id, label); an archive of its own classes (built
with `--labels`) is matched by its labels only. k is min(5, N - 1) for the model's N classes (the top N are all
of them): 5 for ImageNet; the report says which in `top_k`, and keeps the field names `top5`.

In process (default): the archive's own engine (its model-config.yaml, or `--engine`), chosen and gated on
this CPU as a worker would (`auto` included, handlers/engine_start.py), and the handler's decoding and
preprocessing, batches of 8, images decoded concurrently. Through a running gateway
(`--gateway-url`, `--api-key`): every image goes through the real service with the batch client `imgcls`
(retries included); the classes are the served model's (/v1/models). A progress bar goes to stderr; the JSON
report to stdout or `--output`. An image that cannot be classified counts as a miss and is listed under `errors`.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from contract.labels import normalise
from handlers.engine_choice import POLICIES
from handlers.engine_start import Started
from handlers.gate import overlap_k
from modelserver.features import PLAIN, engine_for, prepared_batches
from modelserver.image_folder import class_folders, images_in
from modelserver.mar import UnreadableArchive, archive_info, archive_labels, unpack

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.tsv")
WNID = re.compile(r"^n\d{8}$")


class EvaluationError(Exception):
    """The folder cannot be evaluated as it is; the message says why."""


@dataclass(frozen=True)
class Labelled:
    path: Path
    class_id: int


def classes() -> list[tuple[str, str]]:
    """(WordNet id, label) for ImageNet's 1000 classes, in class-index order."""
    rows = [line.split("\t") for line in CLASSES_FILE.read_text().splitlines() if not line.startswith("#")]
    return [(wnid, label) for wnid, label in rows]


@dataclass(frozen=True)
class ClassIndex:
    """The model's classes as evaluate names them: a class folder's or a list's label → class id, and each class's
    key in the report (its WordNet id for ImageNet, its label otherwise) and label."""

    names: list[tuple[str, str]]  # (report key, label) by class id
    ids: dict[str, int]  # WordNet id or normalised label → class id
    imagenet: bool

    def __len__(self) -> int:
        return len(self.names)

    def of(self, name: str) -> int | None:
        return self.ids.get(name if WNID.match(name) else normalise(name))

    def described(self) -> str:
        return (
            "ImageNet class (a WordNet id like n01440764 or a label like 'golden retriever')"
            if self.imagenet
            else (
                f"class of the model (its labels: {', '.join(label for _, label in self.names[:5])}"
                f"{', ...' if len(self.names) > 5 else ''})"
            )
        )


def class_index(labels: Sequence[str] | None = None) -> ClassIndex:
    """The index of a model's `labels` (by class id); ImageNet's (WordNet ids too) for None or ImageNet's labels."""
    table = classes()
    if labels is None or [normalise(label) for label in labels] == [normalise(label) for _, label in table]:
        by_label = {normalise(label): i for i, (_, label) in enumerate(table)}
        return ClassIndex(table, {wnid: i for i, (wnid, _) in enumerate(table)} | by_label, imagenet=True)
    by_label = {normalise(label): i for i, label in enumerate(labels)}
    return ClassIndex([(label, label) for label in labels], by_label, imagenet=False)


def labelled_images(folder: Path, index: ClassIndex | None = None) -> list[Labelled]:
    """The images of an ImageFolder, each with the class id its folder names (ImageNet's classes by default)."""
    index = index or class_index()
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder")
    found = {d: index.of(d.name) for d in class_folders(folder)}
    unknown = [d.name for d, class_id in found.items() if class_id is None]
    if unknown:
        raise EvaluationError(f"{len(unknown)} class folder(s) name no {index.described()}: {', '.join(unknown[:5])}")
    images = [
        Labelled(path, class_id) for d, class_id in found.items() if class_id is not None for path in images_in(d)
    ]
    if not images:
        raise EvaluationError(f"{folder} holds no images in class folders (ImageFolder layout: DIR/<class>/<image>)")
    return images


def listed_images(listing: Path, index: ClassIndex | None = None) -> list[Labelled]:
    """The images of a list file, one `path<TAB>label` per line (paths relative to the list's folder)."""
    index = index or class_index()
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"cannot read the list {listing}: {exc}") from None
    images, unknown, missing = [], [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        path, tab, label = line.rpartition("\t")
        if not tab or not path:
            raise EvaluationError(f"{listing} line {number} is not `path<TAB>label`: {line[:80]!r}")
        class_id = index.of(label.strip())
        image = listing.parent / path  # an absolute path stays itself
        if class_id is None:
            unknown.append(label.strip())
        elif not image.is_file():
            missing.append(path)
        else:
            images.append(Labelled(image, class_id))
    if unknown:
        names = ", ".join(dict.fromkeys(unknown))
        raise EvaluationError(f"{len(unknown)} line(s) of {listing} name no {index.described()}: {names[:200]}")
    if missing:
        raise EvaluationError(f"{len(missing)} image(s) of {listing} do not exist: {', '.join(missing[:5])}")
    if not images:
        raise EvaluationError(f"{listing} lists no images")
    return images


# What a prediction source yields per image: its top-k class ids, or an error text.
Outcome = list[int] | str


def in_process(
    mar: Path,
    images: list[Labelled],
    settings: dict[str, Any],
    untrained: bool,
    progress: bool,
    served: list[Started],
    top_k: int,
) -> Iterator[Outcome]:
    """The archive's engine, as a worker on this CPU would choose it (appended to `served`), with the handler's
    decoding and preprocessing."""
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        chosen = engine_for(unpack(mar, Path(tmp)), settings, untrained)
        served.append(chosen)
        for batch in prepared_batches([i.path for i in images], settings, PLAIN, progress):
            good = [t for t in batch if isinstance(t, np.ndarray)]
            tops = iter(
                np.argsort(-chosen.engine.run(np.concatenate(good)), axis=1)[:, :top_k].tolist() if good else []
            )
            yield from (next(tops) if isinstance(t, np.ndarray) else t for t in batch)


def via_gateway(url: str, api_key: str, images: list[Labelled], progress: bool, top_k: int) -> Iterator[Outcome]:
    """Every image through the running service, sent by the batch client `imgcls` (its retries included)."""
    from client.pipeline import Options, run
    from client.tasks import Classify

    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        out = Path(tmp) / "answers.jsonl"
        paths = [str(i.path) for i in images]
        summary = run(Options(paths, url, api_key, task=Classify(top_k=top_k), output=str(out), progress=progress))
        if summary.fatal:
            raise EvaluationError(f"the gateway refused: {summary.fatal}")
        answers = {}
        for line in out.read_text().splitlines():
            record = json.loads(line)
            answers[record["path"]] = (
                [p["class_id"] for p in record["predictions"]]
                if record["status"] == "ok"
                else f"{record['error'].get('status')} {record['error'].get('detail')}"
            )
    yield from (answers.get(str(i.path), "no answer") for i in images)


def served_model(url: str, api_key: str) -> dict[str, Any] | None:
    """The gateway's model (None when it does not say); asked first, so an unreachable gateway fails at once."""
    try:
        models = httpx.get(f"{url}/v1/models", headers={"X-API-Key": api_key}, timeout=30)
    except httpx.HTTPError as exc:
        raise EvaluationError(f"cannot reach the gateway at {url}: {exc}") from exc
    return models.json()["models"][0] if models.status_code == 200 else None


def report(
    images: list[Labelled], outcomes: list[Outcome], seconds: float, index: ClassIndex, top_k: int
) -> dict[str, Any]:
    """Top-1 and top-k accuracy, overall and per class (`top5` is top-k: k is `top_k`)."""
    hits1 = [isinstance(o, list) and o[:1] == [i.class_id] for i, o in zip(images, outcomes, strict=True)]
    hits5 = [isinstance(o, list) and i.class_id in o[:top_k] for i, o in zip(images, outcomes, strict=True)]
    per_class: dict[str, dict[str, Any]] = {}
    counts = Counter(i.class_id for i in images)
    for cid in sorted(counts):
        top1 = sum(h for h, i in zip(hits1, images, strict=True) if i.class_id == cid)
        top5 = sum(h for h, i in zip(hits5, images, strict=True) if i.class_id == cid)
        key, label = index.names[cid]
        per_class[key] = {
            "label": label,
            "images": counts[cid],
            "top1": round(top1 / counts[cid], 4),
            "top5": round(top5 / counts[cid], 4),
        }
    return {
        "images": len(images),
        "classes": len(counts),
        "top_k": top_k,  # the k of `top5`: min(5, N - 1) for the model's N classes
        "top1": round(sum(hits1) / len(images), 4),
        "top5": round(sum(hits5) / len(images), 4),
        "errors": {str(i.path): o for i, o in zip(images, outcomes, strict=True) if isinstance(o, str)},
        "seconds": round(seconds, 2),  # wall time, loading the model included
        "per_class": per_class,
    }


def evaluate(
    folder: Path | None,
    mar: Path | None = None,
    engine: str | None = None,
    gateway_url: str | None = None,
    api_key: str | None = None,
    progress: bool = True,
    listing: Path | None = None,
) -> dict[str, Any]:
    """Accuracy of the archive `mar` (in process) or of the service at `gateway_url` on the images of `folder`
    (ImageFolder) or of `listing` (a list file), named by the model's labels."""
    if (folder is None) == (listing is None):
        raise EvaluationError("evaluate a folder or a --list, one of them")
    model = None
    if gateway_url:
        if not api_key:
            raise EvaluationError("--gateway-url needs --api-key (or API_KEY in the environment)")
        model = served_model(gateway_url, api_key)
        labels = model.get("label_names") if model else None
    else:
        try:
            labels = archive_labels(mar) if mar is not None and mar.is_file() else None
        except UnreadableArchive as exc:
            raise EvaluationError(str(exc)) from None
    index = class_index(labels)
    top_k = overlap_k(len(index))
    images = listed_images(listing, index) if listing is not None else labelled_images(folder or Path(), index)
    started = time.perf_counter()
    if gateway_url and api_key:
        source = {"mode": "gateway", "gateway_url": gateway_url, "model": model}
        outcomes = list(via_gateway(gateway_url, api_key, images, progress, top_k))
    else:
        if mar is None or not mar.is_file():
            raise EvaluationError(f"archive {mar} does not exist; build it with `python -m modelserver build`")
        meta, settings = archive_info(mar)
        if engine:  # an engine named here is not bounded by the archive's precision policy
            settings["engine"], settings["precision"] = engine, POLICIES[-1]
        served: list[Started] = []
        outcomes = list(in_process(mar, images, settings, meta["untrained"], progress, served, top_k))
        model = {
            "weights": meta["weights"],
            "untrained": meta["untrained"],
            "labels_source": meta.get("labels_source"),
            "engine": served[0].engine.name,
            "precision": served[0].precision,
            "engine_choice": served[0].record,
            "int8_gate": meta.get("int8_gate") if served[0].precision == "int8" else None,
        }
        source = {"mode": "in-process", "archive": str(mar), "model": model}
    given = {"list": str(listing)} if listing is not None else {"folder": str(folder)}
    return {**source, **given, **report(images, outcomes, time.perf_counter() - started, index, top_k)}
