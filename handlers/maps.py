"""Class activation maps, embeddings and where the model's input lies on the original image.

ResNet50 ends in global average pooling and one linear layer, so for layer4's map A (2048 x 7 x 7) and the
final layer's weight W (1000 x 2048) the class activation map of class c is exact, without gradients:

    CAM_c = ReLU(sum_k W[c, k] * A_k)            (7 x 7; its mean plus the bias is class c's logit)

The embedding is the pooled vector mean(A), L2-normalised. The 7x7 grid covers the model's 224x224 input,
which is the centre crop of the resized image; `crop_in_original` maps that crop back to the upright
original's pixels, so a client can lay the grid exactly where the model looked.
"""

from __future__ import annotations

import base64

import numpy as np

from contract.bounds import resized_size
from handlers.engines import Floats
from handlers.imaging import crop_box


def class_maps(features: Floats, weight: Floats, classes: list[int]) -> Floats:
    """(len(classes), 7, 7) maps of one image's layer4 features (2048, 7, 7) for the given classes."""
    channels, rows, cols = features.shape
    maps: Floats = np.maximum(weight[classes] @ features.reshape(channels, rows * cols), 0.0)  # ufuncs: Any
    return maps.reshape(len(classes), rows, cols)


def l2_normalised(pooled: Floats) -> Floats:
    """The L2-normalised float32 embedding of one pooled vector (2048,)."""
    vector = pooled.astype(np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def encode_vector(vector: Floats) -> str:
    """float32 little-endian bytes, base64: exact and a quarter the size of a JSON list."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


def crop_in_original(width: int, height: int) -> list[float]:
    """[left, top, right, bottom] of the model's input crop, in pixels of the upright image (width x height)."""
    resized_width, resized_height = resized_size(width, height)
    left, top, right, bottom = crop_box(resized_width, resized_height)
    sx, sy = width / resized_width, height / resized_height
    return [left * sx, top * sy, right * sx, bottom * sy]
