"""A new final layer for ResNet50: multinomial logistic regression on the pooled 2048-d vectors.

scikit-learn does the fit: the vectors are standardised (the training part's per-feature mean and scale) and
turned onto their principal axes (PCA, all components kept: at most one per training photo), and the inverse
regularisation strength C is chosen among C_GRID by stratified k-fold cross-validation on the training part
alone, by log-loss (LogisticRegressionCV). The rotation changes nothing but the time: an L2-regularised linear
model's weights lie in the span of its (centred) training vectors, so fitting there is the same optimum in a
few hundred dimensions instead of 2048 (3x faster on 160 photos). BLAS runs on one thread during the fit: on
a busy 2-core machine OpenBLAS's threads spinning against each other made it 30x slower.

`fold` turns the fitted pipeline into ResNet50's fc, acting on the pooled vector as the served graph computes
it: softmax(weight @ pooled + bias) is the pipeline's predict_proba (tests/unit/test_head_fold.py,
tests/integration/test_train_head.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from modelserver.holdout import CV_FOLDS

C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 13))  # 1e-4 .. 100, half a decade apart
MAX_ITER = 2000


@dataclass(frozen=True)
class Head:
    """The final layer (weight (N, 2048), bias (N,), float32) and how its regularisation was chosen."""

    weight: np.ndarray
    bias: np.ndarray
    c: float
    cv_log_loss: dict[float, float]  # C → mean log-loss over the folds
    cv_accuracy: float  # of the chosen C, mean over the folds


def fold(
    coef: np.ndarray,
    intercept: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    components: np.ndarray | None = None,
    centre: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """fc's (weight, bias) for a linear model (coef, intercept) fitted on z = (((x - mean) / scale) - centre) @
    components.T (no rotation when components is None). A binary model's one row w (the second class's
    log-odds) becomes the rows -w/2 and +w/2, whose softmax is the same sigmoid."""
    if coef.shape[0] == 1:
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    coef, intercept = coef.astype(np.float64), intercept.astype(np.float64)
    if components is not None:
        coef = coef @ components
        intercept = intercept - coef @ (centre if centre is not None else 0.0)
    weight = coef / scale
    bias = intercept - weight @ mean
    return weight.astype(np.float32), bias.astype(np.float32)


def logits(weight: np.ndarray, bias: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """What the served graph's fc computes from pooled vectors (M, 2048) → (M, classes)."""
    out: np.ndarray = pooled.astype(np.float64) @ weight.T.astype(np.float64) + bias
    return out


def fit(vectors: np.ndarray, targets: np.ndarray, photos: np.ndarray, seed: int) -> tuple[Head, Any]:
    """The head fitted on `vectors` (M, 2048) with class indices `targets` (M,), and the fitted scikit-learn
    pipeline whose predict_proba the head reproduces. `photos` (M,) says which photo each vector comes from:
    a photo's views stay in one fold."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    folds = list(StratifiedGroupKFold(CV_FOLDS, shuffle=True, random_state=seed).split(vectors, targets, photos))
    model = LogisticRegressionCV(
        Cs=list(C_GRID),
        cv=folds,
        scoring="neg_log_loss",
        max_iter=MAX_ITER,
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
    )
    pipeline = make_pipeline(StandardScaler(), PCA(svd_solver="full"), model)
    with threadpool_limits(1):
        pipeline.fit(vectors, targets)
        rotated = pipeline[:2].transform(vectors)
        chosen = float(np.ravel(model.C_)[0])
        accuracy = cross_val_score(LogisticRegression(C=chosen, max_iter=MAX_ITER), rotated, targets, cv=folds).mean()
    scaler, pca = pipeline[0], pipeline[1]
    weight, bias = fold(model.coef_, model.intercept_, scaler.mean_, scaler.scale_, pca.components_, pca.mean_)
    losses = -np.asarray(model.scores_).reshape(len(folds), len(C_GRID)).mean(axis=0)
    cv = {float(c): round(float(loss), 4) for c, loss in zip(C_GRID, losses, strict=True)}
    return Head(weight, bias, chosen, cv, round(float(accuracy), 4)), pipeline
