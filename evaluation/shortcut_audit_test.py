"""The border-only shortcut audit flags leaky borders and stays quiet on clean ones."""
import io

import numpy as np
import pytest
from PIL import Image

from covid_cxr.evaluation import shortcut_audit


def _dataset(leaky: bool, n_patients: int = 60, seed: int = 0):
    """Two images per patient. The centre always shows the label (a bright blob for class 1).

    leaky: class 1 films carry a burnt-in white marker in the top-left border (a source artefact);
    clean: the same marker appears on a random half of the films, independent of the label.
    """
    rng = np.random.default_rng(seed)
    images, labels, groups = [], [], []
    for p in range(n_patients):
        label = p % 2
        for i in range(2):
            h, w = int(rng.integers(90, 130)), int(rng.integers(90, 130))
            img = rng.normal(110, 25, (h, w))
            yy, xx = np.mgrid[0:h, 0:w]
            if label:
                img += 70 * np.exp(-(((yy - h / 2) / (h / 8)) ** 2 + ((xx - w / 2) / (w / 8)) ** 2))
            marker = label == 1 if leaky else rng.random() < 0.5
            if marker:
                img[2:int(h * 0.08), 3:int(w * 0.3)] = 255
            gray = np.clip(img, 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(gray, mode="L").save(buf, format="PNG")
            images.append(buf.getvalue() if i == 0 else gray)  # both input kinds are accepted
            labels.append(label)
            groups.append(f"patient-{p}")
    return images, labels, groups


def test_flags_borders_that_leak_the_label():
    images, labels, groups = _dataset(leaky=True)
    result = shortcut_audit.audit(images, labels, groups, n_boot=200)
    assert result["flagged"] is True, result
    assert result["auc"]["value"] > 0.9
    assert "SHORTCUT" in result["verdict"]
    assert result["n"] == 120 and result["n_groups"] == 60 and result["folds"] == 5 and result["n_positive"] == 60


def test_does_not_flag_clean_borders():
    images, labels, groups = _dataset(leaky=False)
    result = shortcut_audit.audit(images, labels, groups, n_boot=200)
    assert result["flagged"] is False, result
    assert result["auc"]["value"] <= 0.6
    assert "no border shortcut" in result["verdict"]


def test_folds_are_group_disjoint_and_balanced():
    groups = [f"g{i // 3}" for i in range(30)] + [f"h{i}" for i in range(10)]
    folds = shortcut_audit.group_folds(groups, 4, seed=1)
    for g in set(groups):
        assert len({int(f) for f, gg in zip(folds, groups) if gg == g}) == 1
    sizes = np.bincount(folds, minlength=4)
    assert sizes.max() - sizes.min() <= 3


def test_border_mask_keeps_only_the_outer_ring():
    mask = shortcut_audit.border_mask(20, 0.15)
    assert mask[0].all() and mask[:, -1].all()
    assert not mask[3:17, 3:17].any()
    assert mask.sum() == 20 * 20 - 14 * 14


@pytest.mark.parametrize("only_label", [0, 1])
def test_single_class_is_not_run(only_label):
    images, labels, groups = _dataset(leaky=True, n_patients=4)
    result = shortcut_audit.audit(images, [only_label] * len(labels), groups)
    assert result["flagged"] is None and result["auc"] is None
    assert result["verdict"] == "not run: needs both classes and at least 2 patient groups"


def test_a_single_patient_group_is_not_run():
    images, labels, _ = _dataset(leaky=True, n_patients=4)
    result = shortcut_audit.audit(images, labels, ["one patient"] * len(labels))
    assert result["folds"] == 1 and result["flagged"] is None and result["auc"] is None
    assert result["verdict"] == "not run: needs both classes and at least 2 patient groups"


def test_the_flag_is_set_by_flag_auc():
    images, labels, groups = _dataset(leaky=True)
    result = shortcut_audit.audit(images, labels, groups, n_boot=50, flag_auc=1.0)  # no AUC is above 1
    assert result["flagged"] is False and result["verdict"].startswith("no border shortcut detected")
    assert result["auc"]["value"] > 0.9


def test_folds_are_capped_at_the_number_of_groups():
    images, labels, groups = _dataset(leaky=True, n_patients=3)
    result = shortcut_audit.audit(images, labels, groups, folds=5, n_boot=50)
    assert result["folds"] == 3 and result["n_groups"] == 3 and "3-fold" in result["method"]


def test_large_groups_are_dealt_first_so_folds_stay_balanced():
    folds = shortcut_audit.group_folds(["big"] * 10 + [f"s{i}" for i in range(10)], 2)
    assert np.bincount(folds).tolist() == [10, 10]


def test_features_are_standardized_on_the_training_folds_only(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.normal(2.0, 3.0, size=(40, 4)), np.arange(40) % 2
    fitted = []
    real = shortcut_audit.fit_logistic

    def fit(x_train, y_train, *args, **kwargs):
        fitted.append(x_train)
        return real(x_train, y_train, *args, **kwargs)

    monkeypatch.setattr(shortcut_audit, "fit_logistic", fit)
    scores = shortcut_audit.cross_validated_scores(x, y, [str(i) for i in range(40)], folds=4)
    assert len(fitted) == 4 and not np.isnan(scores).any()
    for x_train in fitted:  # the test fold's films play no part in the scaling
        np.testing.assert_allclose(x_train.mean(axis=0), 0, atol=1e-9)
        np.testing.assert_allclose(x_train.std(axis=0), 1, rtol=1e-9)


def test_a_fold_whose_training_films_lack_a_class_is_not_scored():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), np.array([1] * 6 + [0] * 24)
    groups = ["positives"] * 6 + [f"n{i}" for i in range(24)]  # every positive in one group, so one fold
    scores = shortcut_audit.cross_validated_scores(x, y, groups, folds=3)
    unscored = shortcut_audit.group_folds(groups, 3) == shortcut_audit.group_folds(groups, 3)[0]  # the positives' fold
    assert np.isnan(scores[unscored]).all() and not np.isnan(scores[~unscored]).any()


def test_fit_logistic_is_l2_logistic_regression_with_the_penalty_on_the_mean_loss():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=200) > 0).astype(np.float64)
    w, b = shortcut_audit.fit_logistic(x, y, l2=1.0)
    # scikit-learn minimises C * sum(log-loss) + |w|^2 / 2: the same optimum for C = 1 / l2.
    reference = linear_model.LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit(x, y)
    np.testing.assert_allclose(w, reference.coef_[0], atol=1e-4)
    assert b == pytest.approx(reference.intercept_[0], abs=1e-4)


