"""Where the gateway's static files are (gateway/static/, shipped as package data): shared by the demo page's
router and the /docs router, so that neither imports the other."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).parent / "static"
