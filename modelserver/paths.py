"""Where the launcher, the benchmarks and the tests find things in the checkout.

Standard library and handlers/contract.py only: `python -m modelserver ready` (the serve image's health
check) imports it.
"""

from __future__ import annotations

from pathlib import Path

from handlers.contract import MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO_ROOT / "config.properties"  # TorchServe's settings; each run renders its own copy
MODEL_STORE = REPO_ROOT / "model_store"
DEFAULT_MAR = MODEL_STORE / f"{MODEL_NAME}.mar"  # what `make mar` builds and `make run` serves
