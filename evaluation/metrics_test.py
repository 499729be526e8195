"""Hand-computed cases for evaluation/metrics.py."""
import itertools

import numpy as np
import pytest

from covid_cxr.evaluation import metrics


def trapezoid_area(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def test_confusion_matrix_and_binary_metrics_by_hand():
    y_true = [1, 1, 1, 0, 0, 0, 0]
    y_pred = [1, 1, 0, 0, 0, 1, 0]
    cm = metrics.confusion_matrix(y_true, y_pred, 2)
    assert cm.tolist() == [[3, 1], [1, 2]]  # rows = truth
    m = metrics.binary_metrics(y_true, y_pred)
    assert m["counts"] == {"tp": 2, "fp": 1, "tn": 3, "fn": 1}
    assert m["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert (m["sensitivity"]["k"], m["sensitivity"]["n"]) == (2, 3)
    assert m["specificity"]["value"] == pytest.approx(3 / 4)
    assert m["precision"]["value"] == pytest.approx(2 / 3)
    assert m["npv"]["value"] == pytest.approx(3 / 4)
    assert m["accuracy"]["value"] == pytest.approx(5 / 7)
    for key in ("sensitivity", "specificity", "precision", "accuracy"):
        lo, hi = m[key]["ci95"]
        assert 0.0 <= lo <= m[key]["value"] <= hi <= 1.0
    # fp != fn, so precision and NPV cannot be mistaken for sensitivity and specificity here.
    m = metrics.binary_metrics([1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 1, 1])
    assert m["counts"] == {"tp": 2, "fp": 2, "tn": 3, "fn": 1}
    assert (m["precision"]["k"], m["precision"]["n"]) == (2, 4)
    assert (m["npv"]["k"], m["npv"]["n"]) == (3, 4)
    assert (m["specificity"]["k"], m["specificity"]["n"]) == (3, 5)


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError):
        metrics.confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError):
        metrics.confusion_matrix([0, 2], [0, 1], 2)


def test_wilson_known_values():
    # Textbook values (Newcombe 1998 / any Wilson calculator).
    assert metrics.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert metrics.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert metrics.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert metrics.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert metrics.proportion(0, 0) == {"value": None, "ci95": None, "k": 0, "n": 0}


def test_auc_by_hand_with_ties():
    # positives 0.9, 0.8, 0.4 vs negatives 0.7, 0.4, 0.2, 0.1: wins 4 + 4 + 2, one tie -> 10.5 / 12.
    y = [1, 1, 1, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.4, 0.7, 0.4, 0.2, 0.1]
    assert metrics.roc_auc(y, s) == pytest.approx(10.5 / 12)
    fpr, tpr, thresholds = metrics.roc_curve(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.isinf(thresholds[0])
    assert trapezoid_area(fpr, tpr) == pytest.approx(10.5 / 12)
    assert len(thresholds) == 1 + len(set(s))


def test_auc_edge_cases():
    assert metrics.roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert metrics.roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert metrics.roc_auc([1, 0], [0.5, 0.5]) == 0.5
    assert metrics.roc_auc([1, 1], [0.5, 0.6]) is None
    assert metrics.auc_with_ci([0, 0], [0.1, 0.2])["value"] is None


def test_midranks():
    assert metrics.midranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]


def _brute_force_delong(y, s):
    pos = [v for v, t in zip(s, y) if t]
    neg = [v for v, t in zip(s, y) if not t]
    psi = np.array([[1.0 if p > q else 0.5 if p == q else 0.0 for q in neg] for p in pos])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), np.var(v10, ddof=1) / len(pos) + np.var(v01, ddof=1) / len(neg)


def test_delong_matches_brute_force():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60) + 0.4 * y, 1)  # rounding makes ties
    auc, var = metrics.auc_delong(y, s)
    ref_auc, ref_var = _brute_force_delong(y, s)
    assert auc == pytest.approx(ref_auc)
    assert var == pytest.approx(ref_var)
    lo, hi = metrics.auc_delong_ci(y, s)
    assert lo < auc < hi


