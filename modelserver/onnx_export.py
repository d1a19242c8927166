"""Export ResNet50 to ONNX with a dynamic batch axis, and prove the export matches the eager model.

The graph has three outputs: `logits` (N, 1000), then `features` (layer4's map, N x 2048 x 7 x 7) and
`pooled` (its global average, N x 2048), which class activation maps and embeddings are made from. They lie
on the logits' path, so the graph does no extra work; a caller that fetches only `logits` pays nothing more.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from handlers.engines import OUTPUTS
from handlers.resnet_outputs import ResNetWithMaps

MAX_ABS_LOGIT_DIFF = 1e-3
TOP_K = 5
OPSET = 17


class VerificationError(Exception):
    """The ONNX model disagrees with the eager model; it must not be packaged."""


def export(model: torch.nn.Module, path: Path) -> None:
    example = torch.zeros(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: stable for CNNs
        torch.onnx.export(
            ResNetWithMaps(model).eval(),
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=list(OUTPUTS),
            dynamic_axes={"input": {0: "batch"}, **{name: {0: "batch"} for name in OUTPUTS}},
            opset_version=OPSET,
        )


def verification_inputs(seed: int = 1234) -> list[np.ndarray]:
    """Several batches of different sizes, in the value range of normalised images."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, 3, 224, 224)).astype(np.float32) for n in (1, 3, 4)]


def verify(model: torch.nn.Module, path: Path) -> float:
    """Compare ONNX Runtime with eager PyTorch; return the max abs logit difference or raise."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a broken graph
        raise VerificationError(f"ONNX Runtime cannot load {path.name}: {str(exc)[:200]}") from None
    worst = 0.0
    with_maps = ResNetWithMaps(model).eval()
    for batch in verification_inputs():
        with torch.inference_mode():
            expected, *maps = (t.numpy() for t in with_maps(torch.from_numpy(batch)))
        actual, *onnx_maps = session.run(list(OUTPUTS), {session.get_inputs()[0].name: batch})
        if actual.shape != expected.shape:
            raise VerificationError(f"ONNX output shape {actual.shape} != eager {expected.shape}")
        worst = max(worst, float(np.abs(actual - expected).max()))
        if not worst < MAX_ABS_LOGIT_DIFF:
            raise VerificationError(f"max abs logit difference {worst:.3g} is not below {MAX_ABS_LOGIT_DIFF}")
        for name, want, got in zip(OUTPUTS[1:], maps, onnx_maps, strict=True):
            if got.shape != want.shape or not float(np.abs(got - want).max()) < MAX_ABS_LOGIT_DIFF:
                raise VerificationError(f"ONNX output {name!r} differs from eager beyond {MAX_ABS_LOGIT_DIFF}")
        top_eager = np.argsort(-expected, axis=1)[:, :TOP_K]
        top_onnx = np.argsort(-actual, axis=1)[:, :TOP_K]
        if not np.array_equal(top_eager, top_onnx):
            raise VerificationError("ONNX and eager disagree on the top-5 classes")
    return worst
