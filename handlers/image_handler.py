"""TorchServe handler for the ResNet50 classifier: ImageNet's 1000 classes, or the N classes of an archive built
with its own labels (the archive's index_to_name.json says which; nothing here assumes 1000).

Lifecycle as in TorchServe's BaseHandler: initialize → preprocess → inference → postprocess, driven by
the module-level `handle`, which TorchServe calls as the entry point. Self-contained: it does
not import TorchServe's stock vision handlers.

Request format (one request = one image; TorchServe batches concurrent requests):
    POST /predictions/resnet50
    body            the encoded image bytes (raw body, or a multipart field `data` or `body`)
    X-Top-K         optional, number of classes to return, 1..max_top_k (default from the config: 5; both
                    clamped to the archive's N classes)
    X-Request-ID    optional, the caller's request id, echoed in the response and the worker log
    X-Output        optional, comma-separated extras: `embedding` and/or `cam` (see below)
    X-Explain-Classes  optional, comma-separated class ids to map besides the top-k (with `cam`)

    POST /explanations/resnet50 (TorchServe's explanations API) answers like X-Output: cam: TorchServe
    marks those requests with the header `explain: True`, which `_extras` turns into `cam` (the stock
    `explain_handle` hook is not used).

Response per request, always JSON (contract/wire.py's ItemAnswer):
    200  {"request_id", "model": {...}, "predictions": [{"class_id", "label", "score"}, ...]}
         scores are softmax probabilities, in descending order
         with `embedding`: "embedding", the L2-normalised pooled 2048-d vector, float32 little-endian, base64
         with `cam`: "explanations" [{"class_id", "label", "score", "cam": 7x7 list}] for the top-k (and the
         X-Explain-Classes), and "geometry" {"width", "height", "crop": [left, top, right, bottom]}: the
         upright image's size and the model's input crop in its pixels (handlers/maps.py)
    422  {"request_id", "model": {...}, "error": {"code", "detail"}}
         for a bad item (codes: empty, undecodable, unsupported_format, too_large, bad_top_k, bad_output,
         unsupported_output: this engine or archive does not give the output asked for);
         the other items of the same batch are unaffected

Management API: `GET /models/resnet50?customized=true` returns the model block plus the label count, the
labels and where they came from, and settings as `customizedMetadata` (TorchServe's custom describe,
contract.ModelDescription; the gateway's /v1/models uses it).

Settings come from the `handler:` block of the archive's model-config.yaml: `engine`
(onnx|onnx-int8|openvino-fp32|openvino-bf16|openvino-int8|eager, or auto), `precision` (the precision policy:
exact|near-fp32|int8, overridden by the environment's ENGINE_PRECISION; the engine actually served is chosen
and gated on this worker's CPU by handlers/engine_start.py), `pinning` (OpenVINO's thread pinning),
`max_pixels`, `default_top_k`, `max_top_k`, `threads` (default: the cores divided by the workers), `spinning`
(ONNX Runtime's busy-waiting intra-op threads), `decode_threads` (the images
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
from typing import Any, Protocol

import numpy as np

from contract.bounds import MAX_PIXELS
from contract.labels import MAX_CLASSES
from contract.wire import (
    CAM,
    EMBEDDING,
    EXPLAIN_CLASSES_HEADER,
    OUTPUT_HEADER,
    REQUEST_ID_HEADER,
    TOP_K_HEADER,
    ClassMap,
    ClassScore,
    Geometry,
    ItemAnswer,
    ModelDescription,
    ServedModel,
)
from handlers.cpu_features import this_cpu_flags
from handlers.engine_choice import POLICIES
from handlers.engine_start import Started, count_refusals, log_start, start
from handlers.engines import FC_WEIGHT_FILE, LABELS_FILE, Engine, Floats, softmax
from handlers.imaging import ImageError, decode, preprocess
from handlers.maps import class_maps, crop_in_original, encode_vector, l2_normalised
from handlers.timing import INFERENCE, PREPROCESS, Timings

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "engine": "onnx",
    "precision": POLICIES[-1],  # no bound beyond the engine named (an archive from before the policy)
    "pinning": False,
    "max_pixels": MAX_PIXELS,
    "default_top_k": 5,  # both clamped to the archive's classes
    "max_top_k": MAX_CLASSES,
    "spinning": True,
    "decode_threads": 2,
    "jpeg_draft": 1,
}


EXTRAS = {EMBEDDING: "pooled", CAM: "features"}  # what a request may ask for → the graph output it needs
# INT8's layer4 map is too coarse for class activation maps: against fp32 on the test model's 12 photos the
# maps' correlation was 0.25-0.94 and the peak cell moved in 9 of 12, while its pooled vector stayed within
# cosine 0.98 of fp32's (measured 0.985-0.989). So INT8 gives embeddings and refuses maps. bf16 serves maps
# only where its worker-start map check passes (handlers/engine_start.py).
INT8_MAPS = (
    "the INT8 engine's layer4 map is too coarse for class activation maps; "
    "serve the fp32 engine (onnx) for explanations"
)
WITHHELD = {"onnx-int8": {CAM: INT8_MAPS}, "openvino-int8": {CAM: INT8_MAPS}}
Request = dict[str, Any]  # one item of TorchServe's batch: the image under "data" or "body", as TorchServe read it


class Context(Protocol):
    """What the handler uses of TorchServe's ts.context.Context (TorchServe ships no types)."""

    system_properties: dict[str, Any]
    model_yaml_config: dict[str, Any] | None

    def get_request_header(self, idx: int, key: str) -> str | None: ...

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None: ...


