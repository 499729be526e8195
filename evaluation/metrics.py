"""Classification metrics with confidence intervals, in plain numpy (no TensorFlow, no sklearn).

Conventions:
- labels are integer class indices; for binary metrics 1 is the positive (COVID) class;
- a confusion matrix has the TRUE class on rows and the PREDICTED class on columns;
- a proportion is reported as ``{"value", "ci95": [low, high], "k", "n"}`` with a Wilson score
  interval (good coverage also for small n and for proportions near 0 or 1); an undefined
  proportion (n == 0) has ``value`` and ``ci95`` None, so the result is always valid JSON;
- ROC AUC is rank based (Mann-Whitney U with mid-ranks: a tie counts one half), its 95% CI is a
  stratified percentile bootstrap (``auc_bootstrap_ci``) or DeLong's (``auc_delong_ci``);
- those intervals treat every film as independent. When a patient has several films they are
  not, and ``patient_bootstrap`` adds the intervals of resampling whole patients.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


# --------------------------------------------------------------------------------------------
# Proportions
# --------------------------------------------------------------------------------------------


def logit(p) -> np.ndarray:
    """log(p / (1 - p)), with p clipped to [1e-7, 1 - 1e-7] so 0 and 1 stay finite."""
    p = np.clip(np.asarray(p), 1e-7, 1.0 - 1e-7)  # keeps the dtype: float32 scores stay float32
    return np.log(p) - np.log1p(-p)


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials; (nan, nan) when n == 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"successes {k} not in [0, {n}]")
    p = k / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # k == 0 and k == n give exactly 0 / 1 mathematically; round-off may leave 1e-17 or 1 - 2e-16,
    # an interval that would not hold its own value.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def proportion(k: int, n: int) -> dict:
    """``{"value": k/n, "ci95": [lo, hi], "k": k, "n": n}`` (value/ci95 None when n == 0)."""
    k, n = int(k), int(n)
    if n == 0:
        return {"value": None, "ci95": None, "k": k, "n": n}
    lo, hi = wilson_interval(k, n)
    return {"value": k / n, "ci95": [lo, hi], "k": k, "n": n}


# --------------------------------------------------------------------------------------------
# Confusion matrices
# --------------------------------------------------------------------------------------------


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: Optional[int] = None) -> np.ndarray:
    """int64 [C, C]: entry [t, p] counts examples of true class t predicted as p."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} labels but {y_pred.size} predictions")
    if num_classes is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1)) + 1)
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= num_classes):
        raise ValueError(f"class indices must be in [0, {num_classes})")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def binary_counts(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
    """{"tp", "fp", "tn", "fn"} of 0/1 labels and 0/1 predictions (1 = positive)."""
    cm = confusion_matrix(np.asarray(y_true) != 0, np.asarray(y_pred) != 0, 2)
    return {"tn": int(cm[0, 0]), "fp": int(cm[0, 1]), "fn": int(cm[1, 0]), "tp": int(cm[1, 1])}


def binary_metrics_from_counts(tp: int, fp: int, tn: int, fn: int) -> dict:
    """Sensitivity (recall), specificity, precision (PPV), NPV and accuracy, each with its Wilson CI."""
    return {
        "sensitivity": proportion(tp, tp + fn),
        "specificity": proportion(tn, tn + fp),
        "precision": proportion(tp, tp + fp),
        "npv": proportion(tn, tn + fn),
        "accuracy": proportion(tp + tn, tp + fp + tn + fn),
        "counts": {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)},
    }


def binary_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
    c = binary_counts(y_true, y_pred)
    return binary_metrics_from_counts(c["tp"], c["fp"], c["tn"], c["fn"])


# --------------------------------------------------------------------------------------------
# ROC and AUC
# --------------------------------------------------------------------------------------------


def midranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span (float64)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    n = x.size
    ranks = np.empty(n, dtype=np.float64)
    if n == 0:
        return ranks
    # Boundaries of runs of equal values.
    starts = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]]))
    ends = np.concatenate([starts[1:], [n]])
    mean_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _ranked_scores(scores) -> np.ndarray:
    """float64 [N]; ValueError when some are NaN or infinite (a NaN has no rank: sorted last, it would
    count as the highest score and the AUC would be a number without meaning)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    bad = int(np.count_nonzero(~np.isfinite(s)))
    if bad:
        raise ValueError(f"{bad} of {s.size} scores are NaN or infinite: no ranking to measure")
    return s


def _split_scores(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1) != 0
    s = _ranked_scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    return s[y], s[~y]


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> Optional[float]:
    """P(score of a random positive > score of a random negative) + 0.5 P(equal); None if one class is absent."""
    pos, neg = _split_scores(y_true, scores)
    n1, n0 = pos.size, neg.size
    if n1 == 0 or n0 == 0:
        return None
    ranks = midranks(np.concatenate([pos, neg]))
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def roc_curve(y_true: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, predicting positive when score >= threshold.

    Starts at (0, 0) with threshold +inf and ends at (1, 1). The trapezoidal area under it equals
    ``roc_auc`` (ties become diagonal segments, i.e. count one half).
    """
    y = np.asarray(y_true).reshape(-1) != 0
    s = _ranked_scores(scores)
    n1, n0 = int(y.sum()), int((~y).sum())
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.concatenate([s_sorted[1:] != s_sorted[:-1], [True]]) if s.size else np.zeros(0, bool)
    tps = np.cumsum(y_sorted)[last_of_run]
    fps = np.cumsum(~y_sorted)[last_of_run]
    thresholds = np.concatenate([[np.inf], s_sorted[last_of_run]])
    tpr = np.concatenate([[0.0], tps / n1 if n1 else np.zeros_like(tps, dtype=float)])
    fpr = np.concatenate([[0.0], fps / n0 if n0 else np.zeros_like(fps, dtype=float)])
    return fpr, tpr, thresholds


