"""The reference the service's answers are checked against, and the handler in process: torchvision's own
preprocessing, and a TorchServe Context as TorchServe builds one. These import torch and TorchServe, so the
fast tier (tests/unit) never imports this module."""

from __future__ import annotations

import io
from pathlib import Path

import torch
import yaml
from PIL import Image, ImageOps
from torchvision.models import ResNet50_Weights
from ts.context import Context, RequestProcessor

from handlers.imaging import decode, preprocess

REFERENCE = ResNet50_Weights.IMAGENET1K_V2.transforms()
MAX_PIXELS = 40_000_000


def reference(data: bytes) -> torch.Tensor:
    """torchvision's own pipeline for the weights, after EXIF orientation and RGB conversion."""
    return REFERENCE(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


def ours(data: bytes) -> torch.Tensor:
    return torch.from_numpy(preprocess(decode(data, MAX_PIXELS)))


def assert_identical(data: bytes) -> None:
    expected, actual = reference(data), ours(data)
    assert actual.dtype == expected.dtype == torch.float32
    assert actual.shape == expected.shape == (3, 224, 224)
    assert torch.equal(actual, expected), f"max abs diff {(actual - expected).abs().max().item()}"


# --- the handler in process, as TorchServe drives it ---------------------------------------------------------


def make_context(model_dir: Path, headers: list[dict[str, str]], **settings: object) -> Context:
    """A Context for `headers` (one dict per request); `settings` override the archive's handler block."""
    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    config["handler"].update(settings)
    context = Context("resnet50", str(model_dir), {}, len(headers), None, "0.12.0", model_yaml_config=config)
    context.request_processor = [RequestProcessor(dict(h)) for h in headers]
    return context
