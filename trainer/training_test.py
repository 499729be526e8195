"""Tests for covid_cxr.trainer.training: compile, class weights, two-phase fit, threshold choice."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from covid_cxr.trainer import models as M
from covid_cxr.trainer import training as T

S = 16


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setattr(M, "network_reachable", lambda *a, **k: False)
    monkeypatch.setattr(M, "KERAS_CACHE_DIRS", (str(tmp_path / "keras_cache"),))


def dataset(n, num_classes, size=S, seed=0, batch=8, repeat=True):
    """Learnable toy data: the class index brightens the top half of the image."""
    rng = np.random.RandomState(seed)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = rng.rand(n, size, size, 1).astype("float32") * 0.5
    x[:, : size // 2] += y[:, None, None, None] * (0.5 / (num_classes - 1))
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype("int64"))).batch(batch)
    return ds.repeat() if repeat else ds


# ------------------------------------------------------------------------------------------------
# compile_model / metrics
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 3])
def test_compile_model_loss_metrics_and_phase_learning_rate(num_classes):
    hp = M.HParams(family="cnn3", learning_rate=1e-3, fine_tune_learning_rate=1e-5)
    built = M.build_model(hp, S, num_classes, weights="none")
    model = T.compile_model(built, hp, num_classes, M.PHASE_HEAD)
    expected_loss = keras.losses.BinaryCrossentropy if num_classes == 2 else keras.losses.SparseCategoricalCrossentropy
    assert isinstance(model.loss, expected_loss)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    ds = dataset(16, num_classes, repeat=False)
    results = model.evaluate(ds, return_dict=True, verbose=0)
    assert set(results) == {"loss", "accuracy", "auc", "recall", "precision"} | ({"macro_auc"} if num_classes == 3 else set())
    T.compile_model(built, hp, num_classes, M.PHASE_FINE_TUNE)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-5)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_label_smoothing_pulls_the_training_targets_towards_uniform(num_classes):
    """The loss of a hard-label-perfect prediction grows with smoothing, by the cross-entropy of the
    smoothed target; compile_model gives the model the HParams' smoothing."""
    y = np.array([0, 1] if num_classes == 2 else [0, 1, 2])
    p = (np.array([[1e-4], [1 - 1e-4]]) if num_classes == 2 else np.eye(3) * (1 - 3e-4) + 1e-4).astype(np.float32)
    assert float(T.make_loss(num_classes)(y[:, None], p)) < 1e-3
    smoothing = 0.2
    targets = np.eye(num_classes)[y] * (1 - smoothing) + smoothing / num_classes
    if num_classes == 2:  # one sigmoid unit: the target of label 1 is 1 - s/2
        targets = targets[:, 1:]
        expected = -np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    else:
        expected = -np.mean(np.sum(targets * np.log(p), axis=1))
    assert float(T.make_loss(num_classes, smoothing)(y[:, None], p)) == pytest.approx(expected, rel=1e-3)
    hp = M.HParams(family="cnn3", label_smoothing=smoothing)
    model = T.compile_model(M.build_model(hp, S, num_classes, weights="none"), hp, num_classes, M.PHASE_HEAD)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(smoothing)
    with pytest.raises(ValueError, match="label_smoothing"):
        M.HParams(label_smoothing=0.6)


def test_sparse_metrics_match_one_hot_keras_metrics():
    y = np.array([0, 1, 2, 2, 1, 0, 2, 2])
    p = np.array(
        [[.7, .2, .1], [.1, .6, .3], [.2, .2, .6], [.5, .1, .4], [.3, .3, .4], [.2, .5, .3], [.1, .1, .8], [.3, .3, .4]],
        np.float32,
    )
    one_hot = np.eye(3)[y]
    auc = T.SparseAUC(3)
    auc.update_state(y, p)
    ref = keras.metrics.AUC(multi_label=True, num_labels=3)
    ref.update_state(one_hot, p)
    assert float(auc.result()) == pytest.approx(float(ref.result()))
    recall, precision = T.SparseRecall(3, 2), T.SparsePrecision(3, 2)
    recall.update_state(y, p)
    precision.update_state(y, p)
    predicted_covid = p.argmax(1) == 2
    assert float(recall.result()) == pytest.approx(predicted_covid[y == 2].mean())  # 3/4
    assert float(precision.result()) == pytest.approx((y[predicted_covid] == 2).mean())  # 3/4
    # Serializable (custom objects are registered).
    assert T.SparseAUC.from_config(auc.get_config()).num_classes == 3


def test_three_class_auc_is_covid_vs_rest_as_the_gate_judges_it_and_the_macro_average_is_macro_auc():
    """Epoch selection, early stopping and the Tuner rank by "auc": in three-class it must be the COVID
    one-vs-rest AUC the gate and the member check use (trainer/task.py:_eval_auc), not the macro average."""
    from covid_cxr.evaluation import metrics as ci_metrics

    y = np.array([0, 1, 2, 2, 1, 0, 2, 2, 0, 1])
    # COVID (2) ranks well against normal (0) but poorly against pneumonia (1): the two AUCs differ.
    p = np.array([[.8, .1, .1], [.1, .3, .6], [.2, .2, .6], [.3, .2, .5], [.1, .2, .7], [.6, .3, .1],
                  [.1, .1, .8], [.2, .4, .4], [.7, .2, .1], [.2, .3, .5]], np.float32)
    metrics = {m.name: m for m in T.make_metrics(3)}
    for m in metrics.values():
        m.update_state(y, p)
    covid_vs_rest = ci_metrics.roc_auc(y == 2, p[:, 2])
    assert float(metrics["auc"].result()) == pytest.approx(covid_vs_rest, abs=1e-3)
    macro = np.mean([ci_metrics.roc_auc(y == c, p[:, c]) for c in range(3)])
    assert abs(macro - covid_vs_rest) > 0.05  # the case tells them apart
    assert float(metrics["macro_auc"].result()) == pytest.approx(macro, abs=1e-3)
    other = T.SparseClassAUC(1)
    other.update_state(y, p)
    assert float(other.result()) == pytest.approx(ci_metrics.roc_auc(y == 1, p[:, 1]), abs=1e-3)
    # Weighted examples count by their weight, as the training batches' class weights do.
    weighted = T.SparseClassAUC(2)
    weighted.update_state(y, p, sample_weight=np.where(y == 1, 0.0, 1.0))
    assert float(weighted.result()) == pytest.approx(ci_metrics.roc_auc(y[y != 1] == 2, p[y != 1, 2]), abs=1e-3)
    assert T.SparseClassAUC.from_config(other.get_config()).class_id == 1  # serializable


def test_three_class_training_metrics_report_recall_and_precision_of_covid_the_last_class():
    # fit() compiles without a positive index: "recall"/"precision" in the history and the model
    # card must still be COVID's (the last class index), not another class's.
    metrics = {m.name: m for m in T.make_metrics(3)}
    assert metrics["recall"].class_id == 2 and metrics["precision"].class_id == 2
    assert {m.name: m for m in T.make_metrics(3, positive_index=1)}["recall"].class_id == 1


# ------------------------------------------------------------------------------------------------
# class_weights
# ------------------------------------------------------------------------------------------------