def auc_bootstrap_ci(y_true: Sequence[int], scores: Sequence[float], n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> Optional[tuple[float, float]]:
    """Percentile bootstrap CI of the AUC, resampling positives and negatives separately (stratified).

    Deterministic for a given seed. None when one class is absent. With perfectly separated
    scores every replicate has AUC 1 and the interval is [1, 1]: read it together with n.
    """
    pos, neg = _split_scores(y_true, scores)
    n1, n0 = pos.size, neg.size
    if n1 == 0 or n0 == 0:
        return None
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        p = pos[rng.integers(0, n1, n1)]
        q = np.sort(neg[rng.integers(0, n0, n0)])
        below = np.searchsorted(q, p, side="left")  # negatives strictly below each positive
        equal = np.searchsorted(q, p, side="right") - below
        aucs[b] = (below.sum() + 0.5 * equal.sum()) / (n1 * n0)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(aucs, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def auc_delong(y_true: Sequence[int], scores: Sequence[float]) -> Optional[tuple[float, float]]:
    """(AUC, variance) by DeLong et al. (1988), fast mid-rank form (Sun & Xu 2014)."""
    pos, neg = _split_scores(y_true, scores)
    n1, n0 = pos.size, neg.size
    if n1 == 0 or n0 == 0:
        return None
    all_ranks = midranks(np.concatenate([pos, neg]))
    pos_ranks, neg_ranks = midranks(pos), midranks(neg)
    auc = (all_ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    v10 = (all_ranks[:n1] - pos_ranks) / n0  # per positive: fraction of negatives it beats
    v01 = 1.0 - (all_ranks[n1:] - neg_ranks) / n1  # per negative: fraction of positives beating it
    s10 = np.var(v10, ddof=1) if n1 > 1 else 0.0
    s01 = np.var(v01, ddof=1) if n0 > 1 else 0.0
    return float(auc), float(s10 / n1 + s01 / n0)


def auc_delong_ci(y_true: Sequence[int], scores: Sequence[float], z: float = Z95) -> Optional[tuple[float, float]]:
    """AUC +- z * DeLong standard error, clipped to [0, 1]."""
    result = auc_delong(y_true, scores)
    if result is None:
        return None
    auc, var = result
    half = z * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


MIN_AUC_CI_FILMS = 5  # fewer films in a class: no AUC interval


def auc_with_ci(y_true: Sequence[int], scores: Sequence[float], method: str = "bootstrap",
                n_boot: int = 2000, seed: int = 0) -> dict:
    """``{"value", "ci95", "method", "n_positive", "n_negative"}`` (value/ci95 None if a class is absent).

    ci95 is None too when a class has fewer than MIN_AUC_CI_FILMS films: with one negative film every
    bootstrap replicate holds it, so the interval ignores that side's uncertainty (a simulated 95 %
    interval held the true AUC 28 % of the time with 1 negative, 68 % with 2)."""
    if method not in ("bootstrap", "delong"):
        raise ValueError(f"unknown AUC CI method {method!r}: bootstrap or delong")
    pos, neg = _split_scores(y_true, scores)
    value = roc_auc(y_true, scores)
    if min(pos.size, neg.size) < MIN_AUC_CI_FILMS:
        return {"value": value, "ci95": None, "method": f"no interval: under {MIN_AUC_CI_FILMS} films of a class",
                "n_positive": int(pos.size), "n_negative": int(neg.size)}
    if method == "bootstrap":
        ci = auc_bootstrap_ci(y_true, scores, n_boot=n_boot, seed=seed)
        label = f"stratified percentile bootstrap ({n_boot} resamples, seed {seed})"
    else:
        ci = auc_delong_ci(y_true, scores)
        label = "DeLong"
    return {"value": value, "ci95": list(ci) if ci else None, "method": label,
            "n_positive": int(pos.size), "n_negative": int(neg.size)}


MIN_BOOTSTRAP_PATIENTS = 5  # fewer patients in a class: no resampling interval (it would look narrow, not be)
_BOOTSTRAP_CHUNK = 200  # replicates weighed at once: memory stays ~ chunk x films, whatever n_boot


def patient_bootstrap(y_pos: Sequence[bool], pred_pos: Sequence[bool], scores: Sequence[float],
                      groups: Sequence[str], correct: Optional[Sequence[bool]] = None, n_boot: int = 2000,
                      seed: int = 0, level: float = 0.95) -> dict:
    """Percentile CIs of sensitivity, specificity, accuracy and AUC when whole patients (``groups``:
    the curation's patient / near-duplicate groups) are resampled with replacement. A patient's
    films are alike, so the per-film intervals overstate the evidence when some patient has several.
    Each replicate weighs every film by how often its group was drawn (the same figures as the
    explicit resample). Accuracy counts ``correct`` films (default: the binary decision is right; a
    three-class report passes its own).

    A metric is None when fewer than MIN_BOOTSTRAP_PATIENTS patients hold films of its class (for
    AUC: of either class): resampling a handful of patients gives intervals that look narrow and
    are not. A replicate that drew no film of the class is left out of that metric's percentiles;
    ``replicates`` says how many each metric used. Deterministic for a given seed.
    ``{"patients", "films", "method", "replicates": {metric: n}, metric: [lo, hi] or None}``."""
    y = np.asarray(y_pos, bool).reshape(-1)
    hit = np.asarray(pred_pos, bool).reshape(-1) == y
    s = _ranked_scores(scores)
    right = hit if correct is None else np.asarray(correct, bool).reshape(-1)
    if not (y.size == hit.size == s.size == right.size == len(groups)):
        raise ValueError("labels, predictions, scores, groups and correct must have one entry per film")
    _, group_of = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    n_groups = int(group_of.max()) + 1 if y.size else 0
    names = ("sensitivity", "specificity", "accuracy", "auc")
    enough = {"sensitivity": np.unique(group_of[y]).size >= MIN_BOOTSTRAP_PATIENTS,
              "specificity": np.unique(group_of[~y]).size >= MIN_BOOTSTRAP_PATIENTS,
              "accuracy": n_groups >= MIN_BOOTSTRAP_PATIENTS}
    enough["auc"] = enough["sensitivity"] and enough["specificity"]
    replicates = {name: [] for name in names if enough[name]}
    if replicates:
        # Weighted Mann-Whitney: each (positive, negative) pair counts the product of their weights.
        order = np.argsort(s[~y], kind="stable")
        neg_sorted = s[~y][order]
        below, upto = (np.searchsorted(neg_sorted, s[y], side=side) for side in ("left", "right"))
        rng = np.random.default_rng(seed)
        for start in range(0, n_boot, _BOOTSTRAP_CHUNK):
            drawn = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=min(_BOOTSTRAP_CHUNK, n_boot - start))
            weight = drawn[:, group_of].astype(np.float64)  # (replicate, film)
            with np.errstate(invalid="ignore", divide="ignore"):  # a replicate without the class: NaN, left out
                for name, films, good in (("sensitivity", y, hit), ("specificity", ~y, hit),
                                          ("accuracy", np.ones_like(y), right)):
                    if name in replicates:
                        replicates[name].append((weight[:, films] * good[films]).sum(1) / weight[:, films].sum(1))
                if "auc" in replicates:
                    w_pos, w_neg = weight[:, y], weight[:, ~y][:, order]
                    cumulative = np.concatenate([np.zeros((len(drawn), 1)), np.cumsum(w_neg, axis=1)], axis=1)
                    beaten = cumulative[:, below] + 0.5 * (cumulative[:, upto] - cumulative[:, below])
                    replicates["auc"].append((w_pos * beaten).sum(1) / (w_pos.sum(1) * w_neg.sum(1)))
    alpha = (1.0 - level) / 2.0
    out = {"patients": n_groups, "films": int(y.size),
           "method": f"percentile bootstrap over patients ({n_boot} resamples, seed {seed})", "replicates": {}}
    for name in names:
        values = np.concatenate(replicates[name]) if name in replicates else np.empty(0)
        values = values[np.isfinite(values)]
        out["replicates"][name] = int(values.size)
        out[name] = [float(v) for v in np.quantile(values, [alpha, 1.0 - alpha])] if values.size else None
    return out


# --------------------------------------------------------------------------------------------
# Multi-class
# --------------------------------------------------------------------------------------------


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """2TP / (2TP + FP + FN); 0.0 when the class is never true nor predicted (tp = fp = fn = 0)."""
    denominator = 2 * tp + fp + fn
    return 2.0 * tp / denominator if denominator else 0.0


def one_vs_rest(cm: np.ndarray, class_index: int) -> dict:
    """Binary counts of one class against the rest, from a [C, C] confusion matrix."""
    cm = np.asarray(cm)
    tp = int(cm[class_index, class_index])
    fn = int(cm[class_index].sum() - tp)
    fp = int(cm[:, class_index].sum() - tp)
    tn = int(cm.sum() - tp - fn - fp)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def per_class_metrics(cm: np.ndarray, classes: Sequence[str], probabilities: Optional[np.ndarray] = None,
                      y_true: Optional[Sequence[int]] = None, auc_method: str = "bootstrap", n_boot: int = 2000,
                      seed: int = 0) -> dict:
    """Per class one-vs-rest: sensitivity/specificity/precision/accuracy (Wilson CIs), F1, support, AUC.

    AUC needs the [N, C] probabilities and the labels; it uses each class's own probability column.
    """
    out = {}
    y = None if y_true is None else np.asarray(y_true).reshape(-1)
    for i, name in enumerate(classes):
        c = one_vs_rest(cm, i)
        entry = binary_metrics_from_counts(c["tp"], c["fp"], c["tn"], c["fn"])
        entry["f1"] = f1_from_counts(c["tp"], c["fp"], c["fn"])
        entry["support"] = c["tp"] + c["fn"]
        if probabilities is not None and y is not None:
            entry["auc"] = auc_with_ci(y == i, np.asarray(probabilities)[:, i], method=auc_method, n_boot=n_boot,
                                       seed=seed)
        out[name] = entry
    return out


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 scores (classes absent from truth and predictions score 0)."""
    cm = np.asarray(cm)
    scores = [f1_from_counts(**{k: v for k, v in one_vs_rest(cm, i).items() if k != "tn"}) for i in range(cm.shape[0])]
    return float(np.mean(scores)) if scores else 0.0


def absent_classes(cm: np.ndarray, classes: Sequence[str]) -> list[str]:
    """The classes neither true nor predicted in ``cm``: :func:`macro_f1` counts each as F1 0."""
    cm = np.asarray(cm)
    return [name for i, name in enumerate(classes) if not cm[i].any() and not cm[:, i].any()]


def absent_classes_text(absent: Sequence[str]) -> Optional[str]:
    """The one sentence every report prints beside a macro-F1 lowered by absent classes; None without any
    (a reader sees a low macro-F1, not why)."""
    if not absent:
        return None
    return f"macro-F1 counts {', '.join(absent)} as F1 0: neither true nor predicted in this data"


def sources_below_pooled_auc(pooled: dict, per_source: Mapping[str, dict]) -> list[str]:
    """Sources whose within-source AUC interval lies wholly below the pooled AUC's interval.

    Pooled AUC also rewards telling the sources apart (one source mostly COVID, another mostly
    normal); within one source only the disease separates the classes. A source whose whole
    interval sits below the pooled one is where the model scores something other than the disease.
    """
    if not pooled.get("ci95"):
        return []
    return [source for source, m in per_source.items()
            if (m.get("auc") or {}).get("ci95") and m["auc"]["ci95"][1] < pooled["ci95"][0]]


def within_source_warning(sources: Sequence[str]) -> str:
    """The one sentence every report (terminal, HTML, model card) prints for flagged sources."""
    return (f"within-source AUC wholly below the pooled AUC's interval: {', '.join(sources)}; there the model "
            "separates something other than the disease (the hospital, its markers)")


def patient_ci_text(boot: Mapping) -> str:
    """One line: the 95% intervals of resampling patients, for films that are not independent."""
    shown = "; ".join(f"{name} [{boot[name][0]:.3f}, {boot[name][1]:.3f}]"
                      for name in ("sensitivity", "specificity", "accuracy", "auc") if boot.get(name))
    return (f"95% CI resampling the {boot['patients']} patients of {boot['films']} films (some have several): "
            + (shown or f"too few patients (under {MIN_BOOTSTRAP_PATIENTS} in a class)"))
