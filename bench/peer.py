"""The peer: the same weights served by TorchServe's stock `image_classifier` handler.

That is what a user would otherwise deploy: a TorchScript model, the stock handler (Resize 256, batch 1).
Twice: with TorchServe's default worker count (one per core: each worker's torch takes every core, so they
oversubscribe), and tuned to 1 worker, the stock handler's best on this machine (batching does not help
eager torch here: batch 8 ran slower per image than batch 1). The stock handler imports captum,
installed by `make bench` only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from torchvision.models import resnet50

from contract.wire import MODEL_NAME
from handlers.engines import STATE_DICT_FILE


def build_stock_archive(model_dir: Path, out_store: Path, workdir: Path, workers: int | None = None) -> Path:
    """Trace our archive's state dict to TorchScript and package it for the stock handler; `workers` fixes
    the worker count (default: TorchServe's)."""
    model = resnet50(weights=None)
    model.load_state_dict(torch.load(model_dir / STATE_DICT_FILE, map_location="cpu", weights_only=True))
    model.eval()
    workdir.mkdir(parents=True, exist_ok=True)
    traced = workdir / f"{MODEL_NAME}_ts.pt"
    with torch.inference_mode():
        torch.jit.trace(model, torch.zeros(1, 3, 224, 224)).save(str(traced))
    labels = json.loads((model_dir / "index_to_name.json").read_text())
    (workdir / "index_to_name.json").write_text(json.dumps(labels))
    out_store.mkdir(parents=True, exist_ok=True)
    config = []
    if workers:
        (workdir / "model-config.yaml").write_text(yaml.safe_dump({"minWorkers": workers, "maxWorkers": workers}))
        config = ["--config-file", str(workdir / "model-config.yaml")]
    archiver = str(Path(sys.executable).with_name("torch-model-archiver"))
    subprocess.run(
        [
            archiver,
            "--model-name",
            MODEL_NAME,
            "--version",
            "1.0",
            "--handler",
            "image_classifier",
            "--serialized-file",
            str(traced),
            "--extra-files",
            str(workdir / "index_to_name.json"),
            "--export-path",
            str(out_store),
            "--force",
            *config,
        ],
        check=True,
        capture_output=True,
        timeout=600,
        env={"TMPDIR": str(workdir), "PATH": "/usr/bin:/bin"},
    )
    return out_store
