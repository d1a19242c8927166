"""Build `model_store/resnet50.mar`: weights → verified ONNX + state dict + labels + metadata + handler.

    python -m modelserver build [--weights imagenet|random|PATH] [--sha256 HEX] [--engine ENGINE|auto]
                                [--precision exact|near-fp32|int8]

The ONNX export is checked against the eager model before anything is packaged; a model that fails the
check is refused. An engine that runs the INT8 model (`onnx-int8`, `openvino-int8`) and `auto` make the
archive carry the statically quantised model, which must pass the accuracy gate against fp32
(modelserver/quantize.py), else the build refuses. Every engine but fp32 `onnx` makes it carry the
worker-start gate's set (handlers/gate.py): held-apart images, encoded, and fp32's outputs for them. The
archive's model-config.yaml carries the serving defaults chosen by measurement (see docs/model.md, "Serving
defaults") and the precision policy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
import yaml

from contract.wire import MODEL_NAME
from handlers.engine_choice import AUTO, FALLBACK, INT8_ENGINES, POLICIES, PRECISION
from handlers.engines import (
    ENGINES,
    FC_WEIGHT_FILE,
    INT8_ONNX_FILE,
    LABELS_FILE,
    ONNX_FILE,
    STATE_DICT_FILE,
    OnnxEngine,
)
from handlers.gate import GATE_FILE, GateSet
from handlers.image_handler import DEFAULTS as HANDLER_DEFAULTS
from handlers.imaging import JPEG_DRAFT_CHOICES, decode, preprocess
from handlers.maps import class_maps
from modelserver import onnx_export
from modelserver.calibration import gate_images, image_sets
from modelserver.paths import REPO_ROOT
from modelserver.quantize import GateReport, Thresholds, quantize_and_gate
from modelserver.weights import Weights, sha256_file

MODEL_VERSION = "1.0"
# What the worker imports, copied into the archive's root (TorchServe puts the unpacked archive on its path):
# the handler and the contract it shares with the gateway.
WORKER_PACKAGES = tuple(REPO_ROOT / name for name in ("handlers", "contract"))
HANDLER_ENTRY = "handlers/image_handler.py"  # TorchServe calls its module-level handle()


class ArchiveError(Exception):
    """torch-model-archiver could not package the staged files."""


# Workers and batch size per engine, measured with `python -m bench.serving_defaults` (docs/model.md, "Serving
# defaults"): INT8 serves more per CPU-second from two single-threaded workers (one decodes while the other
# runs the model); fp32 keeps one two-threaded worker for its single-request latency. OpenVINO's int8 and
# bf16 take INT8's layout (one bf16 thread ran as fast as two on AMX, issue 26), fp32 fp32's; `auto` the
# layout of the engines it prefers (int8, bf16). OpenVINO int8 and fp32 measured through TorchServe on an Ice Lake
# Xeon (3 interleaved rounds): no other layout won every round, so these stay; bf16 unmeasured (no bf16 there).
ENGINE_DEFAULTS: dict[str, dict[str, int]] = {
    "onnx": {"workers": 1, "batch_size": 8},
    "onnx-int8": {"workers": 2, "batch_size": 4},
    "openvino-fp32": {"workers": 1, "batch_size": 8},
    "openvino-bf16": {"workers": 2, "batch_size": 4},
    "openvino-int8": {"workers": 2, "batch_size": 4},
    AUTO: {"workers": 2, "batch_size": 4},
    "eager": {"workers": 1, "batch_size": 8},
}
# The precision policy an archive names by default: what its engine computes in; `auto`'s is near-fp32
# (bf16 where the CPU has it, else fp32: answers stay within bf16's gate of fp32's), INT8 on request.
DEFAULT_POLICY = {"fp32": "exact", "bf16": "near-fp32", "int8": "int8", AUTO: "near-fp32"}
# Seconds TorchServe gives a worker to load: the engine's compilation plus its gate on GATE_IMAGES images
# (measured in docs/model.md, "Engines": a few seconds on 2 vCPUs), with room for a busy machine.
STARTUP_TIMEOUT_S = 120


def needs_int8_model(engine: str) -> bool:
    return engine in INT8_ENGINES or engine == AUTO


def default_policy(engine: str) -> str:
    return DEFAULT_POLICY[AUTO if engine == AUTO else PRECISION[engine]]


@dataclass(frozen=True)
class ServingConfig:
    """What goes into the archive's model-config.yaml."""

    engine: str = HANDLER_DEFAULTS["engine"]
    precision: str = "exact"  # the precision policy (handlers/engine_choice.py)
    workers: int = 1
    batch_size: int = 8
    max_batch_delay_ms: int = 5
    response_timeout_s: int = 30
    startup_timeout_s: int = STARTUP_TIMEOUT_S
    max_pixels: int = HANDLER_DEFAULTS["max_pixels"]
    default_top_k: int = HANDLER_DEFAULTS["default_top_k"]
    max_top_k: int = HANDLER_DEFAULTS["max_top_k"]  # the gateway's /v1 allows 20; /v2 asks for all 1000
    spinning: bool = HANDLER_DEFAULTS["spinning"]
    decode_threads: int = HANDLER_DEFAULTS["decode_threads"]
    jpeg_draft: int = HANDLER_DEFAULTS["jpeg_draft"]  # 1: exact; 2/4/8: reduced-scale JPEG decode allowed

    @classmethod
    def for_engine(
        cls,
        engine: str,
        workers: int | None = None,
        batch_size: int | None = None,
        max_batch_delay_ms: int | None = None,
        jpeg_draft: int | None = None,
        precision: str | None = None,
    ) -> ServingConfig:
        """The engine's measured defaults, with the arguments that are not None."""
        if engine not in ENGINE_DEFAULTS:
            raise ValueError(f"unknown engine {engine!r}")
        defaults, plain = ENGINE_DEFAULTS[engine], cls()
        return cls(
            engine=engine,
            precision=default_policy(engine) if precision is None else precision,
            workers=defaults["workers"] if workers is None else workers,
            batch_size=defaults["batch_size"] if batch_size is None else batch_size,
            max_batch_delay_ms=plain.max_batch_delay_ms if max_batch_delay_ms is None else max_batch_delay_ms,
            jpeg_draft=plain.jpeg_draft if jpeg_draft is None else jpeg_draft,
        )

    @classmethod
    def from_yaml(cls, config: dict[str, Any]) -> ServingConfig:
        """The settings an archive's model-config.yaml holds (as_yaml's inverse; absent keys take the defaults)."""
        handler, plain = config.get("handler") or {}, cls()
        fields = {name: handler[name] for name in HANDLER_DEFAULTS if name in handler and hasattr(plain, name)}
        return cls(
            **fields,
            workers=config.get("minWorkers", plain.workers),
            batch_size=config.get("batchSize", plain.batch_size),
            max_batch_delay_ms=config.get("maxBatchDelay", plain.max_batch_delay_ms),
            response_timeout_s=config.get("responseTimeout", plain.response_timeout_s),
            startup_timeout_s=config.get("startupTimeout", plain.startup_timeout_s),
        )

    def as_yaml(self) -> dict[str, Any]:
        if self.engine not in (*ENGINES, AUTO):
            raise ValueError(f"unknown engine {self.engine!r}")
        if self.precision not in POLICIES:
            raise ValueError(f"precision must be one of {POLICIES}, got {self.precision!r}")
        if self.jpeg_draft not in JPEG_DRAFT_CHOICES:
            raise ValueError(f"jpeg_draft must be one of {JPEG_DRAFT_CHOICES}, got {self.jpeg_draft!r}")
        return {
            "minWorkers": self.workers,
            "maxWorkers": self.workers,
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay_ms,
            "responseTimeout": self.response_timeout_s,
            "startupTimeout": self.startup_timeout_s,
            "handler": {
                "engine": self.engine,
                "precision": self.precision,
                "max_pixels": self.max_pixels,
                "default_top_k": self.default_top_k,
                "max_top_k": self.max_top_k,
                "spinning": self.spinning,
                "decode_threads": self.decode_threads,
                "jpeg_draft": self.jpeg_draft,
            },
        }