def test_class_weights_balanced():
    w = T.class_weights([300, 100])
    assert w == pytest.approx({0: 400 / 600, 1: 2.0})
    assert (300 * w[0] + 100 * w[1]) / 400 == pytest.approx(1.0)  # mean weight over examples is 1
    w3 = T.class_weights({0: 50, 2: 25}, num_classes=3)
    assert w3 == pytest.approx({0: 75 / 150, 1: 1.0, 2: 1.0})
    assert T.class_weights({1: 10, 0: 10}) == {0: 1.0, 1: 1.0}
    # num_classes counts a class above every one seen: three classes share the total, not two
    assert T.class_weights({0: 50, 1: 50}, num_classes=3) == pytest.approx({0: 100 / 150, 1: 100 / 150, 2: 1.0})
    with pytest.raises(ValueError):
        T.class_weights([0, 0])
    with pytest.raises(ValueError):
        T.class_weights({-1: 3})
    with pytest.raises(ValueError, match=">= 0"):
        T.class_weights([3, -1])  # a negative count is a bug upstream, not a class to up-weight


def test_source_class_weights_at_strength_zero_are_the_class_weights():
    counts = {("cohen", 1): 290, ("cohen", 0): 10, ("radiography", 1): 300, ("radiography", 0): 400, ("rsna", 0): 70}
    weights = T.source_class_weights(counts, 2, 0.0)
    balanced = T.class_weights({0: 480, 1: 590})
    assert weights == {cell: balanced[cell[1]] for cell in counts}  # exactly: runs with it off repeat bit for bit


def test_source_class_weights_at_strength_zero_equal_the_class_weights_bit_for_bit_for_any_counts():
    # n * w / n is not always w in floating point (here for 4743 three-class films): the shortcut at
    # strength 0 is what keeps runs with the option off identical to runs from before it existed.
    counts = {("a", 0): 3000, ("b", 0): 385, ("a", 1): 4743, ("b", 2): 4264}
    balanced = T.class_weights({0: 3385, 1: 4743, 2: 4264}, 3)
    assert T.source_class_weights(counts, 3, 0.0) == {cell: balanced[cell[1]] for cell in counts}


def test_source_class_weights_follow_the_documented_formula_also_for_one_class_sources():
    # (n_s / (k_s * n_sc)) ** strength within each class, k_s the classes present in the source: at
    # strength 1 every source's cell holds n_s / k_s of its class's mass, so a one-class source (RSNA's
    # normals) keeps its share next to the sources that hold both classes.
    counts = {("cohen", 1): 290, ("cohen", 0): 10, ("radiography", 1): 300, ("radiography", 0): 400, ("rsna", 0): 70}
    for strength in (1.0, 0.5):
        weights = T.source_class_weights(counts, 2, strength)
        within = {("cohen", 0): 300 / (2 * 10), ("radiography", 0): 700 / (2 * 400), ("rsna", 0): 70 / (1 * 70)}
        for cell in within:  # same class: weights in the ratio of the formula
            assert weights[cell] / weights[("rsna", 0)] == pytest.approx((within[cell] / within[("rsna", 0)]) ** strength)


def test_full_source_balance_makes_the_source_carry_no_label():
    # Cohen: nearly all COVID, as in the real corpus; Radiography: balanced-ish; RSNA: normals only.
    counts = {("cohen", 1): 290, ("cohen", 0): 10, ("radiography", 1): 300, ("radiography", 0): 400, ("rsna", 0): 70}
    weights = T.source_class_weights(counts, 2, 1.0)
    mass = {cell: n * weights[cell] for cell, n in counts.items()}
    # Every source with both classes has the same normal:COVID weight ratio: being from Cohen
    # rather than Radiography says nothing about the label (before weighting: 1:29 against 4:3).
    assert mass[("cohen", 0)] / mass[("cohen", 1)] == pytest.approx(mass[("radiography", 0)] / mass[("radiography", 1)])
    # Overall the classes are balanced and the mean weight is 1, as with class_weights.
    assert sum(v for c, v in mass.items() if c[1] == 0) == pytest.approx(sum(v for c, v in mass.items() if c[1] == 1))
    assert sum(mass.values()) / sum(counts.values()) == pytest.approx(1.0)
    # A rare Cohen normal now counts far more than a Cohen COVID film.
    assert weights[("cohen", 0)] > 20 * weights[("cohen", 1)]
    half = T.source_class_weights(counts, 2, 0.5)
    assert weights[("cohen", 1)] < half[("cohen", 1)] < T.source_class_weights(counts, 2, 0.0)[("cohen", 1)]
    with pytest.raises(ValueError, match="between 0 and 1"):
        T.source_class_weights(counts, 2, 1.5)
    with pytest.raises(ValueError, match="no labelled"):
        T.source_class_weights({}, 2, 1.0)


# ------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------


class RecordWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.per_epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append(self.model.get_weights())


def test_fit_scratch_single_phase_graph_mode():
    hp = M.HParams(family="cnn3", early_stopping_patience=10)
    built = M.build_model(hp, S, 2, weights="none")
    recorder = RecordWeights()
    history = T.fit(
        built, hp, dataset(32, 2), dataset(16, 2, seed=1, repeat=False),
        epochs=3, steps_per_epoch=4, validation_steps=None, fine_tune_epochs=5,
        callbacks=[recorder], seed=1, class_weight=T.class_weights([16, 16]), verbose=0,
    )
    assert history["phase"] == [M.PHASE_END_TO_END] * 3  # scratch: no phase 2 despite fine_tune_epochs
    assert history["epoch"] == [0, 1, 2]
    for key in ("loss", "auc", "recall", "precision", "val_auc", "val_loss", "lr"):
        assert len(history[key]) == 3 and all(np.isfinite(history[key]))
    # best-weights restore on val AUC with val loss as tie-break (first epoch reaching the maximum)
    np.testing.assert_allclose(history["val_selection"], np.array(history["val_auc"]) - T.LOSS_TIE_BREAK * np.array(history["val_loss"]), rtol=1e-6)
    best = int(np.argmax(history["val_selection"]))
    for a, b in zip(recorder.per_epoch[best], built.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert history[T.KEPT] == [1.0 if i == best else 0.0 for i in range(3)]


def _seeded_fit(build_seed, fit_seed, draws=1, dropout=0.5):
    hp = M.HParams(family="cnn3", dropout=dropout, augment=M.AugmentConfig(enabled=True))
    keras.utils.set_random_seed(build_seed)  # initial weights and the augmentation layers' generator seeds
    built = M.build_model(hp, S, 2, weights="none")
    for _ in range(draws):  # moves the global generator, as any code between build and fit may
        tf.random.uniform([3])
    return T.fit(built, hp, dataset(16, 2), None, epochs=2, steps_per_epoch=2, validation_steps=None,
                 seed=fit_seed, verbose=0, compile_kwargs={"run_eagerly": True})["loss"]


def test_fit_is_seeded():
    a, b, c = _seeded_fit(7, 3), _seeded_fit(7, 3, draws=5), _seeded_fit(7, 4)
    losses = f"seed 3: {a}, again after other draws: {b}, seed 4: {c}"
    np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=losses)  # fit's seed decides dropout
    assert not np.allclose(a, c, rtol=1e-5), losses


