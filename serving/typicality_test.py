"""Tests for covid_cxr.serving.typicality: the shrunk covariance, the fit, and the graph version."""
import numpy as np
import pytest

from covid_cxr.serving import typicality


def _gaussian(n, d, seed, scale=None):
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.2, 3.0, d) if scale is None else scale
    return rng.normal(size=(n, d)) * scale + 5.0


def test_shrunk_covariance_matches_scikit_learn():
    sklearn_covariance = pytest.importorskip("sklearn.covariance")
    for n, d in ((200, 10), (40, 80)):  # more films than features, and fewer (the MobileNetV2 case)
        x = _gaussian(n, d, seed=n)
        mean, covariance, shrinkage = typicality.shrunk_covariance(x)
        reference = sklearn_covariance.LedoitWolf().fit(x)
        assert shrinkage == pytest.approx(reference.shrinkage_, rel=1e-9)
        np.testing.assert_allclose(covariance, reference.covariance_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(mean, reference.location_)
    assert 0 < typicality.shrunk_covariance(_gaussian(40, 80, 1))[2] < 1
    # Heavy-tailed films: the estimate's own noise exceeds its distance from the identity, and the
    # shrinkage stops at 1 (all identity), as scikit-learn's does.
    heavy = np.random.default_rng(0).standard_t(1, size=(20, 8))
    mean, covariance, shrinkage = typicality.shrunk_covariance(heavy)
    reference = sklearn_covariance.LedoitWolf().fit(heavy)
    assert shrinkage == reference.shrinkage_ == 1.0
    np.testing.assert_allclose(covariance, np.trace(covariance) / 8 * np.eye(8), rtol=1e-12)


# Full rank (the smallest eigenvalue is the floor itself), and fewer films than features.
@pytest.mark.parametrize("films, dims, rank", [(300, 6, 5), (40, 80, 39)])
def test_distances_are_the_mahalanobis_distance_of_the_shrunk_covariance(films, dims, rank):
    train, probe = _gaussian(films, dims, 1), _gaussian(20, dims, 2)
    fitted = typicality.fit(train, _gaussian(100, dims, 3))
    mean, covariance, _ = typicality.shrunk_covariance(train)
    z = probe - mean
    expected = np.sqrt(np.einsum("ij,jk,ik->i", z, np.linalg.inv(covariance), z))
    np.testing.assert_allclose(fitted.distances(probe), expected, rtol=1e-8)
    np.testing.assert_allclose(fitted.atypicality(probe), expected / fitted.threshold, rtol=1e-8)
    # With fewer films than features only the sample covariance's own directions are stored.
    assert fitted.basis.shape == (dims, rank) and fitted.summary("f")["rank"] == rank


def test_the_threshold_is_the_eval_quantile_and_far_inputs_are_atypical():
    train, eval_films, fresh = _gaussian(500, 8, 1), _gaussian(400, 8, 2), _gaussian(2000, 8, 3)
    fitted = typicality.fit(train, eval_films, quantile=0.95)
    distances = np.sort(fitted.distances(eval_films))
    assert distances[-21] < np.quantile(distances, 0.95) < distances[-20]  # 20 of 400 above the quantile,
    assert fitted.threshold == pytest.approx((distances[-21] + distances[-20]) / 2)  # the threshold midway
    assert fitted.eval_atypical == int(np.sum(fitted.distances(eval_films) > fitted.threshold)) == 20
    # New films from the training distribution: about 5 % atypical; shifted or rescaled ones: nearly all.
    assert 0.02 < np.mean(fitted.atypicality(fresh) > 1) < 0.09
    assert np.mean(fitted.atypicality(fresh + 3.0) > 1) > 0.99
    assert np.mean(fitted.atypicality((fresh - 5.0) * 4 + 5.0) > 1) > 0.99
    summary = fitted.summary("test features")
    assert summary["dimensions"] == 8 and summary["quantile"] == 0.95 and summary["eval_atypical"] == 20
    assert summary["train_films"] == 500 and summary["eval_films"] == 400 and summary["features"] == "test features"
    assert summary["threshold_distance"] == fitted.threshold > 1  # the distance, not the scaled 1
    assert summary["shrinkage"] == fitted.shrinkage == typicality.shrunk_covariance(train)[2] > 0


def test_fit_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="quantile must be in"):
        typicality.fit(_gaussian(50, 3, 1), _gaussian(50, 3, 2), quantile=1.0)
    with pytest.raises(ValueError, match="too few films"):
        typicality.fit(_gaussian(5, 3, 1), _gaussian(40, 3, 2))
    with pytest.raises(ValueError, match=r"\(9 training, 40 validation; needs 10 and"):  # one short of MIN_FIT_FILMS
        typicality.fit(_gaussian(typicality.MIN_FIT_FILMS - 1, 3, 1), _gaussian(40, 3, 2))
    with pytest.raises(ValueError, match=r"too few films .*\(50 training, 39 validation; needs 10 and, for the 0.95 quantile, 40\)"):
        typicality.fit(_gaussian(50, 3, 1), _gaussian(39, 3, 2))
    assert typicality.min_eval_films(0.95) == 40 and typicality.min_eval_films(0.99) == 200
    assert typicality.min_eval_films(0.8) == 10
    constant = np.ones((50, 3))
    with pytest.raises(ValueError, match="all zero"):
        typicality.fit(constant, constant)