def test_bootstrap_ci_is_deterministic_and_brackets_the_auc():
    rng = np.random.default_rng(0)
    y = np.array([1] * 40 + [0] * 60)
    s = rng.normal(size=100) + 1.0 * y
    auc = metrics.roc_auc(y, s)
    ci = metrics.auc_bootstrap_ci(y, s, n_boot=500, seed=1)
    assert ci == metrics.auc_bootstrap_ci(y, s, n_boot=500, seed=1)
    assert 0.0 <= ci[0] < auc < ci[1] <= 1.0
    # The bootstrap and DeLong agree on the width (0.202 both here): a bootstrap that resampled only
    # one class (0.124) or gave a 90 % interval (0.176) would not.
    d_lo, d_hi = metrics.auc_delong_ci(y, s)
    assert abs((ci[1] - ci[0]) - (d_hi - d_lo)) < 0.02
    full = metrics.auc_with_ci(y, s, n_boot=200)
    assert full["value"] == pytest.approx(auc) and full["n_positive"] == 40 and full["n_negative"] == 60


@pytest.mark.parametrize("k, n", [(0, 35), (57, 57), (0, 1), (1, 1), (3, 3)])
def test_a_wilson_interval_at_zero_or_all_holds_its_own_value_exactly(k, n):
    lo, hi = metrics.wilson_interval(k, n)
    assert lo <= k / n <= hi and (lo == 0.0 if k == 0 else hi == 1.0)
    assert 0.0 < hi < 1.0 if k == 0 else 0.0 < lo < 1.0  # the other side is a real bound


def test_no_auc_interval_from_a_handful_of_films_of_one_class():
    rng = np.random.default_rng(3)
    for n_neg in (1, 4):
        y = np.array([1] * 57 + [0] * n_neg)
        auc = metrics.auc_with_ci(y, rng.normal(size=y.size) + y, n_boot=100)
        assert auc["value"] is not None and auc["ci95"] is None and auc["n_negative"] == n_neg
        assert auc["method"] == "no interval: under 5 films of a class"
    y = np.array([1] * 57 + [0] * 5)
    assert metrics.auc_with_ci(y, rng.normal(size=y.size) + y, n_boot=100)["ci95"] is not None


def test_bootstrap_auc_replicate_equals_pairwise_definition():
    # The searchsorted form inside the bootstrap equals the pairwise definition on any sample.
    y = [1, 1, 0, 0, 0]
    s = [0.3, 0.3, 0.3, 0.1, 0.5]
    pairs = [(p, q) for p, q in itertools.product([0.3, 0.3], [0.3, 0.1, 0.5])]
    expected = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs) / len(pairs)
    assert metrics.roc_auc(y, s) == pytest.approx(expected)
    assert metrics.auc_bootstrap_ci([1, 0], [0.3, 0.3], n_boot=10) == (0.5, 0.5)


def test_three_class_macro_f1_and_one_vs_rest_by_hand():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 2, 0]
    cm = metrics.confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    # F1: class 0 = 4/6, class 1 = 2/4, class 2 = 6/8.
    assert metrics.macro_f1(cm) == pytest.approx((4 / 6 + 2 / 4 + 6 / 8) / 3)
    assert metrics.one_vs_rest(cm, 2) == {"tp": 3, "fp": 1, "tn": 4, "fn": 1}
    probabilities = np.eye(3)[y_pred] * 0.8 + 0.2 / 3
    per_class = metrics.per_class_metrics(cm, ["normal", "pneumonia", "covid"], probabilities, y_true, n_boot=100)
    covid = per_class["covid"]
    assert covid["sensitivity"]["value"] == pytest.approx(3 / 4)
    assert covid["specificity"]["value"] == pytest.approx(4 / 5)
    assert covid["f1"] == pytest.approx(0.75)
    assert covid["support"] == 4
    # covid scores: 0.8667 for predicted-covid, 0.0667 otherwise -> AUC by hand:
    # positives (3 high, 1 low) vs negatives (1 high, 4 low): (3*4 + 3*0.5 + 1*0.5*4) / 20.
    assert covid["auc"]["value"] == pytest.approx((12 + 1.5 + 2) / 20)
    # all-class accuracy as evaluate.compute takes it, from the confusion matrix
    assert metrics.proportion(int(np.trace(cm)), int(cm.sum()))["value"] == pytest.approx(6 / 9)


