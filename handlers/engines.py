"""Inference engines: a batch of preprocessed images (N, 3, 224, 224) float32 → logits (N, 1000).

ONNX Runtime fp32 is the default (its accuracy is the published one); `onnx-int8` runs the statically
quantised copy the build makes (`model.int8.onnx`, checked against fp32 by the build's accuracy gate),
several times faster on CPUs with AVX-512 VNNI; PyTorch eager is kept selectable for parity checks.
torch is imported only by the eager engine, so the ONNX paths do not pay for it.

Besides the logits, each engine gives layer4's feature map and the pooled vector (OUTPUTS) through
`run_outputs`, for class activation maps and embeddings; `run` fetches the logits alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from contract.wire import MODEL_NAME

ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"
STATE_DICT_FILE = f"{MODEL_NAME}.pth"  # the eager engine's weights; the archive's files are named after the model
ONNX_FILES = {"onnx": ONNX_FILE, "onnx-int8": INT8_ONNX_FILE}
ENGINES = (*ONNX_FILES, "eager")
# The graph's outputs: logits (N, 1000), layer4's map (N, 2048, 7, 7), its global average (N, 2048).
OUTPUTS = ("logits", "features", "pooled")
FC_WEIGHT_FILE = "fc_weight.npy"  # the final layer's weight (1000, 2048) float32, for class activation maps

Floats = npt.NDArray[np.float32]  # what goes in (the preprocessed batch) and what comes out


class Engine(Protocol):
    name: str
    outputs: tuple[str, ...]  # the names run_outputs can fetch

    def run(self, batch: Floats) -> Floats: ...

    def run_outputs(self, batch: Floats, names: list[str]) -> list[Floats]: ...


class OnnxEngine:
    """ONNX Runtime on the CPU; `name` picks the graph: `onnx` (fp32) or `onnx-int8`."""

    def __init__(self, model_dir: Path, threads: int, spinning: bool = True, name: str = "onnx") -> None:
        import onnxruntime as ort

        self.name = name
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle intra-op threads busy-wait for the next op by default; inside TorchServe that spinning
        # takes CPU from the Java frontend and the gateway on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(model_dir / ONNX_FILES[name]), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self.outputs = tuple(output.name for output in self._session.get_outputs())

    def run(self, batch: Floats) -> Floats:
        logits: Floats = self._session.run(["logits"], {self._input: batch})[0]  # ONNX Runtime is untyped
        return logits

    def run_outputs(self, batch: Floats, names: list[str]) -> list[Floats]:
        outputs: list[Floats] = self._session.run(names, {self._input: batch})
        return outputs


class EagerEngine:
    name = "eager"
    outputs: tuple[str, ...] = OUTPUTS

    def __init__(self, model_dir: Path, threads: int) -> None:
        import torch
        from torchvision.models import resnet50

        from handlers.resnet_outputs import ResNetWithMaps

        torch.set_num_threads(threads)
        self._torch = torch
        self._model = resnet50(weights=None)
        state_dict = torch.load(model_dir / STATE_DICT_FILE, map_location="cpu", weights_only=True)
        self._model.load_state_dict(state_dict, strict=True)
        self._model.eval()
        self._with_maps = ResNetWithMaps(self._model).eval()

    def run(self, batch: Floats) -> Floats:
        with self._torch.inference_mode():
            logits: Floats = self._model(self._torch.from_numpy(batch)).numpy()  # torch is not followed: Any
        return logits

    def run_outputs(self, batch: Floats, names: list[str]) -> list[Floats]:
        with self._torch.inference_mode():
            produced = dict(zip(OUTPUTS, self._with_maps(self._torch.from_numpy(batch)), strict=True))
        return [produced[name].numpy() for name in names]


def load_engine(kind: str, model_dir: Path, threads: int, spinning: bool = True) -> Engine:
    """Build the engine named `kind` from the artefacts in `model_dir`."""
    if kind in ONNX_FILES:
        return OnnxEngine(model_dir, threads, spinning, kind)
    if kind == "eager":
        return EagerEngine(model_dir, threads)
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
