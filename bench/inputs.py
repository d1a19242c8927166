"""What every benchmark sends and to whom: the photos, the engines served side by side, the gateway's key.

Imports nothing of `bench` itself, so every benchmark (run, insight, serving_defaults) takes these from
here and none is another's library.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# served side by side (bench/lineup.py skips what the CPU cannot run as itself); "eager" is measured in process only
ENGINES = ("onnx", "openvino-fp32", "openvino-bf16", "onnx-int8", "openvino-int8", "auto")
BENCH_KEY = "ica_bench-key"  # the gateway's API key in every benchmark
GATEWAY_HEADERS = {"X-API-Key": BENCH_KEY, "Content-Type": "image/jpeg"}
PHOTO_SIZE = (816, 612)  # 0.5 MP, a phone photo scaled for upload
LARGE_PHOTO_SIZE = (4000, 3000)  # 12 MP, a phone photo as taken


def photo(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG (smooth gradients plus sensor-like noise, quality 90)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    tint = np.full((height, width, 1), 16.0 * (seed % 16), dtype=np.float32)
    base = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)), tint], 2)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def photos(count: int = 16) -> list[bytes]:
    """The images a benchmark cycles through: `count` different 0.5 MP photos."""
    return [photo(*PHOTO_SIZE, seed) for seed in range(count)]
