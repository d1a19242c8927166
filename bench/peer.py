"""The peer: the same weights served by TorchServe's stock `image_classifier` handler, stock settings.

That is what a user would otherwise deploy: a TorchScript model, the stock handler (Resize 256, batch 1,
TorchServe's default worker count). The stock handler imports captum, installed by `make bench` only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from torchvision.models import resnet50


def build_stock_archive(model_dir: Path, out_store: Path, workdir: Path) -> Path:
    """Trace our archive's state dict to TorchScript and package it for the stock handler."""
    model = resnet50(weights=None)
    model.load_state_dict(torch.load(model_dir / "resnet50.pth", map_location="cpu", weights_only=True))
    model.eval()
    workdir.mkdir(parents=True, exist_ok=True)
    traced = workdir / "resnet50_ts.pt"
    with torch.inference_mode():
        torch.jit.trace(model, torch.zeros(1, 3, 224, 224)).save(str(traced))
    labels = json.loads((model_dir / "index_to_name.json").read_text())
    (workdir / "index_to_name.json").write_text(json.dumps(labels))
    out_store.mkdir(parents=True, exist_ok=True)
    archiver = str(Path(sys.executable).with_name("torch-model-archiver"))
    subprocess.run(
        [archiver, "--model-name", "resnet50", "--version", "1.0", "--handler", "image_classifier",
         "--serialized-file", str(traced), "--extra-files", str(workdir / "index_to_name.json"),
         "--export-path", str(out_store), "--force"],
        check=True, capture_output=True, timeout=600, env={"TMPDIR": str(workdir), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return out_store
