"""The handler's vectors on the wire: float32 little-endian bytes."""

from __future__ import annotations

import struct


def floats(raw: bytes) -> list[float]:
    """float32 little-endian bytes → Python floats (exact)."""
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
