"""Inference engines: a batch of preprocessed images (N, 3, 224, 224) float32 → logits (N, 1000).

ONNX Runtime is the default (about twice as fast as eager PyTorch on a CPU); PyTorch eager is kept
selectable for parity checks and for hosts without ONNX Runtime. torch is imported only by the eager
engine, so the ONNX path does not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

ONNX_FILE = "model.onnx"
STATE_DICT_FILE = "resnet50.pth"
ENGINES = ("onnx", "eager")


class Engine(Protocol):
    name: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxEngine:
    name = "onnx"

    def __init__(self, model_dir: Path, threads: int, spinning: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle intra-op threads busy-wait for the next op by default; inside TorchServe that spinning
        # takes CPU from the Java frontend and the gateway on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(model_dir / ONNX_FILE), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0]


class EagerEngine:
    name = "eager"

    def __init__(self, model_dir: Path, threads: int) -> None:
        import torch
        from torchvision.models import resnet50

        torch.set_num_threads(threads)
        self._torch = torch
        self._model = resnet50(weights=None)
        state_dict = torch.load(model_dir / STATE_DICT_FILE, map_location="cpu", weights_only=True)
        self._model.load_state_dict(state_dict, strict=True)
        self._model.eval()

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._model(self._torch.from_numpy(batch)).numpy()


def load_engine(kind: str, model_dir: Path, threads: int, spinning: bool = True) -> Engine:
    """Build the engine named `kind` from the artefacts in `model_dir`."""
    if kind == "onnx":
        return OnnxEngine(model_dir, threads, spinning)
    if kind == "eager":
        return EagerEngine(model_dir, threads)
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
