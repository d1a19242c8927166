"""The fold of a linear model fitted on standardised, rotated vectors into ResNet50's fc (modelserver/head_fit.py):
the served graph's softmax(weight @ pooled + bias) must be the fitted model's probabilities."""

from __future__ import annotations

import numpy as np

from handlers.engines import softmax
from modelserver.head_fit import fold, logits

RNG = np.random.default_rng(0)


def pooled(count: int = 16, dims: int = 64) -> np.ndarray:
    return RNG.gamma(2.0, 0.5, size=(count, dims))  # non-negative, as the pooled ReLU map's mean is


def test_the_fold_reproduces_the_standardised_rotated_model() -> None:
    x = pooled()
    mean, scale = x.mean(axis=0), x.std(axis=0) + 0.1
    components = np.linalg.qr(RNG.normal(size=(64, 12)))[0].T  # (12, 64): orthonormal rows, as PCA's
    centre = RNG.normal(size=64) * 0.01
    coef, intercept = RNG.normal(size=(5, 12)), RNG.normal(size=5)
    fitted = (((x - mean) / scale - centre) @ components.T) @ coef.T + intercept
    weight, bias = fold(coef, intercept, mean, scale, components, centre)
    assert weight.shape == (5, 64) and bias.shape == (5,) and weight.dtype == np.float32
    np.testing.assert_allclose(logits(weight, bias, x), fitted, rtol=1e-4, atol=1e-4)


def test_without_rotation_only_the_scaling_is_folded() -> None:
    x = pooled()
    mean, scale = x.mean(axis=0), x.std(axis=0) + 0.1
    coef, intercept = RNG.normal(size=(3, 64)), RNG.normal(size=3)
    weight, bias = fold(coef, intercept, mean, scale)
    np.testing.assert_allclose(logits(weight, bias, x), ((x - mean) / scale) @ coef.T + intercept, rtol=1e-4, atol=1e-4)


def test_a_binary_model_becomes_two_rows_with_the_same_probabilities() -> None:
    x = pooled()
    mean, scale = x.mean(axis=0), np.ones(64)
    coef, intercept = RNG.normal(size=(1, 64)) * 0.3, np.array([0.2])
    weight, bias = fold(coef, intercept, mean, scale)
    assert weight.shape == (2, 64)
    second = 1 / (1 + np.exp(-((x - mean) @ coef[0] + intercept[0])))  # the fitted model's P(class 1)
    probabilities = softmax(logits(weight, bias, x).astype(np.float32))
    np.testing.assert_allclose(probabilities[:, 1], second, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-6)
