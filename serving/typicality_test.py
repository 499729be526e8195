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


def test_distances_are_the_mahalanobis_distance_of_the_shrunk_covariance():
    train, probe = _gaussian(300, 6, 1), _gaussian(20, 6, 2)
    fitted = typicality.fit(train, _gaussian(100, 6, 3))
    mean, covariance, _ = typicality.shrunk_covariance(train)
    z = probe - mean
    expected = np.sqrt(np.einsum("ij,jk,ik->i", z, np.linalg.inv(covariance), z))
    np.testing.assert_allclose(fitted.distances(probe), expected, rtol=1e-8)
    np.testing.assert_allclose(fitted.atypicality(probe), expected / fitted.threshold, rtol=1e-8)


def test_the_threshold_is_the_eval_quantile_and_far_inputs_are_atypical():
    train, eval_films, fresh = _gaussian(500, 8, 1), _gaussian(400, 8, 2), _gaussian(2000, 8, 3)
    fitted = typicality.fit(train, eval_films, quantile=0.95)
    assert fitted.threshold == pytest.approx(np.quantile(fitted.distances(eval_films), 0.95))
    assert fitted.eval_atypical == int(np.sum(fitted.distances(eval_films) > fitted.threshold)) == 20
    # New films from the training distribution: about 5 % atypical; shifted or rescaled ones: nearly all.
    assert 0.02 < np.mean(fitted.atypicality(fresh) > 1) < 0.09
    assert np.mean(fitted.atypicality(fresh + 3.0) > 1) > 0.99
    assert np.mean(fitted.atypicality((fresh - 5.0) * 4 + 5.0) > 1) > 0.99
    summary = fitted.summary("test features")
    assert summary["dimensions"] == 8 and summary["quantile"] == 0.95 and summary["eval_atypical"] == 20
    assert summary["train_films"] == 500 and summary["eval_films"] == 400


def test_fit_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="quantile must be in"):
        typicality.fit(_gaussian(50, 3, 1), _gaussian(10, 3, 2), quantile=1.0)
    with pytest.raises(ValueError, match="too few films"):
        typicality.fit(_gaussian(5, 3, 1), _gaussian(10, 3, 2))
    with pytest.raises(ValueError, match="too few films"):
        typicality.fit(_gaussian(50, 3, 1), np.zeros((0, 3)))
    constant = np.ones((30, 3))
    with pytest.raises(ValueError, match="all zero"):
        typicality.fit(constant, constant[:5])


def test_the_graph_check_agrees_with_numpy():
    tf = pytest.importorskip("tensorflow")
    train = _gaussian(300, 12, 1)
    fitted = typicality.fit(train, _gaussian(100, 12, 2))

    def flatten_features(image_xf, training=False):  # stands in for the pooled-features model
        return tf.reshape(image_xf, [tf.shape(image_xf)[0], -1])

    check = typicality.tf_check(flatten_features, fitted)
    probe = np.concatenate([_gaussian(5, 12, 3), _gaussian(5, 12, 4) + 4.0]).astype(np.float32)
    served = check(tf.constant(probe.reshape(10, 2, 6, 1))).numpy()
    np.testing.assert_allclose(served, fitted.atypicality(probe), rtol=1e-4)
    assert served[5:].min() > 1 > np.median(served[:5])
    assert len(check.trainable_variables) == 0 and len(check.variables) == 3
