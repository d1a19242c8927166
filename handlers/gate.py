"""The accuracy gate: an engine's answers against fp32's on images held apart, with limits per precision.

The build runs it for INT8 on its own CPU (modelserver/quantize.py); the worker runs it again at start, on the
CPU that serves, for every engine but the fp32 reference (handlers/engine_choice.py): the archive carries the
held-apart images encoded (GATE_FILE) with fp32's logits, pooled vectors and class activation maps for them,
computed by the build with ONNX Runtime fp32. A worker decodes and preprocesses the images as it would a
request, runs the candidate engine and compares:

- top-1 agreement, mean top-k overlap (shared classes / k, k = `overlap_k(N)`: 5, or N - 1 for a model of
  N <= 5 classes, whose top N are always all of them; `top_k` in the measurement says which k; the field
  keeps its name, `top5_overlap`), the largest difference of any class probability,
- the smallest cosine similarity of the pooled vectors (the embeddings /v1/embed serves),
- for bf16 only, the smallest correlation of the top-1 class's activation map: maps are served on bf16 only
  where it is at least MIN_MAP_CORRELATION; INT8 never serves them (handlers/image_handler.py's WITHHELD).

The limits are set per precision, from what the precision can do, not from a number measured on one CPU:
fp32 engines only reorder fp32 arithmetic, so they must agree almost exactly; bf16 keeps 8 bits of mantissa
in activations and weights (accumulating in fp32), stricter than INT8's 8-bit integers with per-tensor
activation scales; INT8's limits are the build's, set to refuse a broken quantisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from handlers.engines import softmax

GATE_FILE = "gate_set.npz"  # image_000... (encoded bytes, uint8) and the REFERENCE arrays
REFERENCE = ("logits", "pooled", "maps")  # fp32's outputs for the images: (n, N classes), (n, 2048), (n, 7, 7)
GATE_IMAGES = 32
TOP_K = 5  # the overlap's k for models of more than 5 classes
MIN_MAP_CORRELATION = 0.9  # bf16's class activation maps against fp32's, every image's top-1 class


@dataclass(frozen=True)
class Limits:
    min_top1_agreement: float
    min_top5_overlap: float
    max_prob_diff: float
    min_pooled_cosine: float = 0.0

    def failures(self, measured: Measurement) -> list[str]:
        out = []
        if measured.top1_agreement < self.min_top1_agreement:
            out.append(f"top-1 agreement {measured.top1_agreement:.3f} < {self.min_top1_agreement}")
        if measured.top5_overlap < self.min_top5_overlap:
            out.append(f"top-{measured.top_k} overlap {measured.top5_overlap:.3f} < {self.min_top5_overlap}")
        if measured.max_prob_diff > self.max_prob_diff:
            out.append(f"max probability difference {measured.max_prob_diff:.3f} > {self.max_prob_diff}")
        if measured.min_pooled_cosine < self.min_pooled_cosine:
            out.append(f"pooled vector cosine {measured.min_pooled_cosine:.4f} < {self.min_pooled_cosine}")
        return out


# Per precision. INT8's first three are the build's defaults (modelserver/quantize.py's Thresholds); its
# pooled vectors stayed within cosine 0.985 of fp32's on the test model's photos, so 0.95 refuses only a broken
# model. bf16's are stricter on every measure; fp32's allow reordered fp32 sums and nothing more.
LIMITS = {
    "fp32": Limits(min_top1_agreement=0.95, min_top5_overlap=0.95, max_prob_diff=1e-3, min_pooled_cosine=0.9999),
    "bf16": Limits(min_top1_agreement=0.90, min_top5_overlap=0.80, max_prob_diff=0.25, min_pooled_cosine=0.99),
    "int8": Limits(min_top1_agreement=0.85, min_top5_overlap=0.70, max_prob_diff=0.60, min_pooled_cosine=0.95),
}


@dataclass(frozen=True)
class Measurement:
    top1_agreement: float
    top5_overlap: float
    max_prob_diff: float
    min_pooled_cosine: float = 1.0
    top_k: int = TOP_K  # the k of top5_overlap: overlap_k(classes)


def overlap_k(classes: int) -> int:
    """The k of the top-k overlap for a model of `classes` classes: min(5, classes - 1) (the top `classes` of two
    answers always overlap wholly)."""
    return min(TOP_K, classes - 1)


def compare(reference: npt.NDArray[np.float32], other: npt.NDArray[np.float32]) -> tuple[float, float, float]:
    """(top-1 agreement, mean top-k overlap, max abs difference) of two (n, N classes) probability arrays, k the
    `overlap_k` of N."""
    k = overlap_k(reference.shape[1])
    top1 = float(np.mean(reference.argmax(axis=1) == other.argmax(axis=1)))
    top_a, top_b = np.argsort(-reference, axis=1)[:, :k], np.argsort(-other, axis=1)[:, :k]
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top_a, top_b, strict=True)]))
    return top1, overlap, float(np.abs(reference - other).max())


def min_cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """The smallest cosine similarity of two (N, D) arrays' rows."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)))


