"""`python -m modelserver evaluate DIR`: top-1 and top-5 accuracy of a built archive on labelled images.

DIR is in ImageFolder layout: one folder per class, named by its WordNet id (`n01440764`, as in ImageNet's
validation set sorted into class folders, or ImageNetV2) or by its label (`tench`, `golden retriever`;
case and `_` for spaces do not matter), holding that class's images. Classes come from
`imagenet_classes.tsv` (class index, WordNet id, label).

In process (default): the archive's own engine (its model-config.yaml, or `--engine`) and the handler's
decoding and preprocessing, batches of 8, images decoded concurrently. Through a running gateway
(`--gateway-url`, `--api-key`): every image goes through the real service with the batch client `imgcls`
(retries included). A progress bar goes to stderr; the JSON report to stdout or `--output`. An image that
cannot be classified counts as a miss and is listed under `errors`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from contract.formats import IMAGE_SUFFIXES
from handlers.engines import load_engine
from handlers.imaging import ImageError, decode, preprocess
from modelserver.mar import archive_info, unpack

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.tsv")
WNID = re.compile(r"^n\d{8}$")
TOP_K = 5
BATCH = 8


class EvaluationError(Exception):
    """The folder cannot be evaluated as it is; the message says why."""


@dataclass(frozen=True)
class Labelled:
    path: Path
    class_id: int


def classes() -> list[tuple[str, str]]:
    """(WordNet id, label) for the 1000 classes, in class-index order."""
    rows = [line.split("\t") for line in CLASSES_FILE.read_text().splitlines() if not line.startswith("#")]
    return [(wnid, label) for wnid, label in rows]


def label_key(name: str) -> str:
    """A label or a class folder's name as they are matched: underscores as spaces, trimmed, case-folded."""
    return name.replace("_", " ").strip().casefold()


def class_index() -> dict[str, int]:
    """Folder name → class index, by WordNet id or by normalised label."""
    index: dict[str, int] = {}
    for i, (wnid, label) in enumerate(classes()):
        index[wnid] = i
        index[label_key(label)] = i
    return index


def labelled_images(folder: Path) -> list[Labelled]:
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder")
    index = class_index()
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [d.name for d in class_dirs if (d.name if WNID.match(d.name) else label_key(d.name)) not in index]
    if unknown:
        raise EvaluationError(
            f"{len(unknown)} class folder(s) name no ImageNet class (a WordNet id like n01440764 "
            f"or a label like 'golden retriever'): {', '.join(unknown[:5])}"
        )
    images = [
        Labelled(path, index[d.name if WNID.match(d.name) else label_key(d.name)])
        for d in class_dirs
        for path in sorted(d.rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not images:
        raise EvaluationError(f"{folder} holds no images in class folders (ImageFolder layout: DIR/<class>/<image>)")
    return images


# What a prediction source yields per image: its top-5 class ids, or an error text.
Outcome = list[int] | str


def in_process(mar: Path, images: list[Labelled], settings: dict[str, Any], progress: bool) -> Iterator[Outcome]:
    """The archive's engine with the handler's decoding and preprocessing."""
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        engine = load_engine(settings["engine"], unpack(mar, Path(tmp)), os.cpu_count() or 1)

        def prepared(item: Labelled) -> np.ndarray | str:
            try:
                data = item.path.read_bytes()
                return preprocess(decode(data, int(settings["max_pixels"]), int(settings["jpeg_draft"])))
            except ImageError as err:
                return f"{err.code}: {err.detail}"

        with (
            ThreadPoolExecutor(max(1, int(settings["decode_threads"]))) as pool,
            tqdm(total=len(images), unit="img", disable=not progress) as bar,
        ):
            for start in range(0, len(images), BATCH):
                batch = list(pool.map(prepared, images[start : start + BATCH]))
                good = [t for t in batch if isinstance(t, np.ndarray)]
                tops = iter(np.argsort(-engine.run(np.stack(good)), axis=1)[:, :TOP_K].tolist() if good else [])
                yield from (next(tops) if isinstance(t, np.ndarray) else t for t in batch)
                bar.update(len(batch))


def via_gateway(url: str, api_key: str, images: list[Labelled], progress: bool) -> Iterator[Outcome]:
    """Every image through the running service, sent by the batch client `imgcls` (its retries included)."""
    from client.pipeline import Options, run
    from client.tasks import Classify

    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        out = Path(tmp) / "answers.jsonl"
        paths = [str(i.path) for i in images]
        summary = run(Options(paths, url, api_key, task=Classify(top_k=TOP_K), output=str(out), progress=progress))
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


def report(images: list[Labelled], outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    hits1 = [isinstance(o, list) and o[:1] == [i.class_id] for i, o in zip(images, outcomes, strict=True)]
    hits5 = [isinstance(o, list) and i.class_id in o for i, o in zip(images, outcomes, strict=True)]
    names = classes()
    per_class: dict[str, dict[str, Any]] = {}
    counts = Counter(i.class_id for i in images)
    for cid in sorted(counts):
        top1 = sum(h for h, i in zip(hits1, images, strict=True) if i.class_id == cid)
        top5 = sum(h for h, i in zip(hits5, images, strict=True) if i.class_id == cid)
        per_class[names[cid][0]] = {
            "label": names[cid][1],
            "images": counts[cid],
            "top1": round(top1 / counts[cid], 4),
            "top5": round(top5 / counts[cid], 4),
        }
    return {
        "images": len(images),
        "classes": len(counts),
        "top1": round(sum(hits1) / len(images), 4),
        "top5": round(sum(hits5) / len(images), 4),
        "errors": {str(i.path): o for i, o in zip(images, outcomes, strict=True) if isinstance(o, str)},
        "seconds": round(seconds, 2),  # wall time, loading the model included
        "per_class": per_class,
    }


def evaluate(
    folder: Path,
    mar: Path | None = None,
    engine: str | None = None,
    gateway_url: str | None = None,
    api_key: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of the archive `mar` (in process) or of the service at `gateway_url` on `folder`."""
    images = labelled_images(folder)
    started = time.perf_counter()
    if gateway_url:
        if not api_key:
            raise EvaluationError("--gateway-url needs --api-key (or API_KEY in the environment)")
        source = {"mode": "gateway", "gateway_url": gateway_url, "model": served_model(gateway_url, api_key)}
        outcomes = list(via_gateway(gateway_url, api_key, images, progress))
    else:
        if mar is None or not mar.is_file():
            raise EvaluationError(f"archive {mar} does not exist; build it with `python -m modelserver build`")
        meta, settings = archive_info(mar)
        settings["engine"] = engine or settings["engine"]
        outcomes = list(in_process(mar, images, settings, progress))
        model = {
            "weights": meta["weights"],
            "untrained": meta["untrained"],
            "engine": settings["engine"],
            "int8_gate": meta.get("int8_gate"),
        }
        source = {"mode": "in-process", "archive": str(mar), "model": model}
    return {**source, "folder": str(folder), **report(images, outcomes, time.perf_counter() - started)}
