"""The three-class served decision: COVID above the stored threshold, else the more probable other class."""
import numpy as np
import pytest
import tensorflow as tf

from covid_cxr.data import features
from covid_cxr.serving import export

TASK = features.get_task("three-class")
COVID = TASK.positive_index
OTHERS = [i for i in range(3) if i != COVID]


def _decide(probabilities, threshold):
    label, gate = export.three_class_decision(tf.constant(probabilities, tf.float32), COVID,
                                              tf.constant(threshold, tf.float32))
    return label.numpy(), gate.numpy()


def _films(covid_probabilities, other_share):
    """[N, 3] with P(covid) as given and the rest split other_share : 1 - other_share over the others."""
    p = np.zeros((len(covid_probabilities), 3), np.float32)
    p[:, COVID] = covid_probabilities
    p[:, OTHERS[0]] = (1 - p[:, COVID]) * other_share
    p[:, OTHERS[1]] = (1 - p[:, COVID]) * (1 - other_share)
    return p


@pytest.mark.parametrize("threshold", [0.15, 0.5, 0.8])
def test_covid_is_called_exactly_above_the_threshold_and_otherwise_the_more_probable_other_class(threshold):
    covid = np.linspace(0.02, 0.98, 49)
    probabilities = _films(covid, other_share=0.7)
    label, gate = _decide(probabilities, threshold)
    expected = np.where(covid > threshold, COVID, OTHERS[0])
    np.testing.assert_array_equal(label, expected)
    # Some films are labelled COVID below an argmax, or not COVID while it is the argmax: not an argmax.
    assert (label != probabilities.argmax(1)).any()
    # gate_score > 0.5 exactly in the served class, so the Evaluator (at 0.5) judges the served label.
    np.testing.assert_array_equal(gate > 0.5, np.arange(3)[None, :] == label[:, None])


def test_covid_gate_column_ranks_films_by_their_covid_probability():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3), size=200).astype(np.float32)
    _, gate = _decide(probabilities, 0.3)
    order = np.argsort(probabilities[:, COVID], kind="stable")
    assert (np.diff(gate[order, COVID]) >= 0).all()  # the gate's COVID AUC is P(covid)'s
    # Below the threshold the other classes' gate columns order them as their probabilities do.
    below = probabilities[:, COVID] <= 0.3
    np.testing.assert_array_equal(np.argmax(gate[below][:, OTHERS], axis=1),
                                  np.argmax(probabilities[below][:, OTHERS], axis=1))


@pytest.mark.parametrize("threshold", [np.float32(1 - 6e-8), np.float32(5e-8)])
def test_the_binary_gate_judges_the_served_decision_where_scores_saturate(threshold):
    # Within 1e-7 of 0 or 1 the logits are clipped: the re-centred score alone would be exactly 0.5
    # for films served as COVID, which the Evaluator (COVID when > 0.5) would count as negatives.
    covid = np.array([1.0, np.nextafter(threshold, np.float32(1)), threshold, np.float32(1e-9), 0.3, 0.999], np.float32)
    gate = export._recentred(tf.constant(covid), tf.constant(threshold)).numpy()
    np.testing.assert_array_equal(gate > 0.5, covid > threshold)
    order = np.argsort(covid, kind="stable")
    assert (np.diff(gate[order]) >= 0).all()  # still ranks films by P(covid)


def test_the_binary_gate_is_the_covid_probability_recentred_and_keeps_every_film_apart():
    # sigmoid(logit(p) - logit(t)): the Evaluator's AUC is P(covid)'s only if no two films tie on the gate,
    # near the threshold or near 0 and 1 alike.
    threshold = np.float32(0.3)
    covid = np.array([1e-6, 1e-5, 1e-4, 0.1, 0.29, 0.31, 0.4, 0.9, 0.9999, 0.99999], np.float32)
    gate = export._recentred(tf.constant(covid), tf.constant(threshold)).numpy()
    assert (np.diff(gate) > 0).all()
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    np.testing.assert_allclose(gate[3:8], 1 / (1 + np.exp(-(logit(covid[3:8]) - logit(threshold)))), rtol=1e-5)


def test_a_class_that_lost_has_a_gate_of_its_probability_against_the_winners():
    # normal 0.6, pneumonia 0.3, COVID 0.1 under a threshold of 0.5: normal is served; pneumonia's gate is
    # 0.3 / (0.3 + 0.6), not 0.5 (a tie at the Evaluator's cut would blur its per-class AUC).
    p = np.zeros((1, 3), np.float32)
    p[0, COVID], p[0, OTHERS[0]], p[0, OTHERS[1]] = 0.1, 0.6, 0.3
    label, gate = _decide(p, 0.5)
    assert label[0] == OTHERS[0]
    assert gate[0, OTHERS[0]] == pytest.approx(0.6 / 0.9) and gate[0, OTHERS[1]] == pytest.approx(0.3 / 0.9)