@dataclass(frozen=True)
class Int8Options:
    """For `--engine onnx-int8`: the calibration images (None: the default set) and the gate's thresholds; for
    every engine but fp32 `onnx`, the worker-start gate's images: `gate` (image files, e.g. `train-head
    --gate-images own`'s held-apart photos), else the calibration folder's held-apart ones or the default set's."""

    calibration: Path | None = None
    thresholds: Thresholds = Thresholds()
    gate: tuple[Path, ...] | None = None


def metadata(
    weights: Weights, config: ServingConfig, state_dict_sha256: str, onnx_diff: float, gate: GateReport | None
) -> dict[str, Any]:
    return {
        "model_name": MODEL_NAME,
        "model_version": MODEL_VERSION,
        "weights": weights.name,
        "weights_sha256": weights.source_sha256 or state_dict_sha256,
        "untrained": weights.untrained,
        "reference_acc1": weights.reference_acc1,
        "classes": len(weights.labels),
        "labels_source": weights.labels_source,
        "engine": config.engine,
        "precision": config.precision,
        "onnx_max_abs_logit_diff": onnx_diff,
        "int8_gate": gate.as_dict() if gate else None,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }


def reference_outputs(payload: Path, images: list[bytes], max_pixels: int) -> GateSet:
    """fp32's outputs (ONNX Runtime, the reference engine) for the worker-start gate's images."""
    engine = OnnxEngine(payload, os.cpu_count() or 1)
    tensors = np.stack([preprocess(decode(data, max_pixels)) for data in images])
    logits, pooled, features = engine.run_outputs(tensors, ["logits", "pooled", "features"])
    weight = np.load(payload / FC_WEIGHT_FILE)
    maps = np.stack([class_maps(f, weight, [int(c)])[0] for f, c in zip(features, logits.argmax(axis=1), strict=True)])
    return GateSet(images, logits, pooled, maps)