@pytest.mark.parametrize("films", [300, typicality.MIN_FIT_FILMS])  # full rank, and 9 of 12 directions
def test_the_graph_check_agrees_with_numpy_and_passes_the_scores_through(films):
    tf = pytest.importorskip("tensorflow")
    train = _gaussian(films, 12, 1)
    fitted = typicality.fit(train, _gaussian(100, 12, 2))
    assert fitted.basis.shape[1] == min(films - 1, 11)
    calls = []

    def scorer(image_xf, training=False):  # stands in for trainer.models.scorer_with_features
        calls.append(training)
        flat = tf.reshape(image_xf, [tf.shape(image_xf)[0], -1])
        return tf.reduce_mean(flat, axis=1, keepdims=True), flat

    check = typicality.tf_check(scorer, fitted)
    probe = np.concatenate([_gaussian(5, 12, 3), _gaussian(5, 12, 4) + 4.0]).astype(np.float32)
    scores, served = check(tf.constant(probe.reshape(10, 2, 6, 1)))
    np.testing.assert_allclose(served.numpy(), fitted.atypicality(probe), rtol=1e-4)
    np.testing.assert_allclose(scores.numpy()[:, 0], probe.mean(axis=1), rtol=1e-5)
    assert calls == [False]  # one pass, augmentation off
    assert served.numpy()[5:].min() > 1 > np.median(served.numpy()[:5])
    assert len(check.trainable_variables) == 0 and len(check.variables) == 5


def test_the_threshold_sits_between_eval_films_so_float32_flags_the_same_ones():
    eval_films = _gaussian(41, 4, 2)  # 0.95 * 40 = 38: numpy's quantile is exactly one film's distance
    fitted = typicality.fit(_gaussian(200, 4, 1), eval_films, quantile=0.95)
    distances = fitted.distances(eval_films)
    assert np.quantile(distances, 0.95) in distances and fitted.threshold not in distances
    assert fitted.eval_atypical == int(np.sum(distances > np.quantile(distances, 0.95))) == 2
    assert int(np.sum(np.float32(distances) / np.float32(fitted.threshold) > 1)) == 2


