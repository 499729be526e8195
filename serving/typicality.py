"""How unlike the training films an input is: the served model's own check for inputs it was never
trained on (a CT slice, a lateral film, an abdominal radiograph, a photograph), which it would
otherwise score as confidently as a chest film.

The measure is the Mahalanobis distance of the input's pooled backbone features (the layer each
member's classifier head reads, all members side by side) from the training films' features, with a
Ledoit-Wolf shrunk covariance: the features have more dimensions (2 x 1,280 for `full`'s MobileNetV2
pair) than a split has training films, so the plain sample covariance is singular. Distances are
divided by the distance at ``quantile`` of the *eval* films (training films sit closer to their own
fit than new films do), so the served ``atypicality`` is above 1 for about 1 - quantile of films like
the training ones, and for most films unlike them. It is reported next to the prediction, never used
to change it.

Fitted in the Trainer (numpy, :func:`fit`), computed in the serving graph (:func:`tf_check`), from the
same pass of the backbones that scores the film.
"""
from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_QUANTILE = 0.95
MIN_FIT_FILMS = 10  # fewer: no covariance worth the name (and no check is exported)
ATYPICALITY_OUTPUT = "atypicality"  # distance / threshold, [N] float32
ATYPICAL_OUTPUT = "atypical"  # atypicality > 1, [N] bool


