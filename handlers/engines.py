"""Inference engines: a batch of preprocessed images (B, 3, 224, 224) float32 → logits (B, N), N the archive's
classes (its LABELS_FILE's count: 1000 for ImageNet).

ONNX Runtime fp32 (`onnx`) is the default and the reference (its accuracy is the published one); `onnx-int8`
runs the statically quantised copy the build makes (`model.int8.onnx`, checked against fp32 by the build's
accuracy gate), several times faster on CPUs with AVX-512 VNNI. OpenVINO compiles the same two graphs:
`openvino-fp32` and `openvino-bf16` the fp32 graph with an explicit inference precision (bf16 needs AVX-512
BF16 or AMX in hardware: handlers/engine_choice.py never offers it elsewhere), `openvino-int8` the QDQ graph,
which it runs in int8. PyTorch eager is kept selectable for parity checks. torch is imported only by the
eager engine and openvino only by its engines, so the other paths do not pay for them.

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
# OpenVINO's engines: the graph each compiles and the inference precision it is compiled at.
OPENVINO = {
    "openvino-fp32": (ONNX_FILE, "f32"),
    "openvino-bf16": (ONNX_FILE, "bf16"),
    "openvino-int8": (INT8_ONNX_FILE, "f32"),
}
ENGINES = (*ONNX_FILES, *OPENVINO, "eager")
# The graph's outputs: logits (B, N), layer4's map (B, 2048, 7, 7), its global average (B, 2048).
OUTPUTS = ("logits", "features", "pooled")
FC_WEIGHT_FILE = "fc_weight.npy"  # the final layer's weight (N, 2048) float32, for class activation maps
LABELS_FILE = "index_to_name.json"  # {"0": label, ...}: the N labels by class id

Floats = npt.NDArray[np.float32]  # what goes in (the preprocessed batch) and what comes out


def softmax(logits: Floats) -> Floats:
    """Probabilities from an engine's logits, per row."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: Floats = exp / exp.sum(axis=1, keepdims=True)
    return probabilities


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


class OpenVinoEngine:
    """OpenVINO on the CPU, one stream of `threads` threads per worker. The QDQ graph's quantised layers run
    in int8 whatever the hint; its hint is f32 so the layers the build left in fp32 (the classifier) stay so."""

    def __init__(self, model_dir: Path, threads: int, name: str, pinning: bool = False) -> None:
        import openvino as ov

        self.name = name
        graph, precision = OPENVINO[name]
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,  # one batch at a time per worker; TorchServe's workers are the parallelism
            "PERFORMANCE_HINT": "LATENCY",
            # Each worker would pin its threads from the first core on: two single-threaded workers would
            # share one core. Off unless the archive asks for it (one worker owning the machine).
            "ENABLE_CPU_PINNING": pinning,
        }
        self._compiled = ov.Core().compile_model(str(model_dir / graph), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self.outputs = tuple(output.get_any_name() for output in self._compiled.outputs)

    def run(self, batch: Floats) -> Floats:
        return self.run_outputs(batch, ["logits"])[0]

    def run_outputs(self, batch: Floats, names: list[str]) -> list[Floats]:
        results = self._request.infer({0: batch})
        # The request's output tensors are reused by its next inference: copy what is returned.
        return [np.array(results[self._compiled.output(name)], dtype=np.float32) for name in names]


class EagerEngine:
    name = "eager"
    outputs: tuple[str, ...] = OUTPUTS

    def __init__(self, model_dir: Path, threads: int) -> None:
        import torch
        from torchvision.models import resnet50

        from handlers.resnet_outputs import ResNetWithMaps

        torch.set_num_threads(threads)
        self._torch = torch
        state_dict = torch.load(model_dir / STATE_DICT_FILE, map_location="cpu", weights_only=True)
        self._model = resnet50(weights=None, num_classes=int(state_dict["fc.weight"].shape[0]))
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


def load_engine(kind: str, model_dir: Path, threads: int, spinning: bool = True, pinning: bool = False) -> Engine:
    """Build the engine named `kind` from the artefacts in `model_dir`."""
    if kind in ONNX_FILES:
        return OnnxEngine(model_dir, threads, spinning, kind)
    if kind in OPENVINO:
        return OpenVinoEngine(model_dir, threads, kind, pinning)
    if kind == "eager":
        return EagerEngine(model_dir, threads)
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