@dataclass(frozen=True)
class Item:
    """One good item: its input tensor and what its request asked for."""

    tensor: Floats
    top_k: int
    extras: frozenset[str] = frozenset()
    explain_classes: tuple[int, ...] = ()
    size: tuple[int, int] = (0, 0)  # the upright image's (width, height), for the map's geometry


@dataclass
class Batch:
    """The decoded part of a TorchServe batch: tensors for the good items, errors for the bad ones."""

    items: list[Item] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    errors: dict[int, ImageError] = field(default_factory=dict)


@dataclass
class Outputs:
    """The engine's answer for a batch: probabilities, plus the graph outputs the batch's requests need."""

    probabilities: Floats
    extra: dict[str, Floats] = field(default_factory=dict)


class ImageClassifierHandler:
    def __init__(self) -> None:
        self.initialized = False
        self.engine: Engine
        self.labels: list[str] = []  # by class id: the archive's N classes
        self.labels_source: str | None = None
        self.model_block: ServedModel
        self.settings: dict[str, Any] = dict(DEFAULTS)  # the archive's handler block over DEFAULTS
        self.decoders: ThreadPoolExecutor | None = None
        self.int8_gate: dict[str, Any] | None = None
        self.started: Started
        self.withheld: dict[str, str] = {}  # extra → why this worker's engine does not serve it
        self.fc_weight: Floats | None = None
        self.timings = Timings(None)

    def initialize(self, context: Context) -> None:
        model_dir = Path(context.system_properties["model_dir"])
        yaml_config = context.model_yaml_config or {}
        self.settings.update(yaml_config.get("handler") or {})
        self.timings = Timings(context)
        workers = int(yaml_config.get("minWorkers") or 1)
        threads = int(self.settings.get("threads") or max(1, (os.cpu_count() or 1) // workers))
        metadata = json.loads((model_dir / "metadata.json").read_text())
        labels = json.loads((model_dir / LABELS_FILE).read_text())
        self.labels = [labels[str(i)] for i in range(len(labels))]
        self.labels_source = metadata.get("labels_source")  # absent from archives built before custom labels
        for setting in ("default_top_k", "max_top_k"):  # an archive of N classes answers at most N
            self.settings[setting] = min(int(self.settings[setting]), len(self.labels))
        self.started = start(
            model_dir, self.settings, bool(metadata["untrained"]), threads, os.environ, this_cpu_flags()
        )
        self.engine = self.started.engine
        self.withheld = dict(WITHHELD.get(self.engine.name, {}))
        if self.started.maps_withheld:
            self.withheld[CAM] = self.started.maps_withheld
        decode_threads = int(self.settings["decode_threads"])
        self.decoders = ThreadPoolExecutor(decode_threads, "decode") if decode_threads > 1 else None
        self.int8_gate = metadata.get("int8_gate") if self.started.precision == "int8" else None
        if (model_dir / FC_WEIGHT_FILE).exists():
            self.fc_weight = np.load(model_dir / FC_WEIGHT_FILE)
        self.model_block = {
            "name": metadata["model_name"],
            "version": metadata["model_version"],
            "weights": metadata["weights"],
            "untrained": metadata["untrained"],
            "engine": self.engine.name,
        }
        if metadata["untrained"]:
            logger.warning("UNTRAINED MODEL: %s weights are random; predictions are meaningless", metadata["weights"])
        log_start(self.started)
        count_refusals(context, self.started.refused, metadata["model_name"])
        logger.info("initialized %s with %d thread(s)", self.model_block, threads)
        self.initialized = True

    def _top_k(self, context: Context, idx: int) -> int:
        raw = context.get_request_header(idx, TOP_K_HEADER)
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

    def supported_extras(self) -> list[str]:
        """What this archive's engine can add to an answer (an old archive's graph has the logits alone)."""
        have = set(self.engine.outputs)
        return [
            extra
            for extra, output in EXTRAS.items()
            if output in have and extra not in self.withheld and (extra != CAM or self.fc_weight is not None)
        ]

    def _extras(self, context: Context, idx: int) -> tuple[frozenset[str], tuple[int, ...]]:
        raw = context.get_request_header(idx, OUTPUT_HEADER) or ""
        extras = {part.strip() for part in raw.split(",") if part.strip()}
        if context.get_request_header(idx, "explain") == "True":  # TorchServe's explanations API
            extras.add(CAM)
        supported = self.supported_extras()
        if unknown := sorted(extras - set(supported) - set(EXTRAS)):
            raise ImageError("bad_output", f"unknown X-Output {', '.join(unknown)}; ask for embedding or cam")
        if unavailable := sorted(extras - set(supported)):
            why = "; ".join(
                self.withheld.get(extra, f"this archive's model has no {extra} output") for extra in unavailable
            )
            raise ImageError("unsupported_output", f"{', '.join(unavailable)} not available: {why}")
        raw_classes = context.get_request_header(idx, EXPLAIN_CLASSES_HEADER) or ""
        try:
            classes = tuple(int(part) for part in raw_classes.split(",") if part.strip())
        except ValueError:
            classes = (-1,)
        if any(not 0 <= c < len(self.labels) for c in classes):
            raise ImageError("bad_output", f"X-Explain-Classes must be class ids from 0 to {len(self.labels) - 1}")
        return frozenset(extras), classes

    def _item(self, idx: int, item: Request, context: Context) -> Item | ImageError:
        payload = item.get("data") or item.get("body") or b""
        try:
            if isinstance(payload, str):
                raise ImageError("undecodable", "the image was sent as text, not as bytes")
            k = self._top_k(context, idx)
            extras, classes = self._extras(context, idx)
            # A map is placed on the original's pixels: decode it whole, never at a reduced JPEG scale.
            jpeg_draft = 1 if CAM in extras else int(self.settings["jpeg_draft"])
            with self.timings.timed(PREPROCESS):
                image = decode(bytes(payload), int(self.settings["max_pixels"]), jpeg_draft)
                tensor = preprocess(image)
            return Item(tensor, k, extras, classes, image.size)
        except ImageError as err:
            return err

    def preprocess(self, data: list[Request], context: Context) -> Batch:
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
            batch.items.append(outcome)
            batch.positions.append(idx)
        return batch

    def inference(self, batch: Batch) -> Outputs:
        """Logits only, unless some request of the batch asked for an embedding or a map."""
        if not batch.items:
            return Outputs(np.empty((0, len(self.labels)), dtype=np.float32))
        # Contiguous NCHW: stacking keeps preprocess's channels-last memory order, on which PyTorch takes
        # another convolution path (eager logits 4e-5 off the reference); ONNX Runtime would copy it anyway.
        inputs = np.ascontiguousarray(np.stack([item.tensor for item in batch.items]))
        wanted = sorted({EXTRAS[extra] for item in batch.items for extra in item.extras})
        with self.timings.timed(INFERENCE):
            if wanted:
                logits, *extra = self.engine.run_outputs(inputs, ["logits", *wanted])
            else:
                logits, extra = self.engine.run(inputs), []
        return Outputs(softmax(logits), dict(zip(wanted, extra, strict=True)))

    def _prediction(self, class_id: int, scores: Floats) -> ClassScore:
        return {"class_id": class_id, "label": self.labels[class_id], "score": float(scores[class_id])}

    def class_activation_maps(
        self, item: Item, features: Floats, scores: Floats, top: list[int]
    ) -> tuple[list[ClassMap], Geometry]:
        """One image's class activation maps for its top classes and the X-Explain-Classes, and where the
        grid lies on the upright image (X-Output: cam, or TorchServe's explanations API)."""
        assert self.fc_weight is not None  # supported_extras() refused the request otherwise
        classes = list(dict.fromkeys([*top, *item.explain_classes]))
        maps = class_maps(features, self.fc_weight, classes)
        explanations: list[ClassMap] = [
            {**self._prediction(c, scores), "cam": grid.tolist()} for c, grid in zip(classes, maps, strict=True)
        ]
        return explanations, {"width": item.size[0], "height": item.size[1], "crop": crop_in_original(*item.size)}

    def postprocess(self, outputs: Outputs, batch: Batch, context: Context, size: int) -> list[ItemAnswer]:
        answers: list[ItemAnswer] = [
            {"request_id": context.get_request_header(idx, REQUEST_ID_HEADER), "model": self.model_block}
            for idx in range(size)
        ]
        for row, (idx, item) in enumerate(zip(batch.positions, batch.items, strict=True)):
            answer, scores = answers[idx], outputs.probabilities[row]
            top = [int(c) for c in np.argsort(-scores, kind="stable")[: item.top_k]]
            answer["predictions"] = [self._prediction(c, scores) for c in top]
            if EMBEDDING in item.extras:
                answer["embedding"] = encode_vector(l2_normalised(outputs.extra["pooled"][row]))
            if CAM in item.extras:
                features = outputs.extra["features"][row]
                answer["explanations"], answer["geometry"] = self.class_activation_maps(item, features, scores, top)
        for idx, err in batch.errors.items():
            answers[idx]["error"] = {"code": err.code, "detail": err.detail}
            context.set_response_status(422, "Unprocessable image", idx)
        return answers

    def describe(self) -> ModelDescription:
        return {
            **self.model_block,
            "labels": len(self.labels),
            "label_names": self.labels,
            "labels_source": self.labels_source,
            "int8_gate": self.int8_gate,
            "precision": self.started.precision,
            "precision_policy": self.started.policy,
            "cpu_features": self.started.cpu_features,
            "engine_choice": self.started.record,
            "outputs": self.supported_extras(),
            "max_pixels": self.settings["max_pixels"],
            "default_top_k": self.settings["default_top_k"],
            "max_top_k": self.settings["max_top_k"],
        }

    def handle(self, data: list[Request] | None, context: Context) -> list[ItemAnswer] | list[str] | None:
        if data is None:
            return None
        if context.get_request_header(0, "describe") == "True":
            return [json.dumps(self.describe())]
        batch = self.preprocess(data, context)
        results = self.postprocess(self.inference(batch), batch, context, len(data))
        logger.info("batch of %d: %d classified, %d rejected", len(data), len(batch.positions), len(batch.errors))
        for idx, err in batch.errors.items():
            logger.info("request %s rejected: %s", results[idx]["request_id"], err)
        return results


_service = ImageClassifierHandler()


def handle(data: list[Request] | None, context: Context) -> list[ItemAnswer] | list[str] | None:
    """TorchServe's entry point: initialise once, then classify each batch."""
    if not _service.initialized:
        _service.initialize(context)
    return _service.handle(data, context)