def test_without_groups_each_film_is_its_own_group_and_mismatched_groups_are_refused():
    images, labels, groups = _dataset(leaky=True, n_patients=10)
    result = shortcut_audit.audit(images, labels, n_boot=50)
    assert result["n_groups"] == 20 and result["folds"] == 5 and result["auc"]["value"] > 0.8
    with pytest.raises(ValueError, match=r"^20 images, 20 labels, 19 groups$"):
        shortcut_audit.audit(images, labels, groups[:-1])


def test_films_of_an_unscored_fold_are_left_out_not_scored_zero():
    images, labels, _ = _dataset(leaky=True, n_patients=10)
    groups = ["positives" if label else f"n{i}" for i, label in enumerate(labels)]  # every positive in one fold
    result = shortcut_audit.audit(images, labels, groups, n_boot=50)
    assert result["n_scored"] == 10 and result["verdict"] == "not run: the held-out folds lacked a class"


def test_a_colour_image_is_audited_as_its_grey_level():
    rgb = np.random.default_rng(1).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    np.testing.assert_array_equal(shortcut_audit.border_features(rgb), shortcut_audit.border_features(rgb.mean(axis=-1)))


def test_undecodable_bytes_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="^undecodable image$"):
        shortcut_audit.border_features(b"not an image")


@pytest.mark.parametrize("size, border, width", [(20, 0.15, 3), (32, 0.15, 5), (32, 0.01, 1), (10, 0.26, 3)])
def test_the_ring_is_the_rounded_border_fraction_wide_and_at_least_one_pixel(size, border, width):
    mask = shortcut_audit.border_mask(size, border)
    inner = size - 2 * width
    assert mask.sum() == size * size - inner * inner
    assert not mask[width:size - width, width:size - width].any() and mask[width - 1, width - 1:size - width + 1].all()


def _two_tone(size=shortcut_audit.SIZE):
    """Dark left half, bright right half (0 / 200): after the stretch the border is 0 or 1."""
    img = np.zeros((size, size), np.float32)
    img[:, size // 2:] = 200
    return img


def test_strip_statistics_are_mean_std_p10_p90_of_top_bottom_left_right_after_the_stretch():
    features = shortcut_audit.border_features(_two_tone())
    half = [0.5, 0.5, 0.0, 1.0]  # top and bottom strips: half 0, half 1
    np.testing.assert_allclose(features[-16:], half + half + [0, 0, 0, 0] + [1, 0, 1, 1], atol=1e-6)
    ring = shortcut_audit.border_mask()
    assert features.shape == (ring.sum() + 16,) and set(np.unique(features[:-16])) == {0.0, 1.0}


def test_the_features_do_not_depend_on_exposure():
    img = np.random.default_rng(2).uniform(0, 100, (64, 48)).astype(np.float32)
    np.testing.assert_allclose(shortcut_audit.border_features(img), shortcut_audit.border_features(2.5 * img + 30),
                               atol=1e-5)


def test_films_are_area_averaged_down_to_size():
    rng = np.random.default_rng(3)
    plain = rng.uniform(50, 200, (shortcut_audit.SIZE,) * 2).astype(np.float32)
    ripple = np.kron(rng.uniform(-40, 40, plain.shape), [[1, -1], [-1, 1]])  # averages out in each 2x2 block
    big = np.kron(plain, np.ones((2, 2))) + ripple
    np.testing.assert_allclose(shortcut_audit.border_features(big), shortcut_audit.border_features(plain), atol=1e-5)


def test_a_feature_constant_on_the_training_folds_does_not_break_the_scores():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), np.arange(40) % 2
    x[:, 1] = 7.0  # e.g. a border pixel that the stretch pins to 0 on every film
    scores = shortcut_audit.cross_validated_scores(x, y, [str(i) for i in range(40)], folds=4)
    assert np.isfinite(scores).all()


