"""Where the launcher, the benchmarks and the tests find things in the checkout.

Standard library and contract/ only: `python -m modelserver ready` (the serve image's health
check) imports it.
"""

from __future__ import annotations

from pathlib import Path

from contract.wire import MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO_ROOT / "config.properties"  # TorchServe's settings; each run renders its own copy
MODEL_STORE = REPO_ROOT / "model_store"
ARCHIVE_NAME = f"{MODEL_NAME}.mar"  # the archive's file name in a model store
DEFAULT_MAR = MODEL_STORE / ARCHIVE_NAME  # what `make mar` builds and `make run` serves