def _films_of_patients(seed=3, patients=60):
    """Patients with 1-4 films each; a patient's films share its label and scores near each other."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, patients)
    covid = rng.random(patients) < 0.5
    groups = np.repeat([f"p{i:03d}" for i in range(patients)], sizes)
    y = np.repeat(covid, sizes)
    scores = np.clip(np.repeat(np.where(covid, 0.65, 0.35) + rng.normal(0, 0.2, patients), sizes)
                     + rng.normal(0, 0.05, y.size), 0, 1)
    return y, scores > 0.5, scores, groups


def test_patient_bootstrap_equals_resampling_patients_explicitly():
    y, pred, scores, groups = _films_of_patients()
    correct = pred == y
    got = metrics.patient_bootstrap(y, pred, scores, groups, n_boot=300, seed=5)
    # The same draws, as explicit resamples: each drawn patient's films, concatenated.
    names, group_of = np.unique(groups, return_inverse=True)
    drawn = np.random.default_rng(5).multinomial(names.size, np.full(names.size, 1 / names.size), size=300)
    replicates = {"sensitivity": [], "specificity": [], "accuracy": [], "auc": []}
    for counts in drawn:
        films = np.concatenate([np.repeat(np.flatnonzero(group_of == g), c) for g, c in enumerate(counts) if c])
        yy, cc = y[films], correct[films]
        replicates["sensitivity"].append(cc[yy].mean())
        replicates["specificity"].append(cc[~yy].mean())
        replicates["accuracy"].append(cc.mean())
        replicates["auc"].append(metrics.roc_auc(yy.astype(int), scores[films]))
    for name, values in replicates.items():
        assert got[name] == pytest.approx(list(np.quantile(values, [0.025, 0.975])), abs=1e-12), name
    assert got["patients"] == 60 and got["films"] == y.size


def test_patient_bootstrap_does_not_narrow_when_a_patient_has_more_copies():
    y, pred, scores, groups = _films_of_patients()
    once = metrics.patient_bootstrap(y, pred, scores, groups, n_boot=400)
    # Three films per film of the same patient: the same patients, the same evidence.
    thrice = metrics.patient_bootstrap(*(np.repeat(a, 3) for a in (y, pred, scores, groups)), n_boot=400)
    for name in ("sensitivity", "specificity", "accuracy", "auc"):
        assert thrice[name] == pytest.approx(once[name]), name
    # The per-film Wilson interval shrinks with the copies; the patients' does not.
    k, n = int((pred & y).sum()), int(y.sum())
    wilson_once, wilson_thrice = metrics.wilson_interval(k, n), metrics.wilson_interval(3 * k, 3 * n)
    assert wilson_thrice[1] - wilson_thrice[0] < 0.65 * (wilson_once[1] - wilson_once[0])


def test_patient_bootstrap_edge_cases():
    patients = [f"p{i}" for i in range(6)]
    one_class = metrics.patient_bootstrap([True] * 6, [True] * 5 + [False], [0.9] * 5 + [0.2], patients, n_boot=50)
    assert one_class["specificity"] is None and one_class["auc"] is None
    assert one_class["sensitivity"] is not None and one_class["replicates"]["specificity"] == 0
    # Under MIN_BOOTSTRAP_PATIENTS patients in a class: no interval rather than a falsely narrow one
    # (one patient's three wrong films would resample to [0, 0]).
    few = metrics.patient_bootstrap([True] * 6 + [False] * 3, [True] * 9, [0.9] * 9, patients + ["n", "n", "n"], n_boot=50)
    assert few["specificity"] is None and few["auc"] is None and few["sensitivity"] == [1.0, 1.0]
    assert "too few patients (under 5 in a class)" in metrics.patient_ci_text({**few, "sensitivity": None, "accuracy": None})
    separated = metrics.patient_bootstrap([True] * 6 + [False] * 6, [True] * 6 + [False] * 6,
                                          [0.9] * 6 + [0.1] * 6, [f"p{i}" for i in range(12)], n_boot=50)
    assert separated["auc"] == [1.0, 1.0] and separated["accuracy"] == [1.0, 1.0]
    # A three-class report's own `correct` (here: every film right) is what accuracy counts.
    assert metrics.patient_bootstrap([True] * 6 + [False] * 6, [False] * 12, [0.5] * 12, [f"p{i}" for i in range(12)],
                                     correct=[True] * 12, n_boot=50)["accuracy"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="one entry per film"):
        metrics.patient_bootstrap([True], [True], [0.5], ["a", "b"])


def test_patient_bootstrap_leaves_out_replicates_without_the_class():
    """5 of 40 patients are COVID: some resamples draw none, and sensitivity is undefined there."""
    groups = [f"p{i:02d}" for i in range(40)]
    y = np.arange(40) < 5
    got = metrics.patient_bootstrap(y, y, np.where(y, 0.9, 0.1), groups, n_boot=400, seed=2)
    names, group_of = np.unique(groups, return_inverse=True)
    drawn = np.random.default_rng(2).multinomial(40, np.full(40, 1 / 40), size=400)
    with_covid = int((drawn[:, group_of[y]].sum(1) > 0).sum())
    assert 0 < with_covid < 400
    assert got["replicates"] == {"sensitivity": with_covid, "specificity": 400, "accuracy": 400, "auc": with_covid}


def test_delong_interval_stays_within_zero_and_one():
    # Near-perfect separation on few films: AUC + 1.96 SE is above 1, the interval stops at 1.
    y = [0] * 6 + [1] * 6
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99]
    auc, var = metrics.auc_delong(y, scores)
    assert auc + 1.96 * var ** 0.5 > 1.0  # the case the clip is for
    lo, hi = metrics.auc_delong_ci(y, scores)
    assert 0.0 <= lo < auc < hi == 1.0
    lo, hi = metrics.auc_delong_ci([1 - v for v in y], scores)  # the mirror image stops at 0
    assert lo == 0.0 < hi <= 1.0


def test_one_vs_rest_tells_missed_films_from_false_alarms_and_wilson_refuses_k_over_n():
    cm = metrics.confusion_matrix([0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1], 2)  # two of class 1 called 0
    assert metrics.one_vs_rest(cm, 0) == {"tp": 3, "fp": 2, "tn": 1, "fn": 0}
    assert metrics.one_vs_rest(cm, 1) == {"tp": 1, "fp": 0, "tn": 3, "fn": 2}
    per_class = metrics.per_class_metrics(cm, ["normal", "covid"])
    assert per_class["covid"]["sensitivity"]["value"] == pytest.approx(1 / 3)
    assert per_class["covid"]["precision"]["value"] == 1.0
    assert metrics.wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError, match=r"successes 6 not in \[0, 5\]"):
        metrics.wilson_interval(6, 5)


def test_patient_bootstrap_counts_patients_not_films_and_ties_count_one_half():
    # Six films of a class, but of two patients: too few patients for that class's (or AUC's) interval.
    y = [True] * 6 + [False] * 6
    two, six = ["a", "b"] * 3, [f"p{i}" for i in range(6)]
    few = metrics.patient_bootstrap(y, y, [0.9] * 6 + [0.1] * 6, six + two, n_boot=50)
    assert few["specificity"] is None and few["auc"] is None and few["sensitivity"] == [1.0, 1.0]
    few = metrics.patient_bootstrap(y, y, [0.9] * 6 + [0.1] * 6, two + six, n_boot=50)
    assert few["sensitivity"] is None and few["auc"] is None and few["specificity"] == [1.0, 1.0]
    tied = metrics.patient_bootstrap(y, y, [0.5] * 12, [f"p{i}" for i in range(12)], n_boot=50)
    assert tied["auc"] == [0.5, 0.5]


def test_a_source_is_flagged_only_when_its_whole_interval_is_below_the_pooled_one():
    pooled = {"value": 0.95, "ci95": [0.92, 0.97]}
    per_source = {"below": {"auc": {"ci95": [0.70, 0.90]}}, "overlapping": {"auc": {"ci95": [0.80, 0.99]}},
                  "no interval": {"auc": {"ci95": None}}, "no auc": {}}
    assert metrics.sources_below_pooled_auc(pooled, per_source) == ["below"]
    assert metrics.sources_below_pooled_auc({"value": 0.95, "ci95": None}, per_source) == []


def test_logit_keeps_zero_and_one_finite():
    out = metrics.logit(np.array([0.0, 0.5, 1.0]))
    assert out[1] == 0.0 and out[0] == pytest.approx(-16.118, abs=0.01) and out[2] == pytest.approx(-out[0])
    assert np.isfinite(metrics.logit(np.array([0.0, 1.0], np.float32))).all()


# ---- round 9 ---------------------------------------------------------------------------------


def test_z95_is_the_normal_quantile_and_an_empty_proportion_has_no_wilson_interval():
    from statistics import NormalDist

    assert metrics.Z95 == pytest.approx(NormalDist().inv_cdf(0.975), abs=1e-12)
    lo, hi = metrics.wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)


def test_confusion_matrix_refuses_a_prediction_outside_the_classes_and_infers_them_from_both():
    # A negative index would wrap to the last column (np.add.at): refused, as one too large is.
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\)"):
        metrics.confusion_matrix([0, 1], [0, -1], 2)
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 2\)"):
        metrics.confusion_matrix([0, 1], [0, 2], 2)
    # Without num_classes, a class only ever predicted still has its column.
    assert metrics.confusion_matrix([0, 0], [0, 2]).tolist() == [[1, 0, 1], [0, 0, 0], [0, 0, 0]]


def test_scores_and_labels_of_different_lengths_are_refused():
    for fn in (metrics.roc_auc, metrics.auc_delong, metrics.auc_bootstrap_ci):
        with pytest.raises(ValueError, match="3 labels but 2 scores"):
            fn([1, 0, 1], [0.5, 0.4])


def test_scores_that_are_not_numbers_are_refused_not_ranked():
    # A NaN has no rank: taken as one it gave an AUC of 0.0 with a "95% CI" of [0.5, 0.5].
    y, s = [1] * 6 + [0] * 6, [0.9] * 5 + [float("nan")] + [0.1] * 6
    for fn in (metrics.roc_auc, metrics.auc_delong, metrics.auc_bootstrap_ci, metrics.auc_with_ci, metrics.roc_curve):
        with pytest.raises(ValueError, match=r"^1 of 12 scores are NaN or infinite: no ranking to measure$"):
            fn(y, s)
    with pytest.raises(ValueError, match=r"^1 of 12 scores are NaN or infinite"):
        metrics.patient_bootstrap(np.asarray(y, bool), np.asarray(s) > 0.5, s, [str(i) for i in range(12)])


def test_roc_curve_of_one_class_stays_finite():
    fpr, tpr, _ = metrics.roc_curve([0, 0, 0], [0.2, 0.5, 0.9])
    assert tpr.tolist() == [0.0, 0.0, 0.0, 0.0] and fpr.tolist() == [0.0, 1 / 3, 2 / 3, 1.0]
    fpr, tpr, _ = metrics.roc_curve([1, 1], [0.2, 0.5])
    assert fpr.tolist() == [0.0, 0.0, 0.0] and tpr.tolist() == [0.0, 0.5, 1.0]


def test_auc_with_ci_uses_the_method_and_seed_asked_for_and_names_them():
    rng = np.random.default_rng(4)
    y = np.array([1] * 20 + [0] * 25)
    s = rng.normal(size=y.size) + y
    delong = metrics.auc_with_ci(y, s, method="delong")
    assert delong["method"] == "DeLong" and delong["ci95"] == pytest.approx(list(metrics.auc_delong_ci(y, s)))
    boot = metrics.auc_with_ci(y, s, n_boot=300, seed=7)
    assert boot["method"] == "stratified percentile bootstrap (300 resamples, seed 7)"
    assert boot["ci95"] == list(metrics.auc_bootstrap_ci(y, s, n_boot=300, seed=7))
    assert boot["ci95"] != list(metrics.auc_bootstrap_ci(y, s, n_boot=300, seed=0))
    with pytest.raises(ValueError, match="unknown AUC CI method 'wald'"):
        metrics.auc_with_ci(y, s, method="wald")


def test_per_class_metrics_pass_the_auc_method_and_resamples_on_and_support_counts_true_films():
    y_true = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    y_pred = [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0]  # class 1: tp 5, fn 1, fp 3
    cm = metrics.confusion_matrix(y_true, y_pred, 2)
    probabilities = np.eye(2)[y_pred] * 0.6 + 0.2
    per_class = metrics.per_class_metrics(cm, ["normal", "covid"], probabilities, y_true, auc_method="delong")
    assert per_class["covid"]["support"] == 6 and per_class["normal"]["support"] == 5
    assert per_class["covid"]["auc"]["method"] == "DeLong"
    per_class = metrics.per_class_metrics(cm, ["normal", "covid"], probabilities, y_true, n_boot=123)
    assert per_class["covid"]["auc"]["method"] == "stratified percentile bootstrap (123 resamples, seed 0)"


def test_a_class_never_true_nor_predicted_scores_zero_f1_in_the_macro_mean():
    cm = metrics.confusion_matrix([0, 1, 0, 1], [0, 1, 0, 1], 3)  # class 2 absent: F1 0, not 1
    assert metrics.f1_from_counts(0, 0, 0) == 0.0
    assert metrics.macro_f1(cm) == pytest.approx(2 / 3)


def test_patient_bootstrap_gives_no_accuracy_interval_under_five_patients():
    y = [True, True, False, False] * 2
    few = metrics.patient_bootstrap(y, y, [0.9, 0.9, 0.1, 0.1] * 2, ["a", "b", "c", "d"] * 2, n_boot=50)
    assert few["patients"] == 4 and few["accuracy"] is None and few["replicates"]["accuracy"] == 0


def test_a_source_interval_touching_the_pooled_one_is_not_flagged():
    pooled = {"ci95": [0.92, 0.97]}
    assert metrics.sources_below_pooled_auc(pooled, {"touching": {"auc": {"ci95": [0.80, 0.92]}}}) == []


def test_patient_ci_text_names_patients_films_and_each_interval():
    boot = {"patients": 12, "films": 30, "sensitivity": [0.5, 0.9], "specificity": None, "accuracy": [0.6, 0.8],
            "auc": [0.7, 0.95]}
    assert metrics.patient_ci_text(boot) == ("95% CI resampling the 12 patients of 30 films (some have several): "
                                             "sensitivity [0.500, 0.900]; accuracy [0.600, 0.800]; auc [0.700, 0.950]")


def test_the_classes_macro_f1_counts_as_zero_are_those_neither_true_nor_predicted():
    cm = metrics.confusion_matrix([0, 0, 1, 1], [0, 2, 0, 0], 4)  # 2 predicted only, 1 true only, 3 neither
    assert metrics.absent_classes(cm, ["a", "b", "c", "d"]) == ["d"]
    assert metrics.absent_classes_text([]) is None
    assert metrics.absent_classes_text(["c", "d"]) == "macro-F1 counts c, d as F1 0: neither true nor predicted in this data"