def test_tied_farthest_eval_films_stay_typical_in_float32_too():
    tf = pytest.importorskip("tensorflow")
    train = _gaussian(200, 4, 1)
    for eval_films in (np.repeat(_gaussian(1, 4, 2), 40, axis=0),  # all alike
                       np.concatenate([_gaussian(37, 4, 3) * 0.1 + 4.5, np.repeat(_gaussian(1, 4, 4), 3, axis=0)])):
        fitted = typicality.fit(train, eval_films, quantile=0.95)  # the quantile falls on the tied farthest films
        assert fitted.eval_atypical == 0 and fitted.threshold > fitted.distances(eval_films).max()
        check = typicality.tf_check(lambda x, training=False: (x, x), fitted)
        assert not np.any(check.atypicality(tf.constant(eval_films, tf.float32)).numpy() > 1)


@pytest.mark.parametrize("quantile", [0.0, 0.49, 1.0])
def test_fit_refuses_a_quantile_outside_one_half_to_one(quantile):
    with pytest.raises(ValueError, match=rf"^the atypical-input quantile must be in \[0.5, 1\), got {quantile}$"):
        typicality.fit(_gaussian(50, 3, 1), _gaussian(50, 3, 2), quantile=quantile)


def test_the_lowest_quantile_accepted_is_the_median():
    eval_films = _gaussian(50, 3, 2)
    fitted = typicality.fit(_gaussian(50, 3, 1), eval_films, quantile=0.5)
    assert fitted.quantile == 0.5 and fitted.eval_atypical == 25  # the farther half of the eval films
    assert int(np.sum(fitted.atypicality(eval_films) > 1)) == 25


def test_constant_training_features_still_give_finite_distances():
    """A degenerate fit (every training film's features alike): the floor is clipped above zero, so the
    eval films get finite distances and a threshold, not infinities."""
    eval_films = np.ones((40, 3)) + np.linspace(0.0, 1.0, 40)[:, None]
    fitted = typicality.fit(np.ones((50, 3)), eval_films)
    assert np.isfinite(fitted.threshold) and fitted.threshold > 0 and fitted.eval_atypical == 2
    atypicality = fitted.atypicality(eval_films)
    assert np.all(np.isfinite(atypicality)) and int(np.sum(atypicality > 1)) == 2


def test_fitted_check_fits_at_the_quantile_given_and_names_every_family():
    tf = pytest.importorskip("tensorflow")
    train, eval_films = _gaussian(200, 4, 1), _gaussian(100, 4, 2)
    check, summary = typicality.fitted_check(lambda x, training=False: (x, x), ["densenet121", "mobilenet_v2"],
                                             train, eval_films, quantile=0.8)
    assert summary == typicality.fit(train, eval_films, quantile=0.8).summary("pooled features of densenet121 + mobilenet_v2")
    assert summary["quantile"] == 0.8 and summary["eval_atypical"] == 20
    _, served = check(tf.constant(eval_films, tf.float32))
    assert int(np.sum(served.numpy() > 1)) == 20


def test_the_check_and_rate_lines_give_each_count_in_its_place():
    summary = typicality.fit(_gaussian(60, 3, 1), _gaussian(45, 3, 2), quantile=0.9).summary("pooled features of f")
    assert typicality.check_text(summary) == (
        f"atypical-input check: Mahalanobis distance of the pooled features of f (3) from 60 training films; above "
        f"the 0.9 quantile of 45 validation films ({summary['eval_atypical']} of them) = atypical. Reported with each "
        "prediction, never changes it")
    assert summary["eval_atypical"] not in (45, 60)  # told apart from the film counts


@pytest.mark.parametrize("entry, text", [
    ({"k": 3, "n": 240, "value": 0.0125, "ci95": [0.004, 0.036]}, "3/240 = 0.013 [0.004, 0.036]"),
    ({"k": 0, "n": 240, "value": 0.0, "ci95": None}, "0/240 = 0.000"),  # none atypical is still a rate
    ({"k": 0, "n": 0, "value": None}, "0/0"),  # no films evaluated: no rate, no interval
])
def test_the_rate_line_gives_the_count_the_rate_and_its_interval_when_known(entry, text):
    assert typicality.rate_text(entry) == f"atypical inputs (unlike the training films; scored anyway): {text}"