def stage(weights: Weights, config: ServingConfig, root: Path, int8: Int8Options) -> Path:
    """Write every file of the archive into `root/payload`; return that folder."""
    payload = root / "payload"
    payload.mkdir(parents=True)
    torch.save(weights.model.state_dict(), payload / STATE_DICT_FILE)
    np.save(payload / FC_WEIGHT_FILE, weights.model.fc.weight.detach().numpy().astype(np.float32))
    onnx_export.export(weights.model, payload / ONNX_FILE)
    onnx_diff = onnx_export.verify(weights.model, payload / ONNX_FILE)
    gate = None
    if needs_int8_model(config.engine):
        sets = image_sets(int8.calibration)
        gate = quantize_and_gate(payload / ONNX_FILE, payload / INT8_ONNX_FILE, sets, int8.thresholds)
    if config.engine != FALLBACK:
        reference_outputs(payload, gate_images(int8.calibration, int8.gate), config.max_pixels).save(
            payload / GATE_FILE
        )
    labels = {str(i): name for i, name in enumerate(weights.labels)}
    (payload / LABELS_FILE).write_text(json.dumps(labels, indent=0))
    meta = metadata(weights, config, sha256_file(payload / STATE_DICT_FILE), onnx_diff, gate)
    (payload / "metadata.json").write_text(json.dumps(meta, indent=2))
    for package in WORKER_PACKAGES:
        shutil.copytree(package, payload / "code" / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "model-config.yaml").write_text(yaml.safe_dump(config.as_yaml(), sort_keys=False))
    return payload


def package(payload: Path, config_file: Path, output: Path) -> Path:
    """Run torch-model-archiver over the staged files; write `output` atomically."""
    export_dir = payload.parent / "export"
    export_dir.mkdir()
    extra = [str(p) for p in sorted(payload.iterdir()) if p.name != "code"] + [str(payload / "code")]
    cmd = [
        str(Path(sys.executable).with_name("torch-model-archiver")),
        "--model-name",
        MODEL_NAME,
        "--version",
        MODEL_VERSION,
        "--handler",
        str(payload / "code" / HANDLER_ENTRY),
        "--extra-files",
        ",".join(extra),
        "--config-file",
        str(config_file),
        "--export-path",
        str(export_dir),
    ]
    # The archiver stages in $TMPDIR/<model name>; a private TMPDIR keeps parallel builds apart.
    env = {**os.environ, "TMPDIR": str(payload.parent)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ArchiveError(f"torch-model-archiver failed: {(done.stderr or done.stdout).strip()[-500:]}")
    output.parent.mkdir(parents=True, exist_ok=True)
    built = export_dir / f"{MODEL_NAME}.mar"
    tmp = output.with_suffix(".mar.partial")
    shutil.move(built, tmp)
    tmp.replace(output)
    return output


def build(weights: Weights, config: ServingConfig, output: Path, int8: Int8Options = Int8Options()) -> Path:
    with tempfile.TemporaryDirectory(prefix="mar-build-") as tmp:
        payload = stage(weights, config, Path(tmp), int8)
        return package(payload, Path(tmp) / "model-config.yaml", output)


def reconfigured(mar: Path, config: ServingConfig, output: Path) -> Path:
    """A copy of `mar` that serves `config` (its model-config.yaml, and the engine and precision its metadata names),
    with the same weights, models and gate set: one `auto` archive carries every engine's files, so the benchmark
    serves each engine from it without building (and quantising) again. Refused when `mar` lacks the INT8 model
    the engine needs or the gate set (an `onnx` archive)."""
    with zipfile.ZipFile(mar) as source:
        names = set(source.namelist())
        if needs_int8_model(config.engine) and INT8_ONNX_FILE not in names:
            raise ArchiveError(f"{mar} has no {INT8_ONNX_FILE} for engine {config.engine}")
        if config.engine != FALLBACK and GATE_FILE not in names:
            raise ArchiveError(f"{mar} has no {GATE_FILE} to gate engine {config.engine} with")
        meta = json.loads(source.read("metadata.json"))
        meta.update(engine=config.engine, precision=config.precision)
        tmp = output.with_suffix(".mar.partial")
        output.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as target:
            for item in source.infolist():
                if item.filename == "model-config.yaml":
                    target.writestr(item, yaml.safe_dump(config.as_yaml(), sort_keys=False))
                elif item.filename == "metadata.json":
                    target.writestr(item, json.dumps(meta, indent=2))
                else:
                    with source.open(item) as data, target.open(item, "w") as out:
                        shutil.copyfileobj(data, out, 2**20)
    tmp.replace(output)
    return output
