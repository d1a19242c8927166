"""Where the ResNet50 weights and their labels come from: torchvision's hash-checked download, a local file,
or a seed.

The class count N is the final layer's (`fc.weight` of the state dict): torchvision's weights and the seeded
ones have ImageNet's 1000 classes and its labels; a file may have any N from 2 to contract/labels.py's
MAX_CLASSES, and needs labels of its own (`--labels FILE`) unless N is 1000 (then ImageNet's are assumed).
Every failure is a WeightsError whose message is one line a user can act on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.error
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.models import ResNet50_Weights, resnet50

from contract.labels import IMAGENET_LABELS_SOURCE, MAX_CLASSES, check

IMAGENET = ResNet50_Weights.IMAGENET1K_V2
IMAGENET_LABELS: tuple[str, ...] = tuple(IMAGENET.meta["categories"])  # ImageNet-1K's 1000, by class id
RANDOM_SEED = 0


class WeightsError(Exception):
    """The weights could not be had or do not fit ResNet50; the message says why and what to do."""


class DownloadError(WeightsError):
    """The official weights could not be downloaded (offline host, proxy, outage)."""


@dataclasses.dataclass(frozen=True)
class Weights:
    model: torch.nn.Module
    name: str  # what the response's model block calls them
    source_sha256: str | None  # of the file they were read from; None for generated weights
    untrained: bool
    reference_acc1: float | None  # ImageNet-1K top-1 published for these weights
    labels: tuple[str, ...] = IMAGENET_LABELS  # one per class of the final layer, by class id
    labels_source: str = IMAGENET_LABELS_SOURCE  # where they came from: file:NAME, train-head:FOLDER, ...

    def __post_init__(self) -> None:
        classes = int(self.model.fc.out_features)
        if classes != len(self.labels):
            raise WeightsError(f"the weights have {classes} classes but {len(self.labels)} labels were given")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def class_count(state_dict: dict[str, torch.Tensor]) -> int:
    """The classes of a ResNet50 state dict: its final layer's outputs (ImageNet's 1000 when it has none: the
    strict load then names what is missing)."""
    fc = state_dict.get("fc.weight")
    return int(fc.shape[0]) if isinstance(fc, torch.Tensor) and fc.ndim == 2 else len(IMAGENET_LABELS)


def _strict_model(state_dict: object, origin: str) -> torch.nn.Module:
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsError(f"{origin} is not a ResNet50 state dict (a mapping of parameter names to tensors)")
    classes = class_count(state_dict)
    if not 2 <= classes <= MAX_CLASSES:
        raise WeightsError(f"{origin} has {classes} classes; an archive has 2 to {MAX_CLASSES}")
    model = resnet50(weights=None, num_classes=classes)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = next((line for line in lines if not line.startswith("Error(s) in loading")), "mismatch")
        missing = len(set(model.state_dict()) - set(state_dict))
        unexpected = len(set(state_dict) - set(model.state_dict()))
        raise WeightsError(
            f"{origin} does not fit ResNet50 ({missing} missing, {unexpected} unexpected keys): {first[:200]}"
        ) from None
    return model.eval()


def from_imagenet(cache_dir: Path | None = None) -> Weights:
    """torchvision's IMAGENET1K_V2 weights, downloaded once and verified against the hash in their name."""
    try:
        state_dict = IMAGENET.get_state_dict(progress=False, check_hash=True, model_dir=cache_dir)
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(
            f"could not download {IMAGENET.url} ({exc}); on an offline host pass a local file with "
            "--weights PATH (optionally --sha256 HEX), or --weights random for untrained test weights"
        ) from None
    except RuntimeError as exc:  # torch.hub's hash check
        raise WeightsError(f"the downloaded weights failed verification: {exc}") from None
    cached = Path(cache_dir or Path(torch.hub.get_dir()) / "checkpoints") / Path(IMAGENET.url).name
    return Weights(
        model=_strict_model(state_dict, IMAGENET.url),
        name=f"ResNet50_Weights.{IMAGENET.name}",
        source_sha256=sha256_file(cached) if cached.exists() else None,
        untrained=False,
        reference_acc1=IMAGENET.meta["_metrics"]["ImageNet-1K"]["acc@1"],
    )


def checked_labels(
    origin: str, classes: int, labels: Sequence[str] | None, labels_source: str | None
) -> tuple[tuple[str, ...], str]:
    """(labels, their source) for weights of `classes` classes read from `origin`: ImageNet's for None and 1000
    classes; else `labels`, whose count must be `classes` (a WeightsError naming both) and which must follow
    contract/labels.py's rules (a LabelError)."""
    if labels is None:
        if classes != len(IMAGENET_LABELS):
            raise WeightsError(f"{origin} has {classes} classes; pass --labels FILE with {classes} labels")
        return IMAGENET_LABELS, IMAGENET_LABELS_SOURCE
    if len(labels) != classes:
        given = f" ({labels_source})" if labels_source else ""
        raise WeightsError(f"{origin} has {classes} classes but {len(labels)} labels were given{given}")
    return check(labels), labels_source or "given"


def relabelled(weights: Weights, labels: Sequence[str] | None, labels_source: str | None) -> Weights:
    """`weights` with `labels` (from `labels_source`) instead of their own; unchanged for None."""
    if labels is None:
        return weights
    names, source = checked_labels(weights.name, len(weights.labels), labels, labels_source)
    return dataclasses.replace(weights, labels=names, labels_source=source)


def from_file(
    path: Path,
    expected_sha256: str | None = None,
    labels: Sequence[str] | None = None,
    labels_source: str | None = None,
) -> Weights:
    """A local state-dict file (air-gapped hosts, a head trained on your own classes), loaded strictly into a
    ResNet50 with the file's class count N. `labels`: one per class (checked: contract/labels.py), from
    `labels_source` (e.g. file:labels.txt); needed unless N is 1000 (ImageNet's are assumed)."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise WeightsError(f"weights file {path} has sha256 {digest}, expected {expected_sha256.lower()}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zips, truncated data, refused pickles: each library raises its own
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise WeightsError(f"weights file {path} is not a readable torch state dict: {reason}") from None
    model = _strict_model(state_dict, str(path))
    names, source = checked_labels(f"weights file {path}", int(model.fc.out_features), labels, labels_source)
    return Weights(
        model=model,
        name=f"file:{path.name}",
        source_sha256=digest,
        untrained=False,
        reference_acc1=None,
        labels=names,
        labels_source=source,
    )


def from_seed(seed: int = RANDOM_SEED) -> Weights:
    """Deterministic random weights: for tests and offline demos only. Flagged untrained everywhere."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = resnet50(weights=None).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    return Weights(model=model, name=f"random-seed-{seed}", source_sha256=None, untrained=True, reference_acc1=None)


def resolve(
    spec: str,
    expected_sha256: str | None = None,
    cache_dir: Path | None = None,
    labels: Sequence[str] | None = None,
    labels_source: str | None = None,
) -> Weights:
    """`imagenet`, `random` or a path to a state-dict file; with `labels` (from `labels_source`) for its classes
    (ImageNet's 1000 may be renamed: 1000 labels)."""
    if spec == "imagenet":
        return relabelled(from_imagenet(cache_dir), labels, labels_source)
    if spec == "random":
        return relabelled(from_seed(), labels, labels_source)
    return from_file(Path(spec), expected_sha256, labels, labels_source)
