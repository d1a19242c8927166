"""Where the ResNet50 weights come from: torchvision's hash-checked download, a local file, or a seed.

Every failure is a WeightsError whose message is one line a user can act on.
"""

from __future__ import annotations

import hashlib
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.models import ResNet50_Weights, resnet50

IMAGENET = ResNet50_Weights.IMAGENET1K_V2
RANDOM_SEED = 0


class WeightsError(Exception):
    """The weights could not be had or do not fit ResNet50; the message says why and what to do."""


class DownloadError(WeightsError):
    """The official weights could not be downloaded (offline host, proxy, outage)."""


@dataclass(frozen=True)
class Weights:
    model: torch.nn.Module
    name: str  # what the response's model block calls them
    source_sha256: str | None  # of the file they were read from; None for generated weights
    untrained: bool
    reference_acc1: float | None  # ImageNet-1K top-1 published for these weights


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _strict_model(state_dict: object, origin: str) -> torch.nn.Module:
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsError(f"{origin} is not a ResNet50 state dict (a mapping of parameter names to tensors)")
    model = resnet50(weights=None)
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


def from_file(path: Path, expected_sha256: str | None = None) -> Weights:
    """A local state-dict file, for air-gapped hosts; loaded strictly into ResNet50."""
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
    return Weights(
        model=_strict_model(state_dict, str(path)),
        name=f"file:{path.name}",
        source_sha256=digest,
        untrained=False,
        reference_acc1=None,
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


def resolve(spec: str, expected_sha256: str | None = None, cache_dir: Path | None = None) -> Weights:
    """`imagenet`, `random` or a path to a state-dict file."""
    if spec == "imagenet":
        return from_imagenet(cache_dir)
    if spec == "random":
        return from_seed()
    return from_file(Path(spec), expected_sha256)