def test_the_scores_include_the_fitted_bias(monkeypatch):
    monkeypatch.setattr(shortcut_audit, "fit_logistic", lambda x, y, *a, **k: (np.zeros(x.shape[1]), 0.7))
    scores = shortcut_audit.cross_validated_scores(np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2,
                                                   [str(i) for i in range(20)], folds=4)
    np.testing.assert_allclose(scores, 0.7)


def _one_column_in_all(rng):
    z = rng.normal(size=(200, 5))
    return z + 1.5 * z[:, :1]  # strongly correlated columns: plain gradient descent is far off after ITERATIONS steps


def _a_shared_factor(rng):
    # like neighbouring border pixels, ten columns move together: the largest curvature is ~5.5 times
    # any single column's, and a step sized for one column overshoots
    return rng.normal(size=(200, 10)) + 0.7 * rng.normal(size=(200, 1))


def _a_factor_of_alternating_sign(rng):
    # its direction is almost orthogonal to the power iteration's start (all ones): one iteration
    # underestimates the curvature and the step overshoots; the 30 find it
    signs = np.where(np.arange(10) % 2, -1.0, 1.0)
    return rng.normal(size=(200, 10)) + rng.normal(size=(200, 1)) * signs


@pytest.mark.parametrize("design, atol", [(_one_column_in_all, 0.02), (_a_shared_factor, 2e-4),
                                          (_a_factor_of_alternating_sign, 5e-4)])
def test_fit_logistic_converges_on_correlated_features_within_its_iterations(design, atol):
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = design(rng)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=200) > 0).astype(np.float64)
    w, _ = shortcut_audit.fit_logistic(x, y)
    reference = linear_model.LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit(x, y)
    np.testing.assert_allclose(w, reference.coef_[0], atol=atol)


def test_fit_logistic_on_features_that_are_all_zero_learns_the_base_rate():
    y = np.array([1.0] * 3 + [0.0] * 7)
    w, b = shortcut_audit.fit_logistic(np.zeros((10, 4)), y)
    assert not w.any() and b == pytest.approx(np.log(0.3 / 0.7), abs=1e-3)


def test_a_film_with_a_uniform_border_has_finite_features():
    img = np.zeros((64, 64), np.float32)
    img[16:48, 16:48] = np.random.default_rng(4).uniform(0, 255, (32, 32))  # black collimation all round
    features = shortcut_audit.border_features(img)
    assert np.isfinite(features).all() and not features[:-16].any()


def test_equal_sized_groups_are_dealt_in_a_seeded_random_order():
    groups = [f"g{i}" for i in range(20)]
    folds = {seed: shortcut_audit.group_folds(groups, 4, seed=seed).tolist() for seed in (0, 1)}
    assert folds[0] == shortcut_audit.group_folds(groups, 4, seed=0).tolist() and folds[0] != folds[1]


def test_audit_passes_its_border_and_seed_on(monkeypatch):
    seen = {"border": set(), "fold_seed": set(), "boot_seed": set()}
    real_features, real_folds, real_auc = (shortcut_audit.border_features, shortcut_audit.group_folds,
                                           shortcut_audit.metrics.auc_with_ci)

    def features(image, size, border):
        seen["border"].add(border)
        return real_features(image, size, border)

    def folds(groups, n, seed=0):
        seen["fold_seed"].add(seed)
        return real_folds(groups, n, seed)

    def auc(*args, seed=0, **kwargs):
        seen["boot_seed"].add(seed)
        return real_auc(*args, seed=seed, **kwargs)

    monkeypatch.setattr(shortcut_audit, "border_features", features)
    monkeypatch.setattr(shortcut_audit, "group_folds", folds)
    monkeypatch.setattr(shortcut_audit.metrics, "auc_with_ci", auc)
    images, labels, groups = _dataset(leaky=True, n_patients=10)
    result = shortcut_audit.audit(images, labels, groups, border=0.25, seed=7, n_boot=20)
    assert seen == {"border": {0.25}, "fold_seed": {7}, "boot_seed": {7}}
    assert result["border_fraction"] == 0.25 and "outer 25% border" in result["method"]