def test_augmentation_draws_follow_the_seed_set_before_building():
    """tf_keras's augmentation layers seed their generators when the model is built, so the seed set
    then (task._build sets it) decides their draws, not fit's. Under generator-backed random layers
    (``keras.backend.experimental.enable_tf_random_generator``, which scripts/step_determinism.py turns
    on) dropout does the same, and fit's seed decides nothing: step_determinism's test restores the default."""
    same_build = _seeded_fit(7, 3, dropout=0.0), _seeded_fit(7, 4, dropout=0.0)
    other_build = _seeded_fit(8, 3, dropout=0.0)
    np.testing.assert_allclose(*same_build, rtol=1e-5, err_msg=str(same_build))
    assert not np.allclose(same_build[0], other_build, rtol=1e-5), (same_build, other_build)
    assert not keras.backend.experimental.is_tf_random_generator_enabled()  # the default, as the Trainer runs


@pytest.mark.parametrize("num_classes", [2, 3])
def test_fit_two_phases(pretrained_mobilenet, num_classes):
    n_top = 3
    hp = M.HParams(
        family="mobilenet_v2_035", fine_tune_layers=n_top, learning_rate=1e-3, fine_tune_learning_rate=1e-4,
        early_stopping_patience=5, lr_schedule="none",
    )
    built = M.build_model(hp, 32, num_classes, weights=pretrained_mobilenet)
    assert built.pretrained
    recorder = RecordWeights()
    top = M.tunable_backbone_layers(built.backbone)[-1]
    bottom = M.tunable_backbone_layers(built.backbone)[0]
    bn = next(l for l in built.backbone.layers if isinstance(l, keras.layers.BatchNormalization))
    top0, bottom0, bn0 = top.get_weights(), bottom.get_weights(), bn.get_weights()
    state = {}

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            state.setdefault("lr", []).append(float(self.model.optimizer.learning_rate.numpy()))
            state.setdefault("trainable", []).append(
                [l.name for l in built.backbone.layers if l.trainable_weights]
            )

        def on_epoch_end(self, epoch, logs=None):
            state.setdefault("top", []).append(top.get_weights())

    history = T.fit(
        built, hp, dataset(32, num_classes, size=32), dataset(16, num_classes, size=32, seed=1, repeat=False),
        epochs=2, steps_per_epoch=2, validation_steps=None, fine_tune_epochs=2, seed=0,
        callbacks=[recorder, Probe()], verbose=0, compile_kwargs={"run_eagerly": True},
    )
    assert history["phase"] == [1, 1, 2, 2] and history["epoch"] == [0, 1, 2, 3]
    assert len(history["val_auc"]) == 4 and all(np.isfinite(history["val_auc"]))
    assert state["lr"] == pytest.approx([1e-3, 1e-4])
    assert state["trainable"][0] == []  # phase 1: backbone frozen
    assert state["trainable"][1] == [l.name for l in M.tunable_backbone_layers(built.backbone)[-n_top:]]
    # phase 1 leaves the backbone untouched; phase 2 trains the top layer only; BN never changes
    for a, b in zip(state["top"][1], top0):
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(state["top"][3], top0))
    for a, b in zip(bottom.get_weights(), bottom0):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(bn.get_weights(), bn0):
        np.testing.assert_array_equal(a, b)
    # final weights = those of the first epoch with the best selection score over BOTH phases
    best = int(np.argmax(history["val_selection"]))
    for a, b in zip(recorder.per_epoch[best], built.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_reused_shuffled_dataset_starts_its_next_iterator_where_the_last_one_read_to():
    # Why fit takes a dataset factory: tfxio's training data is a seeded shuffle().repeat(); every
    # pass draws a new shuffle seed from state its iterators share, and a prefetching iterator reads
    # ahead a timing-dependent number of passes. Here the read-ahead is made explicit.
    def make():
        return tf.data.Dataset.range(10).shuffle(10, seed=3).repeat()

    def next_iterator_order(dataset, read_by_the_last):
        it = iter(dataset)
        for _ in range(read_by_the_last):
            next(it)
        return [int(x) for x in dataset.take(10)]

    assert next_iterator_order(make(), 5) != next_iterator_order(make(), 25)
    assert [int(x) for x in make().take(10)] == [int(x) for x in make().take(10)]  # a fresh one repeats


def test_each_phase_fits_on_a_dataset_built_for_it(pretrained_mobilenet):
    hp = M.HParams(family="mobilenet_v2_035", fine_tune_layers=2, early_stopping_patience=5, lr_schedule="none")
    built = M.build_model(hp, 32, 2, weights=pretrained_mobilenet)
    made = []

    def training_batches():
        made.append(dataset(16, 2, size=32))
        return made[-1]

    history = T.fit(built, hp, training_batches, dataset(8, 2, size=32, repeat=False), epochs=1,
                    steps_per_epoch=1, validation_steps=None, fine_tune_epochs=1, verbose=0,
                    compile_kwargs={"run_eagerly": True})
    assert history["phase"] == [1, 2] and len(made) == 2 and made[0] is not made[1]


class ScriptedScore(keras.callbacks.Callback):
    """Stands in for SelectionScore: the validation score of epoch i is scores[i]."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def on_epoch_end(self, epoch, logs=None):
        logs[T.MONITOR] = self.scores[epoch]


@pytest.mark.parametrize("phase_two, ran, kept_phase", [
    # never beats phase 1's 0.90: its own best (0.85) is followed by three epochs without a gain
    ([0.70, 0.80, 0.85, 0.84, 0.83, 0.82, 0.99, 0.99], 6, 1),
    # below phase 1 for four epochs, dipping once, then beats it: phase 2 goes on while its own best
    # improves, and its weights are served (stop 27: three-class split 13)
    ([0.70, 0.80, 0.85, 0.84, 0.95, 0.94, 0.93, 0.92, 0.99], 8, 2),
    # beats it at its second epoch: ordinary patience, stopping three epochs after the best
    ([0.70, 0.91, 0.93, 0.92, 0.92, 0.92, 0.99, 0.99], 6, 2),
    # only ties phase 1's best: that does not beat it, so phase 1's weights are served
    ([0.70, 0.90, 0.85, 0.84, 0.83, 0.99], 5, 1),
])
def test_phase_two_stops_on_its_own_patience_and_serves_phase_one_unless_it_beats_it(pretrained_mobilenet, monkeypatch, phase_two, ran, kept_phase):
    scores = [0.85, 0.90] + phase_two
    monkeypatch.setattr(T, "SelectionScore", lambda: ScriptedScore(scores))
    hp = M.HParams(family="mobilenet_v2_035", fine_tune_layers=2, early_stopping_patience=3, lr_schedule="none")
    built = M.build_model(hp, 32, 2, weights=pretrained_mobilenet)
    recorder = RecordWeights()
    history = T.fit(built, hp, dataset(16, 2, size=32), dataset(8, 2, size=32, repeat=False), epochs=2,
                    steps_per_epoch=1, validation_steps=None, fine_tune_epochs=len(phase_two),
                    callbacks=[recorder], verbose=0, compile_kwargs={"run_eagerly": True})
    assert history["phase"] == [1, 1] + [2] * ran
    best = int(np.argmax(scores[:2 + ran]))
    assert history["phase"][best] == kept_phase
    for a, b in zip(recorder.per_epoch[best], built.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The history says which epoch is served, and the summary names it by phase.
    assert history[T.KEPT].index(1.0) == best and sum(history[T.KEPT]) == 1.0
    summary = T.summarize_fit(history)
    assert summary["epochs_run"] == [["frozen backbone", 2], ["fine-tuning", ran]]
    assert summary["kept"]["phase"] == T.PHASE_NAMES[kept_phase]
    assert summary["kept"]["epoch_in_phase"] == (best + 1 if kept_phase == 1 else best - 1)
    assert summary["kept"]["val_selection"] == pytest.approx(scores[best])


def test_a_randomly_initialised_backbone_trains_end_to_end_in_one_phase():
    hp = M.HParams(family="mobilenet_v2_035", fine_tune_layers=10)
    built = M.build_model(hp, S, 2, weights="none")
    assert built.backbone is not None and not built.pretrained
    assert T._phases(built, hp, 3, 2) == [(M.PHASE_END_TO_END, 3)]  # no frozen random backbone


def test_fit_skips_phase_two_without_fine_tune_layers(pretrained_mobilenet):
    hp = M.HParams(family="mobilenet_v2_035", fine_tune_layers=0)
    built = M.build_model(hp, 32, 2, weights=pretrained_mobilenet)
    history = T.fit(built, hp, dataset(16, 2, size=32), dataset(8, 2, size=32, repeat=False), epochs=1,
                    steps_per_epoch=1, validation_steps=None, fine_tune_epochs=3, verbose=0,
                    compile_kwargs={"run_eagerly": True})
    assert history["phase"] == [1]


# ------------------------------------------------------------------------------------------------
# phase 1 on cached backbone features (training.cache_frozen_features)
# ------------------------------------------------------------------------------------------------


def test_split_head_copies_the_head_and_leaves_the_served_graph_alone(pretrained_mobilenet):
    hp = M.HParams(family="mobilenet_v2_035", dense_units=8, dropout=0.3)
    built = M.build_model(hp, 32, 2, weights=pretrained_mobilenet)
    features, head = M.split_head(built)
    x = next(iter(dataset(8, 2, size=32, repeat=False)))[0]
    np.testing.assert_allclose(head(features(x, training=False)).numpy(), built.model(x, training=False).numpy(), rtol=1e-5)
    dense = head.get_layer("head_dense")
    assert dense is not built.model.get_layer("head_dense")
    assert len(built.model.get_layer("head_dense").inbound_nodes) == 1  # no node added to the served model
    dense.set_weights([w + 0.5 for w in dense.get_weights()])
    assert not np.allclose(head(features(x, training=False)).numpy(), built.model(x, training=False).numpy())
    M.set_head_weights(built, head)
    np.testing.assert_allclose(head(features(x, training=False)).numpy(), built.model(x, training=False).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="pretrained"):
        M.split_head(M.build_model(M.HParams(family="cnn3"), S, 2, weights="none"))


def weighted(ds, weight=2.0):
    return ds.map(lambda x, y: (x, y, tf.fill(tf.shape(y), weight)))


def test_phase_one_on_cached_features_runs_the_backbone_once_and_reports_the_models_own_metrics(pretrained_mobilenet):
    hp = M.HParams(family="mobilenet_v2_035", fine_tune_layers=2, early_stopping_patience=10, lr_schedule="none")
    built = M.build_model(hp, 32, 2, weights=pretrained_mobilenet)
    backbone_before = [w.copy() for w in built.backbone.get_weights()]
    head_before = [w.copy() for w in built.model.get_layer(M.OUTPUT_NAME).get_weights()]
    passes = []

    def head_pass():
        passes.append(1)
        return weighted(dataset(24, 2, size=32, repeat=False))

    val = dataset(16, 2, size=32, seed=1, repeat=False)
    history = T.fit(built, hp, lambda: weighted(dataset(24, 2, size=32)), val, epochs=4, steps_per_epoch=3,
                    validation_steps=None, fine_tune_epochs=0, seed=0, verbose=0, head_pass=head_pass)
    assert history["phase"] == [1, 1, 1, 1] and len(passes) == 1  # four epochs, one backbone pass
    for a, b in zip(built.backbone.get_weights(), backbone_before):
        np.testing.assert_array_equal(a, b)
    # The restored best epoch's validation figures are the whole model's on the raw films.
    best = int(np.argmax(history["val_selection"]))
    whole = built.model.evaluate(val, return_dict=True, verbose=0)
    assert whole["loss"] == pytest.approx(history["val_loss"][best], rel=1e-4)
    assert whole["auc"] == pytest.approx(history["val_auc"][best], rel=1e-4)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(built.model.get_layer(M.OUTPUT_NAME).get_weights(), head_before))


def test_phase_one_on_cached_features_repeats_and_phase_two_still_runs(pretrained_mobilenet):
    def run(draws):
        hp = M.HParams(family="mobilenet_v2_035", fine_tune_layers=2, early_stopping_patience=10, lr_schedule="none")
        keras.utils.set_random_seed(0)
        built = M.build_model(hp, 32, 2, weights=pretrained_mobilenet)
        for _ in range(draws):  # moves the global generator: fit's seed must still decide the order
            tf.random.uniform([3])
        return T.fit(built, hp, lambda: dataset(24, 2, size=32), dataset(16, 2, size=32, seed=1, repeat=False),
                     epochs=3, steps_per_epoch=3, validation_steps=None, fine_tune_epochs=1, seed=0, verbose=0,
                     head_pass=lambda: dataset(24, 2, size=32, repeat=False), compile_kwargs={"run_eagerly": True})

    a, b = run(1), run(5)
    assert a["phase"] == [1, 1, 1, 2]
    np.testing.assert_allclose(a["loss"][:3], b["loss"][:3], rtol=1e-6)
    assert len(set(np.round(a["loss"][:3], 6))) == 3  # the head really trained: three different epochs


def test_backbone_features_keep_labels_weights_and_batch_size_and_are_shared_per_family_and_size(pretrained_mobilenet):
    built = M.build_model(M.HParams(family="mobilenet_v2_035"), 32, 2, weights=pretrained_mobilenet)
    features_fn = T.features_function(M.split_head(built)[0])
    cached = T.backbone_features(features_fn, weighted(dataset(20, 2, size=32, batch=8, repeat=False), 3.0))
    labels = np.concatenate([y.numpy() for _, y in dataset(20, 2, size=32, batch=8, repeat=False)])
    assert cached.features.shape == (20, built.model.get_layer(M.FEATURES_NAME).output.shape[-1])
    np.testing.assert_array_equal(cached.labels, labels)
    assert cached.weights.tolist() == [3.0] * 20 and cached.batch_size == 8
    assert features_fn.experimental_get_tracing_count() == 1  # the last batch of 4 is not traced again
    assert [len(b[0]) for b in cached.dataset()] == [8, 8, 4]
    assert [len(b) for b in cached.dataset(shuffle_seed=1)] == [3, 3, 3]  # weights travel with the films
    with pytest.raises(ValueError, match="no batches"):
        T.backbone_features(features_fn, [])

    cache, passes = {}, []

    def head_pass():
        passes.append(1)
        return dataset(16, 2, size=32, repeat=False)

    for _ in range(2):  # two Tuner trials of one family and size: one pass
        T.compile_model(built, M.HParams(family="mobilenet_v2_035"), 2, M.PHASE_HEAD)
        T.fit_head_on_features(built, 1e-3, head_pass, None, epochs=1, num_classes=2, verbose=0, cache=cache)
    assert len(passes) == 1 and set(cache) == {("mobilenet_v2_035", 32, "train")}

    # The Trainer's fit of the same family and size on a cache the Tuner filled: no new pass.
    hp = M.HParams(family="mobilenet_v2_035", fine_tune_layers=0)
    T.fit(built, hp, lambda: dataset(16, 2, size=32), None, epochs=1, steps_per_epoch=2, validation_steps=None,
          verbose=0, head_pass=head_pass, feature_cache=cache)
    assert len(passes) == 1
    T.fit(built, hp, lambda: dataset(16, 2, size=32), None, epochs=1, steps_per_epoch=2, validation_steps=None,
          verbose=0, head_pass=head_pass, feature_cache={})
    assert len(passes) == 2  # a cache of its own: computed again


def test_selection_score_ranks_by_auc_and_breaks_ties_by_loss():
    def score(auc, loss):
        logs = {"val_auc": auc, "val_loss": loss, "auc": auc, "loss": loss}
        T.SelectionScore().on_epoch_end(0, logs)
        assert logs["selection"] == logs["val_selection"]
        return logs["val_selection"]

    assert score(1.0, 0.05) > score(1.0, 0.60)  # saturated AUC: the lower loss wins
    assert score(0.980, 0.30) > score(0.974, 0.25)  # otherwise AUC decides, even at a higher loss
    logs = {"loss": 0.3}
    T.SelectionScore().on_epoch_end(0, logs)
    assert "selection" not in logs  # no AUC logged: nothing invented


def test_lr_schedules():
    hp = M.HParams(family="cnn3", lr_schedule="cosine")
    (cosine,) = T._schedule_callbacks(hp, "val_loss", first_epoch=4, epochs=4, base_lr=1e-3)
    assert [cosine.schedule(e, None) for e in (4, 6, 8)] == pytest.approx([1e-3, 5e-4, 0.0])
    (plateau,) = T._schedule_callbacks(M.HParams(family="cnn3"), T.MONITOR, 0, 5, 1e-3)
    assert isinstance(plateau, keras.callbacks.ReduceLROnPlateau) and plateau.monitor == T.MONITOR
    assert plateau.mode == "max"
    # factor and patience from the HParams; the LR never drops below a thousandth of the phase's own
    assert (plateau.factor, plateau.patience, plateau.min_lr) == (0.5, 2, pytest.approx(1e-6))
    assert T._schedule_callbacks(M.HParams(family="cnn3", lr_schedule="none"), "val_loss", 0, 5, 1e-3) == []


# ------------------------------------------------------------------------------------------------
# choose_threshold
# ------------------------------------------------------------------------------------------------


def brute_force_threshold(y, s, target):
    """The highest threshold on a fine grid whose sensitivity reaches the target (rule: score > t)."""
    best = -math.inf
    for t in np.unique(np.concatenate([s, (s[:, None] + s[None, :]).ravel() / 2])):
        predicted = s > t
        if predicted[y == 1].mean() >= target - 1e-12 and t > best:
            best = t
    return best


def logit_middle(a, b):
    la, lb = (math.log(v / (1 - v)) for v in (a, b))
    return 1 / (1 + math.exp(-(la + lb) / 2))


def test_histories_of_ensemble_members_follow_each_other():
    first = {"phase": [1, 2], "epoch": [0, 1], "val_auc": [0.8, 0.9], "lr": [1e-3, 1e-4]}
    second = {"phase": [1], "epoch": [0], "val_auc": [0.85]}
    merged = T.concatenate_histories([first, second])
    assert merged["member"] == [0, 0, 1] and merged["phase"] == [1, 2, 1] and merged["val_auc"] == [0.8, 0.9, 0.85]
    assert merged["lr"][:2] == [1e-3, 1e-4] and math.isnan(merged["lr"][2])
    assert T.concatenate_histories([first]) == first
    named = T.concatenate_histories([first, second], ["mobilenet_v2", "mobilenet_v2_035"])
    assert named["member_names"] == ["mobilenet_v2", "mobilenet_v2_035"] and named["member"] == [0, 0, 1]
    with pytest.raises(ValueError, match="1 names for 2 histories"):
        T.concatenate_histories([first, second], ["mobilenet_v2"])


def test_choose_threshold_sits_in_the_middle_of_the_gap():
    y = [0, 0, 1, 1, 1, 1]
    s = [0.1, 0.9, 0.2, 0.4, 0.6, 0.8]
    assert T.choose_threshold(y, s, 1.0) == pytest.approx(logit_middle(0.1, 0.2))
    assert T.choose_threshold(y, s, 0.75) == pytest.approx(logit_middle(0.2, 0.4))
    assert T.choose_threshold(y, s, 0.76) == pytest.approx(logit_middle(0.1, 0.2))  # 3/4 < 0.76: all 4
    assert T.choose_threshold(y, s, 0.5) == pytest.approx(logit_middle(0.4, 0.6))
    assert T.choose_threshold(y, s, 0.0) == pytest.approx(logit_middle(0.8, 0.9))  # only the top score
    assert T.choose_threshold(y, np.array(s)[:, None], 0.75) == pytest.approx(logit_middle(0.2, 0.4))
    # Perfectly separated, confident scores: the threshold is 0.5, not the lowest positive's 0.99.
    assert T.choose_threshold([0, 0, 1, 1], [0.01, 0.02, 0.99, 0.999], 0.95) == pytest.approx(
        logit_middle(0.02, 0.99))
    # Nothing scores below the needed positive: the float just under it, so that it counts as COVID.
    t = T.choose_threshold([1, 1, 0], [0.3, 0.7, 0.9], 1.0)
    assert t == float(np.nextafter(np.float32(0.3), np.float32(0.0)))
    assert T.sensitivity_specificity([1, 1, 0], [0.3, 0.7, 0.9], t) == (1.0, 0.0)


def test_choose_threshold_ties_and_float_rounding():
    # Ties: three positives share 0.5; sensitivity jumps from 1/5 to 4/5 at t = 0.5.
    y = [1, 1, 1, 1, 1, 0]
    s = [0.9, 0.5, 0.5, 0.5, 0.1, 0.5]
    t = T.choose_threshold(y, s, 0.6)
    assert 0.1 <= t < 0.5 and t == pytest.approx(logit_middle(0.1, 0.5))
    assert T.sensitivity_specificity(y, s, t)[0] == pytest.approx(0.8)
    # 0.95 * 20 = 19.000000000000004 in floating point: 19 of 20 positives must suffice.
    y = np.ones(20, int)
    s = np.linspace(0.05, 1.0, 20)
    assert s[0] <= T.choose_threshold(y, s, 0.95) < s[1]
    # 0.95 * 20 is exactly 19.0, but 0.55 * 100 is 55.00000000000001: 55 of 100 positives must suffice.
    y, s = np.ones(100, int), np.linspace(0.01, 0.99, 100)
    assert T.sensitivity_specificity(y, s, T.choose_threshold(y, s, 0.55))[0] == pytest.approx(0.55)
    # Saturated scores (1 - 1e-12 rounds to the logit clip): still inside the gap.
    t = T.choose_threshold([0, 1], [1 - 1e-12, 1.0], 1.0)
    assert 1 - 1e-12 <= t < 1.0 and T.sensitivity_specificity([0, 1], [1 - 1e-12, 1.0], t) == (1.0, 1.0)


def test_the_threshold_is_stored_as_the_float32_the_export_compares_scores_with():
    # Model scores are float32; a float64 threshold in the middle of a gap between two of them
    # would be rounded by the export, so the chosen value is already a float32 inside the gap.
    scores = np.float32([0.1, 0.3, 0.31, 0.9])
    t = T.choose_threshold([0, 1, 1, 1], scores, 1.0)
    assert t == float(np.float32(t)) and 0.1 < t < 0.3
    # Adjacent float32 scores leave no float32 strictly between them: the lower score itself,
    # which `score > t` still rejects while accepting the upper one.
    lower = np.float32(0.5)
    upper = np.nextafter(lower, np.float32(1.0))
    t = T.choose_threshold([0, 1], np.array([lower, upper]), 1.0)
    assert float(lower) <= t < float(upper)
    assert (np.float32(t) < upper) and not (lower > np.float32(t))
    # Nothing below the needed positive: just under it in float32 too. (A float64 just under it
    # became the positive's own float32 in the export, which then served it as not COVID.)
    scores = np.float32([0.3331679, 0.5, 0.7])
    t = T.choose_threshold([1, 0, 1], scores, 1.0)
    assert (scores > np.float32(t)).all()
    # Saturated scores: a gap between two scores under 1e-7 (clipped logits would put its middle
    # on the upper, positive score): the middle of the gap still, as a float32.
    scores = np.float32([1e-8, 5e-8, 0.9])
    t = T.choose_threshold([0, 1, 1], scores, 1.0)
    assert t == float(np.float32(t)) and float(scores[0]) < t < float(scores[1])
    assert t == pytest.approx(math.sqrt(1e-8 * 5e-8), rel=1e-3)  # logit ~ log near 0: the geometric middle


def test_a_gap_between_adjacent_float32_scores_gives_the_lower_score_itself():
    # No float32 lies strictly inside: whichever way the logit middle rounds, the stored threshold is
    # the lower score (rejected by "score > t"), never a float64 the export would round to the upper one.
    for value in (0.3, 0.5, 0.7, 0.9, 0.999):
        lower = np.float32(value)
        upper = np.nextafter(lower, np.float32(1.0))
        assert T.choose_threshold([0, 1], np.array([lower, upper]), 1.0) == float(lower), value


def test_choose_threshold_matches_brute_force():
    """Same validation confusion as the highest qualifying threshold on a fine grid."""
    rng = np.random.RandomState(0)
    for trial in range(40):
        n = rng.randint(2, 40)
        y = rng.randint(0, 2, n)
        y[0] = 1
        s = np.round(rng.rand(n), 1) * 0.98 + 0.01  # many ties, within (0, 1)
        target = rng.choice([0.5, 0.8, 0.9, 0.95, 1.0, rng.rand()])
        t = T.choose_threshold(y, s, target)
        t_hi = brute_force_threshold(y, s, target)
        assert T.sensitivity_specificity(y, s, t) == T.sensitivity_specificity(y, s, t_hi), (y, s, target)
        assert T.sensitivity_specificity(y, s, t)[0] >= target - 1e-12


def test_with_a_specificity_target_validation_slack_is_shared_between_the_two_bars():
    # 20 COVID films scored 0.50..0.97, 10 normals 0.02..0.40 and two at 0.51 and 0.515.
    positives = np.linspace(0.50, 0.97, 20)
    negatives = np.concatenate([np.linspace(0.02, 0.40, 10), [0.51, 0.515]])
    y = np.r_[np.ones(20, int), np.zeros(12, int)]
    s = np.r_[positives, negatives]
    sens_first = T.choose_threshold(y, s, 0.90)
    # 90% sensitivity alone: just under the 18th positive, above both high normals, so all the
    # slack went to specificity (12/12) and a COVID film a hair lower is missed.
    assert T.sensitivity_specificity(y, s, sens_first) == (0.9, 1.0)
    # Balanced: 19/20 and 12/12. Two gaps give 19/20, the worse margin (1/sqrt(0.9 * 0.1 / 20)
    # standard errors); the one above both high normals keeps 12/12 rather than 11/12.
    balanced = T.choose_threshold(y, s, 0.90, 0.75)
    assert balanced < sens_first
    sens, spec = T.sensitivity_specificity(y, s, balanced)
    assert (sens, spec) == (0.95, 1.0) and 0.515 < balanced < positives[1]
    # It is the best worst-margin threshold on a brute-force grid, the lowest among equals.
    grid = np.unique(np.r_[s, (s[:, None] + s[None, :]).ravel() / 2])

    def worst_margin(t):
        se, sp = T.sensitivity_specificity(y, s, t)
        return min((se - 0.9) / math.sqrt(0.9 * 0.1 / 20), (sp - 0.75) / math.sqrt(0.75 * 0.25 / 12))

    best = max(worst_margin(t) for t in grid)
    assert worst_margin(balanced) == pytest.approx(best)
    assert all(worst_margin(t) < best - 1e-12 for t in grid if t < 0.51)  # no gap under both high normals does as well
    # Target 0 leaves the sensitivity-only rule as it was.
    assert T.choose_threshold(y, s, 0.90, 0.0) == sens_first


def test_a_balanced_threshold_on_a_score_itself_counts_that_score_as_not_covid():
    # Scores one float32 step apart leave no float32 between them: the threshold is the lower score
    # itself, and the counts that choose it must read `score > t` as the export does.
    s = np.full(8, 0.2, np.float32)
    for i, n in enumerate([3, 3, 0, 0, 1, 2, 2, 2]):  # float32 steps above 0.2: three positives, five negatives
        for _ in range(n):
            s[i] = np.nextafter(s[i], np.float32(1.0))
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    t = T._balanced_threshold(y, s.astype(np.float64), 0.5, 0.5)
    assert t == float(s[5])  # the negatives' highest score, two steps up
    assert T.sensitivity_specificity(y, s, t) == pytest.approx((2 / 3, 1.0))


def test_targets_met_exactly_on_validation_still_share_the_slack():
    # 10 COVID films, 20 normals, both targets 0.9. No threshold is above both bars; two sit exactly on
    # one bar: sensitivity 0.9 / specificity 0.95 (the sensitivity-only choice) and 1.0 / 0.9. The
    # second has the larger other margin (0.1 of 10 films against 0.05 of 20), so it is chosen.
    y = np.r_[np.ones(10, int), np.zeros(20, int)]
    s = np.r_[[0.25], np.linspace(0.6, 0.9, 9), np.linspace(0.01, 0.2, 18), [0.4, 0.95]]
    assert T.sensitivity_specificity(y, s, T.choose_threshold(y, s, 0.9)) == (0.9, 0.95)
    assert T.sensitivity_specificity(y, s, T.choose_threshold(y, s, 0.9, 0.9)) == (1.0, 0.9)


def test_a_specificity_target_of_one_is_a_bar_like_any_other():
    # At target 1 the margin is counted in the standard error just inside 1 (n films), not divided by 0.
    y = np.r_[np.ones(10, int), np.zeros(10, int)]
    s = np.r_[[0.3, 0.35], np.linspace(0.6, 0.9, 8), np.linspace(0.01, 0.2, 10)]
    assert T.sensitivity_specificity(y, s, T.choose_threshold(y, s, 0.8)) == (0.8, 1.0)
    assert T.sensitivity_specificity(y, s, T.choose_threshold(y, s, 0.8, 1.0)) == (1.0, 1.0)


def test_when_the_two_targets_cannot_both_be_met_sensitivity_comes_first():
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    s = [0.2, 0.6, 0.7, 0.8, 0.3, 0.5, 0.65, 0.9]  # no threshold gives 100% sensitivity and 75% specificity
    assert T.choose_threshold(y, s, 1.0, 0.75) == T.choose_threshold(y, s, 1.0)
    assert T.choose_threshold([1, 1], [0.3, 0.7], 0.5, 0.9) == T.choose_threshold([1, 1], [0.3, 0.7], 0.5)  # no negatives


def test_choose_threshold_invalid_inputs():
    with pytest.raises(ValueError, match="no positive"):
        T.choose_threshold([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError):
        T.choose_threshold([0, 1], [0.1, 0.2], target_sensitivity=1.5)
    with pytest.raises(ValueError, match="target_specificity"):
        T.choose_threshold([0, 1], [0.1, 0.2], target_specificity=-0.1)
    with pytest.raises(ValueError):
        T.choose_threshold([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError):
        T.choose_threshold([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError):
        T.choose_threshold([], [])
    with pytest.raises(ValueError):
        T.choose_threshold([0, 2], [0.1, 0.2])



def test_reproducible_mode_refuses_a_process_started_without_fixed_threads(monkeypatch):
    for name in T.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cores = str(os.cpu_count())
    with pytest.raises(T.ProcessEnvError, match=f"TF_NUM_INTEROP_THREADS=1 TF_NUM_INTRAOP_THREADS={cores} "
                                                rf"OMP_NUM_THREADS={cores} \(covid-cxr run and demo restart"):
        T.require_process_env({"reproducible": True})
    T.require_process_env({"reproducible": False})  # nothing asked, nothing missing
    # An intra-op count the user chose is kept; what is still missing is named alone.
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "2")
    assert T.process_env_problems(True) == {"TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "3"}
    with pytest.raises(T.ProcessEnvError):
        T.require_process_env({"reproducible": True})
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "zero")  # not a count: replaced by one per core
    assert T.reproducible_thread_env()["TF_NUM_INTRAOP_THREADS"] == cores
    for name, value in T.reproducible_thread_env().items():
        monkeypatch.setenv(name, value)
    T.require_process_env({"reproducible": True})


def test_onednn_setting_pins_the_variable_tensorflow_reads_and_auto_leaves_it_alone(monkeypatch):
    monkeypatch.delenv(T.ONEDNN_VARIABLE, raising=False)
    assert T.process_env(False, "on") == {T.ONEDNN_VARIABLE: "1"}
    assert T.process_env(False, "off") == {T.ONEDNN_VARIABLE: "0"}
    assert T.process_env(False, "auto") == {} and T.process_env_problems(False, "auto") == {}
    with pytest.raises(T.ProcessEnvError, match=f"{T.ONEDNN_VARIABLE}=1 "):
        T.require_process_env({"reproducible": False, "onednn": "on"})
    monkeypatch.setenv(T.ONEDNN_VARIABLE, "0")  # the user's own choice loses to an explicit setting ...
    assert T.process_env_problems(False, "on") == {T.ONEDNN_VARIABLE: "1"}
    assert T.process_env_problems(False, "auto") == {}  # ... and is kept under auto
    T.require_process_env({"reproducible": False, "onednn": "off"})


def test_run_restarts_itself_once_with_the_tensorflow_settings_it_needs(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covid_cxr import cli, local_runner
    from covid_cxr.data import synthetic, testing

    data = str(tmp_path / "data")
    synthetic.generate(data, "covid-vs-normal", patients_per_class=3, seed=testing.DEALT_SEED)
    restarts, runs = [], []

    def fake_execve(path, argv, env):
        restarts.append((argv, env))
        raise SystemExit(0)  # where the real one replaces the process

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.setattr(local_runner, "run", lambda config, checked=None: runs.append(config))
    args = ["run", "--data", data, "--set", "training.reproducible=true", "--set", "training.onednn=on"]
    for name in (*T.THREAD_VARIABLES, T.ONEDNN_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli.main, args)
    # Without the settings: the same command again, with them in its environment, before any run.
    assert result.exit_code == 0 and "restarting with the TensorFlow settings" in result.output, result.output
    (argv, env), = restarts
    assert argv[1:] == ["-m", "covid_cxr.cli", *args] and not runs
    wanted = {**T.reproducible_thread_env(), T.ONEDNN_VARIABLE: "1"}
    assert {k: env.get(k) for k in wanted} == wanted
    # The restarted process has them: it runs the pipeline and does not restart again.
    for name, value in wanted.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0 and "restarting" not in result.output, result.output
    assert len(restarts) == 1 and len(runs) == 1
    assert runs[0].training.reproducible and runs[0].training.onednn == "on"
    # A value the user exported loses to the config, and the restart line says so.
    monkeypatch.setenv(T.ONEDNN_VARIABLE, "0")
    result = CliRunner().invoke(cli.main, args)
    assert f"{T.ONEDNN_VARIABLE}=1 (was 0)" in result.output and restarts[-1][1][T.ONEDNN_VARIABLE] == "1", result.output


# ---- round 9 ---------------------------------------------------------------------------------


def test_selection_score_is_auc_minus_a_thousandth_of_the_loss():
    logs = {"val_auc": 0.9, "val_loss": 0.5}
    T.SelectionScore().on_epoch_end(0, logs)
    assert logs["val_selection"] == pytest.approx(0.9 - 0.0005, abs=1e-12)


def test_lr_schedules_past_their_phase_and_the_plateau_floor_of_another_rate():
    (cosine,) = T._schedule_callbacks(M.HParams(family="cnn3", lr_schedule="cosine"), "val_loss", first_epoch=4,
                                      epochs=4, base_lr=1e-3)
    assert cosine.schedule(10, None) == pytest.approx(0.0, abs=1e-18)  # past the phase: stays at the bottom
    (plateau,) = T._schedule_callbacks(M.HParams(family="cnn3"), T.MONITOR, 0, 5, 3e-4)
    assert plateau.min_lr == pytest.approx(3e-7)  # a thousandth of this phase's rate, not of 1e-3


def test_the_lr_plateau_counts_as_progress_every_better_selection_score_early_stopping_counts():
    # Validation AUC saturated (the tie the selection score breaks by the loss): val_selection rises
    # by 2e-5 an epoch, as far under ReduceLROnPlateau's default min_delta (1e-4) as one reordered
    # pair of a ~130 x 110 film eval split is. Early stopping takes each epoch as a new best; the
    # learning rate must not be cut for a "plateau" in the same score.
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    hparams = M.HParams(family="cnn3")
    score, stopper = T.best_epoch_callbacks(T.MONITOR, hparams.early_stopping_patience)
    callbacks = keras.callbacks.CallbackList(
        [score, stopper, *T._schedule_callbacks(hparams, T.MONITOR, 0, 8, 1e-3)], model=model)
    callbacks.on_train_begin()
    for epoch in range(8):
        callbacks.on_epoch_end(epoch, {"val_auc": 1.0, "val_loss": 0.6 - 0.02 * epoch})
        assert stopper.best_epoch == epoch
    assert float(keras.backend.get_value(model.optimizer.learning_rate)) == pytest.approx(1e-3)


def test_source_class_weights_ignore_an_empty_cell():
    weights = T.source_class_weights({("a", 0): 6, ("a", 1): 2, ("b", 1): 0}, 2, 1.0)
    assert set(weights) == {("a", 0), ("a", 1)}


def test_a_key_only_a_later_phase_or_member_reports_lines_up_with_its_epochs():
    class Result:
        def __init__(self, epoch, history):
            self.epoch, self.history = epoch, history

    history = {"phase": [], "epoch": []}
    assert T.append_phase(history, Result([0, 1], {"val_auc": [0.7, 0.8]}), 1) == 2
    T.append_phase(history, Result([2], {"val_auc": [0.9], "lr": [1e-4]}), 2)
    assert history["val_auc"] == [0.7, 0.8, 0.9] and history["phase"] == [1, 1, 2]
    assert math.isnan(history["lr"][0]) and math.isnan(history["lr"][1]) and history["lr"][2] == 1e-4
    merged = T.concatenate_histories([{"epoch": [0, 1], "val_auc": [0.7, 0.8]}, {"epoch": [0], "val_auc": [0.9], "lr": [1e-4]}])
    assert math.isnan(merged["lr"][0]) and math.isnan(merged["lr"][1]) and merged["lr"][2] == 1e-4


def test_summarize_fit_counts_the_kept_epoch_within_its_phase():
    history = {"phase": [1, 1, 1, 2, 2], "epoch": [0, 1, 2, 3, 4], T.MONITOR: [0.5, 0.6, 0.7, 0.8, 0.75],
               "val_auc": [0.5, 0.6, 0.7, math.nan, 0.75], T.KEPT: [0.0, 0.0, 0.0, 1.0, 0.0]}
    summary = T.summarize_fit(history)
    assert summary["epochs_run"] == [["frozen backbone", 3], ["fine-tuning", 2]]
    assert summary["kept"] == {"phase": "fine-tuning", "epoch_in_phase": 1, "val_selection": 0.8, "val_auc": None}
    assert T.summarize_fit({**history, T.KEPT: [0.0] * 5})["kept"] is None  # no epoch flagged: nothing kept


def test_choose_threshold_refuses_infinite_and_two_column_scores_and_specificity_needs_negatives():
    with pytest.raises(ValueError, match="NaN or inf"):
        T.choose_threshold([0, 1], [0.1, np.inf])
    with pytest.raises(ValueError, match=r"y_score must be \[N\] or \[N, 1\]"):
        T.choose_threshold([0, 1], [[0.9, 0.1], [0.2, 0.8]])  # softmax columns: the caller picks COVID's
    sens, spec = T.sensitivity_specificity([1, 1], [0.3, 0.7], 0.5)
    assert sens == 0.5 and math.isnan(spec)


def test_the_balanced_threshold_counts_a_covid_film_on_the_threshold_as_missed():
    # Float32 steps above 0.2: five of six COVID films within two steps of the one normal. A balanced
    # threshold at the lowest score itself would count the two COVID films there as found; by
    # `score > t` they are missed (2/3 < 0.75), so no threshold meets both targets: sensitivity first.
    s = np.full(7, 0.2, np.float32)
    for i, n in enumerate([2, 2, 1, 1, 0, 0, 0]):
        for _ in range(n):
            s[i] = np.nextafter(s[i], np.float32(1.0))
    y = np.array([1, 1, 1, 1, 1, 1, 0])
    t = T.choose_threshold(y, s.astype(np.float64), 0.75, 0.6)
    assert T.sensitivity_specificity(y, s, t)[0] >= 0.75


def test_the_standard_error_is_of_the_target_kept_half_a_film_off_zero_and_one():
    assert T._standard_error(0.95, 100) == pytest.approx(math.sqrt(0.95 * 0.05 / 100))
    assert T._standard_error(1.0, 10) == pytest.approx(math.sqrt(0.95 * 0.05 / 10))
    assert T._standard_error(0.0, 20) == pytest.approx(math.sqrt(0.025 * 0.975 / 20))


def test_end_to_end_training_uses_the_learning_rate_not_the_fine_tuning_one():
    hp = M.HParams(family="cnn3", learning_rate=1e-3, fine_tune_learning_rate=1e-5)
    assert T.phase_learning_rate(hp, M.PHASE_END_TO_END) == 1e-3
    assert (T.phase_learning_rate(hp, M.PHASE_HEAD), T.phase_learning_rate(hp, M.PHASE_FINE_TUNE)) == (1e-3, 1e-5)


def test_the_shared_feature_caches_keep_the_two_most_recently_used_sets(monkeypatch):
    import collections

    monkeypatch.setattr(T, "_SHARED_FEATURE_CACHES", collections.OrderedDict())
    first = T.shared_feature_cache("run-a")
    first["features"] = "a"
    T.shared_feature_cache("run-b")["features"] = "b"
    assert T.shared_feature_cache("run-a") is first  # used again: now the most recent
    T.shared_feature_cache("run-c")  # a third set evicts the least recently used, run-b
    assert T.shared_feature_cache("run-a") == {"features": "a"}
    assert T.shared_feature_cache("run-b") == {}  # computed again
    assert len(T._SHARED_FEATURE_CACHES) == T.SHARED_FEATURE_CACHES_KEPT == 2


def test_a_gap_between_adjacent_float64_scores_still_accepts_the_upper_one():
    # The logit middle of two neighbouring float64 values may round onto the upper one; the threshold
    # is kept inside [lower, upper), so that `score > t` still accepts the COVID film.
    for value in np.linspace(0.01, 0.99, 60):
        lower = float(value)
        upper = float(np.nextafter(lower, 1.0))
        t = T.choose_threshold([0, 1], [lower, upper], 1.0)
        assert lower <= t < upper, value


def test_a_model_that_scores_every_validation_film_alike_gets_the_sensitivity_first_threshold():
    # A collapsed model (one score for all) leaves no gap between scores to put a balanced threshold in:
    # sensitivity comes first, every film COVID, instead of an IndexError at the end of training.
    for target_specificity in (0.5, 1.0):
        t = T.choose_threshold([0, 1, 1, 0], [0.5] * 4, 0.95, target_specificity)
        assert t == float(np.nextafter(np.float32(0.5), np.float32(-np.inf)))
        assert T.sensitivity_specificity([0, 1, 1, 0], [0.5] * 4, t) == (1.0, 0.0)