def min_correlation(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """The smallest Pearson correlation of two (N, ...) arrays' items (a flat item correlates as 1 with itself)."""
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    out = []
    for x, y in zip(flat_a, flat_b, strict=True):
        x, y = x - x.mean(), y - y.mean()
        scale = float(np.linalg.norm(x) * np.linalg.norm(y))
        out.append(float(x @ y) / scale if scale > 0 else float(np.allclose(x, y)))
    return min(out)


@dataclass(frozen=True)
class GateSet:
    """The held-apart images (encoded, as a request would bring them) and fp32's outputs for them."""

    images: list[bytes]
    logits: npt.NDArray[np.float32]
    pooled: npt.NDArray[np.float32]
    maps: npt.NDArray[np.float32]

    def save(self, path: Path) -> None:
        arrays: dict[str, npt.NDArray[Any]] = {"logits": self.logits, "pooled": self.pooled, "maps": self.maps}
        arrays |= {f"image_{n:03d}": np.frombuffer(data, dtype=np.uint8) for n, data in enumerate(self.images)}
        np.savez(path, allow_pickle=False, **arrays)

    @classmethod
    def load(cls, path: Path) -> GateSet:
        with np.load(path, allow_pickle=False) as stored:
            names = sorted(name for name in stored.files if name.startswith("image_"))
            return cls([stored[name].tobytes() for name in names], *(stored[name] for name in REFERENCE))


@dataclass(frozen=True)
class Verdict:
    """One engine's gate on this worker's CPU: what was measured, the limits, and what failed."""

    engine: str
    precision: str
    images: int
    measured: Measurement
    limits: Limits
    failures: list[str]
    map_correlation: float | None = None  # bf16 only: maps are served when >= MIN_MAP_CORRELATION

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        m = self.measured
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.failures)
        return (
            f"{self.engine} ({self.precision}) vs fp32 on {self.images} held-apart images: top-1 agreement "
            f"{m.top1_agreement:.3f}, top-{m.top_k} overlap {m.top5_overlap:.3f}, max probability difference "
            f"{m.max_prob_diff:.4f}, pooled cosine {m.min_pooled_cosine:.4f}: {verdict}"
        )


def judge(
    engine: str,
    precision: str,
    gate_set: GateSet,
    probabilities: npt.NDArray[np.float32],
    pooled: npt.NDArray[np.float32],
    maps: npt.NDArray[np.float32] | None,
) -> Verdict:
    """The verdict on an engine's probabilities, pooled vectors and (bf16) top-1 maps for the gate set."""
    top1, top5, diff = compare(softmax(gate_set.logits), probabilities)
    measured = Measurement(
        round(top1, 4),
        round(top5, 4),
        round(diff, 6),
        round(min_cosine(gate_set.pooled, pooled), 6),
        overlap_k(gate_set.logits.shape[1]),
    )
    limits = LIMITS[precision]
    correlation = None if maps is None else round(min_correlation(gate_set.maps, maps), 4)
    return Verdict(engine, precision, len(gate_set.images), measured, limits, limits.failures(measured), correlation)
