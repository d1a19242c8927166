"""TorchServe handler for the ResNet50 ImageNet classifier.

Lifecycle as in TorchServe's BaseHandler: initialize → preprocess → inference → postprocess, driven by
the module-level `handle`, which TorchServe calls as the entry point. Self-contained: it does
not import TorchServe's stock vision handlers.

Request format (one request = one image; TorchServe batches concurrent requests):
    POST /predictions/resnet50
    body            the encoded image bytes (raw body, or a multipart field `data` or `body`)
    X-Top-K         optional, number of classes to return, 1..max_top_k (default from the config: 5)
    X-Request-ID    optional, the caller's request id, echoed in the response and the worker log

Response per request, always JSON:
    200  {"request_id", "model": {...}, "predictions": [{"class_id", "label", "score"}, ...]}
         scores are softmax probabilities, in descending order
    422  {"request_id", "model": {...}, "error": {"code", "detail"}}
         for a bad item (codes: empty, undecodable, unsupported_format, too_large, bad_top_k);
         the other items of the same batch are unaffected

Management API: `GET /models/resnet50?customized=true` returns the model block plus the label count
and settings as `customizedMetadata` (TorchServe's custom describe; the gateway's /v1/models uses it).

Settings come from the `handler:` block of the archive's model-config.yaml: `engine`
(onnx|onnx-int8|eager), `max_pixels`, `default_top_k`, `max_top_k`, `threads` (default: the cores divided
by the workers), `spinning` (ONNX Runtime's busy-waiting intra-op threads), `decode_threads` (the images
of a batch are decoded and preprocessed concurrently by this many threads; Pillow releases the GIL),
`jpeg_draft` (1: every image decoded in full, exactly as the reference pipeline; 2, 4 or 8: JPEGs may be
decoded at reduced scale, down to 1/n, faster and no longer exact; see handlers/imaging.py).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from handlers.engines import Engine, load_engine
from handlers.imaging import ImageError, decode, preprocess

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "engine": "onnx",
    "max_pixels": 40_000_000,
    "default_top_k": 5,
    "max_top_k": 1000,
    "spinning": True,
    "decode_threads": 2,
    "jpeg_draft": 1,
}


@dataclass
class Batch:
    """The decoded part of a TorchServe batch: tensors for the good items, errors for the bad ones."""

    tensors: list[np.ndarray] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    top_k: list[int] = field(default_factory=list)
    errors: dict[int, ImageError] = field(default_factory=dict)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class ImageClassifierHandler:
    def __init__(self) -> None:
        self.initialized = False
        self.engine: Engine
        self.labels: list[str] = []
        self.model_block: dict[str, Any] = {}
        self.settings: dict[str, Any] = dict(DEFAULTS)
        self.decoders: ThreadPoolExecutor | None = None
        self.int8_gate: dict[str, Any] | None = None

    def initialize(self, context: Any) -> None:
        model_dir = Path(context.system_properties["model_dir"])
        yaml_config = context.model_yaml_config or {}
        self.settings.update(yaml_config.get("handler") or {})
        workers = int(yaml_config.get("minWorkers") or 1)
        threads = int(self.settings.get("threads") or max(1, (os.cpu_count() or 1) // workers))
        metadata = json.loads((model_dir / "metadata.json").read_text())
        labels = json.loads((model_dir / "index_to_name.json").read_text())
        self.labels = [labels[str(i)] for i in range(len(labels))]
        self.engine = load_engine(self.settings["engine"], model_dir, threads, bool(self.settings["spinning"]))
        decode_threads = int(self.settings["decode_threads"])
        self.decoders = ThreadPoolExecutor(decode_threads, "decode") if decode_threads > 1 else None
        self.int8_gate = metadata.get("int8_gate") if self.engine.name == "onnx-int8" else None
        self.model_block = {
            "name": metadata["model_name"],
            "version": metadata["model_version"],
            "weights": metadata["weights"],
            "untrained": metadata["untrained"],
            "engine": self.engine.name,
        }
        if metadata["untrained"]:
            logger.warning("UNTRAINED MODEL: %s weights are random; predictions are meaningless", metadata["weights"])
        logger.info("initialized %s with %d thread(s)", self.model_block, threads)
        self.initialized = True

    def _top_k(self, context: Any, idx: int) -> int:
        raw = context.get_request_header(idx, "X-Top-K")
        if raw is None:
            return int(self.settings["default_top_k"])
        limit = int(self.settings["max_top_k"])
        try:
            k = int(raw)
        except ValueError:
            k = 0
        if not 1 <= k <= limit:
            raise ImageError("bad_top_k", f"X-Top-K must be an integer from 1 to {limit}, got {raw!r}")
        return k

    def _item(self, idx: int, item: dict[str, Any], context: Any) -> tuple[np.ndarray, int] | ImageError:
        payload = item.get("data") or item.get("body") or b""
        try:
            if isinstance(payload, str):
                raise ImageError("undecodable", "the image was sent as text, not as bytes")
            k = self._top_k(context, idx)
            image = decode(bytes(payload), int(self.settings["max_pixels"]), int(self.settings["jpeg_draft"]))
            return preprocess(image), k
        except ImageError as err:
            return err

    def preprocess(self, data: list[dict[str, Any]], context: Any) -> Batch:
        """Decode and preprocess every item, concurrently when the batch has several."""
        indices = range(len(data))
        if self.decoders is not None and len(data) > 1:
            items = list(self.decoders.map(self._item, indices, data, [context] * len(data)))
        else:
            items = [self._item(idx, item, context) for idx, item in zip(indices, data, strict=True)]
        batch = Batch()
        for idx, outcome in enumerate(items):
            if isinstance(outcome, ImageError):
                batch.errors[idx] = outcome
                continue
            batch.tensors.append(outcome[0])
            batch.positions.append(idx)
            batch.top_k.append(outcome[1])
        return batch

    def inference(self, batch: Batch) -> np.ndarray:
        if not batch.tensors:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        return softmax(self.engine.run(np.stack(batch.tensors)))

    def postprocess(self, probabilities: np.ndarray, batch: Batch, context: Any, size: int) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = [{} for _ in range(size)]
        for row, (idx, k) in enumerate(zip(batch.positions, batch.top_k, strict=True)):
            scores = probabilities[row]
            top = np.argsort(-scores, kind="stable")[:k]
            results[idx] = {
                "predictions": [{"class_id": int(c), "label": self.labels[c], "score": float(scores[c])} for c in top]
            }
        for idx, err in batch.errors.items():
            results[idx] = {"error": {"code": err.code, "detail": err.detail}}
            context.set_response_status(422, "Unprocessable image", idx)
        for idx, result in enumerate(results):
            result["request_id"] = context.get_request_header(idx, "X-Request-ID")
            result["model"] = self.model_block
        return results

    def describe(self) -> dict[str, Any]:
        return {**self.model_block, "labels": len(self.labels), "label_names": self.labels,
                "int8_gate": self.int8_gate,
                "max_pixels": self.settings["max_pixels"],
                "default_top_k": self.settings["default_top_k"], "max_top_k": self.settings["max_top_k"]}  # fmt: skip

    def handle(self, data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
        if data is None:
            return None
        if context.get_request_header(0, "describe") == "True":
            return [json.dumps(self.describe())]
        batch = self.preprocess(data, context)
        probabilities = self.inference(batch)
        results = self.postprocess(probabilities, batch, context, len(data))
        logger.info("batch of %d: %d classified, %d rejected", len(data), len(batch.positions), len(batch.errors))
        for idx, err in batch.errors.items():
            logger.info("request %s rejected: %s", results[idx]["request_id"], err)
        return results


_service = ImageClassifierHandler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, Any]] | None:
    """TorchServe's entry point: initialise once, then classify each batch."""
    if not _service.initialized:
        _service.initialize(context)
    return _service.handle(data, context)