def shrunk_covariance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, covariance, shrinkage) of the rows of ``x`` [N, D]: the Ledoit-Wolf estimate, the
    sample covariance pulled towards a scaled identity by the amount that minimises the expected
    squared error (Ledoit & Wolf 2004; the same formula as scikit-learn's LedoitWolf)."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    mean = x.mean(axis=0)
    centred = x - mean
    sample = centred.T @ centred / n
    mu = np.trace(sample) / d
    squared = centred ** 2
    beta_sum = float(np.sum(squared.T @ squared)) / n  # sum_ij mean_k x_ki^2 x_kj^2
    delta_sum = float(np.sum(sample ** 2))
    beta = (beta_sum - delta_sum) / (d * n)
    delta = (delta_sum - 2 * mu * np.trace(sample) + d * mu ** 2) / d
    shrinkage = 0.0 if delta <= 0 else float(min(beta, delta) / delta)
    covariance = (1 - shrinkage) * sample + shrinkage * mu * np.eye(d)
    return mean, covariance, shrinkage


@dataclasses.dataclass(frozen=True)
class Typicality:
    """The fitted check. The shrunk covariance is stored by its eigenvectors above its smallest
    eigenvalue (``floor``): with fewer training films than features every other direction has exactly
    that eigenvalue (the sample covariance has rank < films), so [D, rank] instead of [D, D] numbers
    give the same distance (`full`'s covid-vs-normal: 2,560 x ~1,100 instead of 2,560 x 2,560)."""
    mean: np.ndarray  # [D]
    basis: np.ndarray  # [D, rank]: orthonormal eigenvectors whose eigenvalue is above `floor`
    scales: np.ndarray  # [rank]: 1 / sqrt(their eigenvalues)
    floor: float  # the eigenvalue of every direction outside `basis`
    threshold: float  # the eval films' distance at `quantile`
    quantile: float
    shrinkage: float
    train_films: int
    eval_films: int
    eval_atypical: int  # eval films above the threshold

    def distances(self, features: np.ndarray) -> np.ndarray:
        centred = np.asarray(features, dtype=np.float64) - self.mean
        along = centred @ self.basis
        outside = centred - along @ self.basis.T
        return np.sqrt(np.sum((along * self.scales) ** 2, axis=1) + np.sum(outside ** 2, axis=1) / self.floor)

    def atypicality(self, features: np.ndarray) -> np.ndarray:
        return self.distances(features) / self.threshold

    def summary(self, features_name: str) -> dict:
        """What the model card and ``predict`` say about the check (no arrays)."""
        return {
            "features": features_name,
            "dimensions": int(self.mean.shape[0]),
            "rank": int(self.basis.shape[1]),
            "quantile": self.quantile,
            "threshold_distance": self.threshold,
            "shrinkage": self.shrinkage,
            "train_films": self.train_films,
            "eval_films": self.eval_films,
            "eval_atypical": self.eval_atypical,
        }


def min_eval_films(quantile: float) -> int:
    """Validation films needed so that about two of them are expected above the quantile: fewer and
    the threshold is one film's distance (or none), not a quantile."""
    return int(np.ceil(2 / (1 - quantile) - 1e-9))


def fit(train_features: np.ndarray, eval_features: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> Typicality:
    """The check fitted on the training films' features, its threshold set on the eval films'."""
    train_features = np.asarray(train_features, dtype=np.float64)
    eval_features = np.asarray(eval_features, dtype=np.float64)
    if not 0.5 <= quantile < 1:
        raise ValueError(f"the atypical-input quantile must be in [0.5, 1), got {quantile}")
    if len(train_features) < MIN_FIT_FILMS or len(eval_features) < min_eval_films(quantile):
        raise ValueError(f"too few films to fit the atypical-input check ({len(train_features)} training, "
                         f"{len(eval_features)} validation; needs {MIN_FIT_FILMS} and, for the {quantile:g} "
                         f"quantile, {min_eval_films(quantile)})")
    mean, covariance, shrinkage = shrunk_covariance(train_features)
    values, vectors = np.linalg.eigh(covariance)
    # Clipped for the all-constant features of a degenerate fit; the shrinkage keeps real ones positive.
    floor = max(float(values.min()), 1e-12)
    # Directions within a billionth of the floor are counted as on it: distances change by as little.
    kept = values > floor * (1 + 1e-9)
    unscaled = Typicality(mean, vectors[:, kept], 1 / np.sqrt(values[kept]), floor, 1.0, quantile, shrinkage,
                          len(train_features), len(eval_features), 0)
    distances = unscaled.distances(eval_features)
    threshold = float(np.quantile(distances, quantile))
    above = distances > threshold
    # Never on one film's distance, where the served float32 arithmetic could land either side: midway
    # between the films either side, or (the quantile on the farthest films, tied) just beyond them.
    # Serving then flags exactly the eval films counted here.
    if above.any():
        threshold = float((distances[~above].max() + distances[above].min()) / 2)
    else:
        threshold = float(distances.max()) * (1 + 1e-4)
    if not threshold > 0:
        raise ValueError("the eval films' feature distances are all zero: the atypical-input check cannot be fitted")
    return dataclasses.replace(unscaled, threshold=threshold, eval_atypical=int(above.sum()))


def tf_check(scorer, fitted: Typicality):
    """A tf.Module for the serving graph: called on ``image_xf``, it returns (the model's scores,
    ``atypicality`` [N]) from one pass of ``scorer`` (``image_xf`` -> [scores, features], e.g.
    trainer.models.scorer_with_features). Its arrays are variables, so the SavedModel stores them once
    for every signature."""
    import tensorflow as tf

    class TypicalityCheck(tf.Module):
        def __init__(self):
            super().__init__(name="typicality_check")
            self.scorer = scorer
            self.mean = tf.Variable(fitted.mean.astype(np.float32), trainable=False, name="mean")
            self.basis = tf.Variable(fitted.basis.astype(np.float32), trainable=False, name="basis")
            self.scales = tf.Variable(fitted.scales.astype(np.float32), trainable=False, name="scales")
            self.floor = tf.Variable(np.float32(fitted.floor), trainable=False, name="floor")
            self.threshold = tf.Variable(np.float32(fitted.threshold), trainable=False, name="threshold")

        def atypicality(self, features):
            centred = tf.cast(features, tf.float32) - self.mean
            along = tf.matmul(centred, self.basis)
            # The part outside the basis is computed, not taken as |centred|^2 - |along|^2, whose
            # difference of two large squares would lose the small residual of a typical film.
            outside = centred - tf.matmul(along, self.basis, transpose_b=True)
            squared = (tf.reduce_sum(tf.square(along * self.scales), axis=1)
                       + tf.reduce_sum(tf.square(outside), axis=1) / self.floor)
            return tf.sqrt(squared) / self.threshold

        def __call__(self, image_xf):
            scores, features = self.scorer(image_xf, training=False)
            return scores, self.atypicality(features)

    return TypicalityCheck()


def fitted_check(scorer, families, train_features: np.ndarray, eval_features: np.ndarray,
                 quantile: float = DEFAULT_QUANTILE):
    """(the serving-graph check, its summary for the model metadata): :func:`fit` on the features
    ``scorer`` gave the training and eval films, :func:`tf_check` around ``scorer``. Raises ValueError
    as :func:`fit` does."""
    fitted = fit(train_features, eval_features, quantile)
    return tf_check(scorer, fitted), fitted.summary(f"pooled features of {' + '.join(families)}")


def check_text(summary: dict) -> str:
    """One line on the fitted check, from the model metadata's ``typicality``."""
    return (f"atypical-input check: Mahalanobis distance of the {summary['features']} ({summary['dimensions']}) "
            f"from {summary['train_films']} training films; above the {summary['quantile']:g} quantile of "
            f"{summary['eval_films']} validation films ({summary['eval_atypical']} of them) = atypical. "
            "Reported with each prediction, never changes it")


def rate_text(entry: dict) -> str:
    """How many evaluated films were atypical, from a report's ``atypical`` proportion."""
    ci = entry.get("ci95")
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    value = f" = {entry['value']:.3f}" if entry.get("value") is not None else ""
    return (f"atypical inputs (unlike the training films; scored anyway): {entry['k']}/{entry['n']}{value}{interval}")
