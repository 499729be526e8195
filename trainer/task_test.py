"""The Trainer's validation metrics are those of the served decision; its batches carry per-source weights."""
import dataclasses
import functools
import importlib
import types

import attr
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfx import v1 as tfx

from covid_cxr.data import features, synthetic, writer
from covid_cxr.pipeline import config as cfg
from covid_cxr.serving import near_copies
from covid_cxr.trainer import models, training
from covid_cxr.trainer import task as trainer_task
from covid_cxr.transform import preprocessing

BINARY = features.get_task("covid-vs-normal")


def test_binary_validation_metrics_use_the_stored_threshold():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([[0.1], [0.35], [0.5], [0.3], [0.6], [0.9]])
    result = trainer_task._validation_metrics(features.get_task("covid-vs-normal"), labels, scores, threshold=0.32)
    assert result["counts"] == {"tp": 2, "fn": 1, "tn": 1, "fp": 2}
    assert result["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert result["specificity"]["value"] == pytest.approx(1 / 3)
    assert result["auc"] == pytest.approx(7 / 9)


def test_a_film_scored_exactly_at_the_stored_threshold_counts_as_not_covid_as_the_export_serves_it():
    # choose_threshold may return a film's own score (adjacent float32 scores leave no gap): the
    # validation metrics must read "score > t" as the export does, or they report a decision not served.
    labels = np.array([0, 1, 1])
    scores = np.array([[0.3], [0.3], [0.8]], np.float32)
    result = trainer_task._validation_metrics(BINARY, labels, scores, threshold=float(np.float32(0.3)))
    assert result["counts"] == {"tp": 1, "fn": 1, "tn": 1, "fp": 0}


def test_three_class_validation_metrics_are_covid_one_vs_rest_at_the_stored_threshold():
    task = features.get_task("three-class")
    covid = task.positive_index
    other = next(i for i in range(3) if i != covid)
    labels = np.array([covid, covid, other, other, covid])
    scores = np.full((5, 3), 0.1)
    scores[0, covid] = 0.8  # covid, called covid
    scores[1, other] = 0.8  # covid, P(covid) 0.1: missed
    scores[2, covid] = 0.8  # not covid, called covid
    scores[3, other] = 0.8
    scores[4] = 0.35
    scores[4, covid] = 0.3  # covid below the argmax but above the threshold: called covid
    result = trainer_task._validation_metrics(task, labels, scores, threshold=0.25)
    assert result["counts"] == {"tp": 2, "fn": 1, "tn": 1, "fp": 1}
    assert trainer_task._validation_metrics(task, labels, scores, threshold=0.5)["counts"]["tp"] == 1


def test_the_stored_threshold_is_chosen_on_p_covid_for_the_configured_targets():
    # 20 COVID films scored 0.40..0.97, 20 normals 0.05..0.62: the two targets pull apart.
    p_covid = np.concatenate([np.linspace(0.40, 0.97, 20), np.linspace(0.05, 0.62, 20)])
    is_covid = np.arange(40) < 20
    expected = training.choose_threshold(is_covid, p_covid, 0.95, 0.6)
    assert expected != training.choose_threshold(is_covid, p_covid, 0.6, 0.95)  # a swap would show
    three_class = features.get_task("three-class")
    for task, scores in ((BINARY, p_covid[:, None]),
                         (three_class, np.stack([(1 - p_covid) * 0.7, (1 - p_covid) * 0.3, p_covid], axis=1))):
        labels = np.where(is_covid, task.positive_index, 0)
        threshold = trainer_task._decision_threshold(
            task, labels, scores, {"target_sensitivity": 0.95, "target_specificity": 0.6})
        assert threshold == pytest.approx(expected, abs=0), task.name


def test_an_eval_split_without_one_of_the_classes_is_refused_before_training():
    trainer_task._check_eval_classes(BINARY, {0: 3, 1: 5})
    with pytest.raises(ValueError, match=r"^the eval split holds no covid films \(eval films per class: normal 3, covid 0\)"):
        trainer_task._check_eval_classes(BINARY, {0: 3})
    with pytest.raises(ValueError, match=r"holds no normal and no pneumonia films \(eval films per class: normal 0, pneumonia 0, covid 4\)"):
        trainer_task._check_eval_classes(features.get_task("three-class"), {2: 4})


def test_ensemble_families_start_with_the_tuned_family_without_repeats():
    assert trainer_task.ensemble_families("mobilenet_v2", []) == ["mobilenet_v2"]
    assert trainer_task.ensemble_families("mobilenet_v2", ["mobilenet_v2_035", "mobilenet_v2", "mobilenet_v2_035"]) == [
        "mobilenet_v2", "mobilenet_v2_035"]


def test_search_space_takes_every_dimension_from_the_config():
    import keras_tuner

    from covid_cxr.pipeline import config as pipeline_config

    cfg = pipeline_config.load_config("full", None, {"tuner.learning_rates": "[0.001]",
                                                      "tuner.fine_tune_lr_factors": "[0.01, 0.1]",
                                                      "tuner.fine_tune_epochs": "1",
                                                      "training.label_smoothing": "0.1"}).model_custom_config()
    hp = keras_tuner.HyperParameters()
    hparams = trainer_task._search_space(hp, cfg)
    assert hparams.family == "mobilenet_v2" and hparams.image_size == 224 and hparams.fine_tune_layers == 40
    assert hparams.label_smoothing == pytest.approx(0.1) and "label_smoothing" not in hp.values  # not a Tuner dimension
    assert hparams.early_stopping_patience == 3  # the config's (full preset), not HParams' default of 4
    # The first value of each choice, until a Tuner trial picks another: 0.001 x 0.01.
    assert hparams.fine_tune_learning_rate == pytest.approx(1e-5)
    assert hp.values["fine_tune_lr_factor"] == 0.01
    assert list(hp.values)[-1] == "fine_tune_lr_factor"  # declared after the dimensions it was added after
    hp.values["fine_tune_lr_factor"] = 0.1
    assert trainer_task._search_space(hp, cfg).fine_tune_learning_rate == pytest.approx(1e-4)


def test_the_tuner_searches_every_listed_image_size_up_to_the_transform_size():
    from covid_cxr.pipeline import config as pipeline_config

    cfg_ = pipeline_config.load_config("quick", None, {"tuner.image_sizes": "[64, 48]"}).model_custom_config()
    hp = keras_tuner.HyperParameters()
    assert trainer_task._search_space(hp, cfg_).image_size == 64  # the Transform's own size is a choice too
    assert hp.space[[p.name for p in hp.space].index("image_size")].values == [64, 48]


def test_a_single_fine_tune_lr_factor_is_not_a_tuner_dimension():
    """So the default config samples exactly the trials it sampled before the factor was configurable."""
    import keras_tuner

    from covid_cxr.pipeline import config as pipeline_config

    cfg = pipeline_config.load_config("full", None, {}).model_custom_config()
    hp = keras_tuner.HyperParameters()
    hparams = trainer_task._search_space(hp, cfg)
    assert list(hp.values) == ["learning_rate", "family", "image_size", "dropout", "dense_units", "fine_tune_layers"]
    assert hparams.fine_tune_learning_rate == pytest.approx(hparams.learning_rate * 0.1)


def test_models_are_built_from_the_configured_seed_so_a_run_repeats():
    """The head's initial weights are drawn at build time: two builds of one config start equal,
    whatever the RNGs did in between, and another seed starts elsewhere."""
    import tensorflow as tf

    from covid_cxr.pipeline import config as pipeline_config

    def initial_weights(seed):
        cfg = pipeline_config.load_config("quick", None, {"model.families": "[cnn3]", "model.weights": "none",
                                                          "training.seed": seed}).model_custom_config()
        task = features.get_task(cfg["model"]["task"])
        built = trainer_task._build(trainer_task._hparams_from_tuner(None, cfg), cfg, task)
        tf.random.uniform([3])  # the global RNG moves on, as it does between Tuner trials
        return built.model.get_weights()

    first, second, other = initial_weights(7), initial_weights(7), initial_weights(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


class _FakeAccessor:
    """Stands in for TFX's DataAccessor: yields fixed (transformed features, label) batches."""

    def __init__(self, sources, labels):
        self.sources, self.labels = sources, labels

    def tf_dataset_factory(self, files, options, schema):
        feats = {preprocessing.IMAGE_XF: tf.zeros([len(self.labels), 4, 4, 1]),
                 preprocessing.SOURCE_XF: tf.constant(self.sources)}
        return tf.data.Dataset.from_tensors((feats, tf.constant(self.labels, tf.int64)))


def test_training_batches_carry_the_weight_of_their_source_and_class():
    accessor = _FakeAccessor([b"cohen", b"cohen", b"radiography", b"rsna"], [1, 0, 1, 0])
    transform_output = types.SimpleNamespace(transformed_metadata=types.SimpleNamespace(schema=None))
    counts = trainer_task._count_source_labels(["f"], accessor, transform_output, 4)
    assert counts == {("cohen", 1): 1, ("cohen", 0): 1, ("radiography", 1): 1, ("rsna", 0): 1}
    assert trainer_task._per_class(counts) == {0: 2, 1: 2}
    weights = {("cohen", 1): 0.5, ("cohen", 0): 4.0, ("radiography", 1): 1.5, ("rsna", 0): 1.0}
    images, labels, sample_weights = next(iter(trainer_task._dataset(["f"], accessor, transform_output, 4, True, 0, weights)))
    assert images.shape == (4, 4, 4, 1) and labels.numpy().tolist() == [1, 0, 1, 0]
    assert sample_weights.numpy().tolist() == [0.5, 4.0, 1.5, 1.0]
    # Evaluation batches stay unweighted.
    assert len(next(iter(trainer_task._dataset(["f"], accessor, transform_output, 4, False, 0)))) == 2


def test_every_tuner_trial_fits_on_training_batches_built_for_it():
    made = []

    def training_batches():
        made.append(tf.data.Dataset.range(3))
        return made[-1]

    built = types.SimpleNamespace(model="model", pretrained=True)
    hypermodel = trainer_task._TrialModel(lambda hp: (built, None), training_batches, BINARY)
    fitted = []
    model = types.SimpleNamespace(fit=lambda x, **kwargs: fitted.append((x, kwargs)) or "history")
    assert hypermodel.build(None) == "model"
    for _ in range(2):
        assert hypermodel.fit(None, model, epochs=1) == "history"
    assert [x for x, _ in fitted] == made and made[0] is not made[1]
    assert fitted[0][1] == {"epochs": 1, "validation_data": None, "steps_per_epoch": None}


def _small_batches():
    rng = np.random.RandomState(0)
    x, y = rng.rand(24, 32, 32, 1).astype("float32"), np.arange(24) % 2
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def _trial_builder(weights, depths=(0, 2), **fixed):
    def build(hp):
        hparams = models.HParams(family="mobilenet_v2_035", dropout=hp.Choice("dropout", [0.2, 0.4]),
                                 fine_tune_layers=hp.Choice("fine_tune_layers", list(depths)), **fixed)
        built = models.build_model(hparams, 32, 2, weights=weights)
        training.compile_model(built, hparams, 2, models.PHASE_HEAD)
        return built, hparams
    return build


def _trial(hypermodel, **values):
    hp = keras_tuner.HyperParameters()
    hp.values.update(values)
    return hypermodel.fit(hp, hypermodel.build(hp), validation_data=_small_batches(), epochs=2, steps_per_epoch=3,
                          verbose=0)


def test_with_cached_features_tuner_trials_share_one_backbone_pass(pretrained_mobilenet, eager_functions, monkeypatch):
    passes = []

    def head_pass():
        passes.append(1)
        return _small_batches()

    smoothing = []
    make_loss = training.make_loss
    monkeypatch.setattr(training, "make_loss", lambda n, s=0.0: smoothing.append(s) or make_loss(n, s))
    hypermodel = trainer_task._TrialModel(_trial_builder(pretrained_mobilenet, label_smoothing=0.1),
                                          lambda: pytest.fail("a cached trial must not read augmented batches"),
                                          BINARY, head_pass)
    scores = []
    for dropout in (0.2, 0.4):
        history = _trial(hypermodel, dropout=dropout)
        assert len(history.history["val_auc"]) == 2  # what the Tuner's objective reads
        scores.append(history.history["loss"])
    assert len(passes) == 1 and scores[0] != scores[1]
    assert smoothing and set(smoothing) == {0.1}  # the cached head trains on the Trainer's loss too


def test_tuner_trials_fine_tune_when_asked_so_the_depth_they_drew_is_what_they_score(pretrained_mobilenet, eager_functions):
    def trials(fine_tune_epochs):
        hypermodel = trainer_task._TrialModel(_trial_builder(pretrained_mobilenet), _small_batches, BINARY,
                                              fine_tune_epochs=fine_tune_epochs)
        return [_trial(hypermodel, dropout=0.2, fine_tune_layers=layers).history for layers in (0, 2)]

    assert [len(h["val_auc"]) for h in trials(0)] == [2, 2]  # the head only, whatever the depth drawn
    no_fine_tuning, fine_tuned = trials(2)
    assert len(no_fine_tuning["val_auc"]) == 2 and len(fine_tuned["val_auc"]) == 4  # two head epochs, then two more
    assert fine_tuned["loss"][2:] != fine_tuned["loss"][:2]


def test_a_fine_tuning_trial_fine_tunes_from_the_heads_best_epoch(pretrained_mobilenet, eager_functions, monkeypatch):
    class FirstEpochBest(training.SelectionScore):  # the head's first epoch scores best, whatever it learnt
        def on_epoch_end(self, epoch, logs=None):
            logs["val_selection"] = 1.0 if epoch == 0 else 0.0

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            head_weights.append(self.model.get_weights())

    head_weights, fine_tune_start = [], []
    compile_model = training.compile_model
    monkeypatch.setattr(training, "SelectionScore", FirstEpochBest)
    monkeypatch.setattr(training, "compile_model", lambda built, hparams, n, phase, *args: (
        phase == models.PHASE_FINE_TUNE and fine_tune_start.append(built.model.get_weights()),
        compile_model(built, hparams, n, phase, *args))[1])
    hypermodel = trainer_task._TrialModel(_trial_builder(pretrained_mobilenet), _small_batches, BINARY,
                                          fine_tune_epochs=1)
    hp = keras_tuner.HyperParameters()
    hp.values.update(dropout=0.2, fine_tune_layers=2)
    hypermodel.fit(hp, hypermodel.build(hp), validation_data=_small_batches(), epochs=2, steps_per_epoch=3,
                   verbose=0, callbacks=[Record()])
    assert len(head_weights) == 3 and len(fine_tune_start) == 1  # two head epochs, one of fine-tuning
    same = [all(np.array_equal(a, b) for a, b in zip(epoch, fine_tune_start[0])) for epoch in head_weights[:2]]
    assert same == [True, False]


def test_the_tuner_scores_a_fine_tuning_trial_on_its_best_epoch_of_both_phases(monkeypatch):
    def history(first_epoch, val_auc):
        result = keras.callbacks.History()
        result.epoch, result.history = list(range(first_epoch, first_epoch + len(val_auc))), {"val_auc": val_auc}
        return result

    fits = iter([history(0, [0.6]), history(1, [0.7, 0.65])])  # the head's epoch, then two of fine-tuning
    model = types.SimpleNamespace(fit=lambda *args, **kwargs: next(fits))
    built = types.SimpleNamespace(model=model, pretrained=True)
    monkeypatch.setattr(training, "compile_model", lambda *args: None)
    hypermodel = trainer_task._TrialModel(lambda hp: (built, models.HParams(fine_tune_layers=2)), lambda: "batches",
                                          BINARY, fine_tune_epochs=2)
    result = hypermodel.fit(None, hypermodel.build(None), epochs=1)
    assert result.epoch == [0, 1, 2] and result.history == {"val_auc": [0.6, 0.7, 0.65]}
    objective = keras_tuner.Objective(training.TUNER_OBJECTIVE, direction="max")
    assert keras_tuner.engine.tuner_utils.convert_to_metrics_dict(result, objective)["val_auc"] == 0.7


def test_the_trainer_gets_the_tuners_feature_cache_only_for_the_same_inputs(monkeypatch):
    monkeypatch.setattr(training, "_SHARED_FEATURE_CACHES", type(training._SHARED_FEATURE_CACHES)())
    tuner_args = types.SimpleNamespace(train_files=["t/a", "t/b"], eval_files=["e/a"])
    trainer_args = types.SimpleNamespace(train_files=["t/b", "t/a"], eval_files=["e/a"])  # same files, listed otherwise
    weights = {("cohen", 1): 0.8, ("rsna", 0): 1.2}
    model_cfg = {"families": ["mobilenet_v2"], "weights": "auto", "image_size": 224}

    def cache(args=trainer_args, transform="tg", batch=32, seed=42, weights=weights, model_cfg=model_cfg):
        return trainer_task._feature_cache(args, transform, batch, seed, weights, model_cfg)

    tuners = trainer_task._feature_cache(tuner_args, "tg", 32, 42, dict(reversed(list(weights.items()))), model_cfg)
    tuners["filled"] = True
    assert cache() is tuners
    # A reloaded trainer/task.py (TFX reloads it before each component) still finds it.
    assert importlib.reload(trainer_task)._feature_cache(trainer_args, "tg", 32, 42, weights, model_cfg) is tuners
    different = [cache(args=types.SimpleNamespace(train_files=["t/a"], eval_files=["e/a"])), cache(transform="tg2"),
                 cache(batch=16), cache(seed=1), cache(weights={("cohen", 1): 1.0, ("rsna", 0): 1.2}),
                 cache(model_cfg=dict(model_cfg, weights="none"))]
    assert all(c == {} for c in different)
    # Only the most recent sets are kept: the Tuner's went first.
    assert len(training._SHARED_FEATURE_CACHES) == training.SHARED_FEATURE_CACHES_KEPT
    assert cache() == {}


def test_tuner_and_trainer_refuse_data_curated_for_another_task(tmp_path):
    # A compiled Kubeflow / Vertex spec skips `covid-cxr run`'s check, and the shared schema cannot
    # tell covid-vs-pneumonia's label_index 0 (pneumonia) from covid-vs-normal's (normal).
    synthetic.generate(str(tmp_path), "covid-vs-pneumonia", patients_per_class=2, seed=0)
    config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path), "model.task": "covid-vs-normal"})
    fn_args = tfx.components.FnArgs(custom_config=dict(config.model_custom_config(), data_dir=str(tmp_path)))
    for fn in (trainer_task.tuner_fn, trainer_task.run_fn):
        with pytest.raises(writer.CurationMismatch, match="curated for task 'covid-vs-pneumonia' but the config "
                                                           "asks for 'covid-vs-normal'"):
            fn(fn_args)


def test_the_served_summary_names_sources_without_the_curating_machines_paths():
    summary = {"settings": {"task": "covid-vs-normal", "sources": {"rsna": "/home/jdoe/DOE_JANE/rsna", "cohen": "/c"},
                            "max_side": 1024}, "patients": 9}
    served = trainer_task._summary_for_the_model(summary)
    assert served == {"settings": {"task": "covid-vs-normal", "sources": ["cohen", "rsna"], "max_side": 1024},
                      "patients": 9}
    assert summary["settings"]["sources"]["rsna"] == "/home/jdoe/DOE_JANE/rsna"  # the curation's own copy is kept
    assert trainer_task._summary_for_the_model({"patients": 1}) == {"settings": {}, "patients": 1}
    held_out = {"source": "cohen", "dir": "/home/jdoe/external", "accepted": 4, "per_source_class": {"cohen": {"covid": 4}}}
    served = trainer_task._summary_for_the_model({"held_out": held_out})
    assert served["held_out"] == {"source": "cohen", "accepted": 4, "per_source_class": {"cohen": {"covid": 4}}}
    assert trainer_task._summary_for_the_model({"held_out": None})["held_out"] is None


def _image_batches(n, size, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    images = np.clip(rng.normal(0.5, 0.15, (n, size, size, 1)) + shift, 0, 1).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((images, np.zeros(n, np.int64))).batch(8)


def _fitted_check(members, train_ds, eval_ds, quantile):
    """run_fn's steps: the scorer, one eval pass of the members (scores and features) joined into the
    served ones, one pass over the training films, the check fitted."""
    scorer, families = trainer_task._typicality_scorer(members, quantile)
    ensemble = models.average_ensemble(members).model if len(members) > 1 else members[0].model
    eval_features = train_features = None
    if eval_ds:
        scores, eval_features = trainer_task._served_eval(
            members, trainer_task._one_pass(eval_ds, trainer_task._member_scorers(members, quantile))[1])
        # the joined scores are the ensemble's, as it serves them
        np.testing.assert_allclose(scores, ensemble(np.concatenate([x for x, _ in eval_ds]), training=False), rtol=1e-5)
    if scorer is not None:
        train_features = trainer_task._one_pass(train_ds, {"scorer": scorer})[1]["scorer"][1]
    return trainer_task._typicality_check(scorer, families, train_features, eval_features, quantile)


def test_the_atypical_input_check_is_fitted_on_every_pooling_members_features(caplog):
    hparams = models.HParams(family="bn_double_conv", image_size=32, dense_units=8, dropout=0.0)
    member = models.build_model(hparams, input_size=32, num_classes=2, weights="none")
    flat = models.build_model(dataclasses.replace(hparams, family="cnn3"), input_size=32, num_classes=2, weights="none")
    check, summary = _fitted_check([member, flat], _image_batches(40, 32, 1), _image_batches(20, 32, 2), 0.9)
    assert summary["features"] == "pooled features of bn_double_conv" and summary["train_films"] == 40
    assert summary["eval_films"] == 20 and summary["eval_atypical"] == 2 and summary["quantile"] == 0.9
    assert summary["dimensions"] == member.model.get_layer(models.FEATURES_NAME).output.shape[-1]
    eval_images = np.concatenate([x.numpy() for x, _ in _image_batches(20, 32, 2)])
    scores, atypicality = check(tf.constant(eval_images))
    assert int(np.sum(atypicality.numpy() > 1)) == 2  # the graph agrees with the fit
    # The served scores are the pair's average, though only one member's features are measured.
    served = models.average_ensemble([member, flat]).model(eval_images, training=False).numpy()
    np.testing.assert_allclose(scores.numpy(), served, rtol=1e-5)
    # Several members: the served ensemble's probabilities and the pooling members' features side by
    # side, from one pass (augmentation off).
    second = models.build_model(dataclasses.replace(hparams, family="mobilenet_v2_035"), input_size=32, num_classes=2,
                                weights="none")
    scorer, families = models.scorer_with_features([member, flat, second])
    assert families == ["bn_double_conv", "mobilenet_v2_035"]
    scores, pooled = (t.numpy() for t in scorer(eval_images, training=False))
    ensemble = models.average_ensemble([member, flat, second]).model
    np.testing.assert_allclose(scores, ensemble(eval_images, training=False).numpy(), rtol=1e-5)
    np.testing.assert_allclose(pooled, np.concatenate(
        [models.pooled_features(m.model)(eval_images, training=False).numpy() for m in (member, second)], axis=1), rtol=1e-5)
    # Off, or impossible (flattening CNNs have no pooled features): the model is served without it, said so.
    assert _fitted_check([member], None, None, 0.0) == (None, None)
    with caplog.at_level("WARNING"):
        assert _fitted_check([flat], _image_batches(40, 32, 1), _image_batches(20, 32, 2), 0.9) == (None, None)
    assert "cnn3: no pooled features layer, so the served model has no atypical-input check" in caplog.text
    with caplog.at_level("WARNING"):  # 0.9 needs 20 validation films
        assert _fitted_check([member], _image_batches(40, 32, 1), _image_batches(19, 32, 2), 0.9) == (None, None)
    assert "no atypical-input check: too few films" in caplog.text


def _brightness_model(slope):
    """A stand-in for a trained member: P(covid) = sigmoid(slope x (the film's mean - 0.3)), so a
    slope above 0 separates _run_fn_with_stand_ins's bright COVID films and 0 is chance (AUC 0.5). The
    film's mean is its pooled features, for the atypical-input check."""
    inputs = keras.Input((32, 32, 1))
    dense = keras.layers.Dense(1, activation="sigmoid")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D(name=models.FEATURES_NAME)(inputs)))
    dense.set_weights([np.array([[slope]], np.float32), np.array([-0.3 * slope], np.float32)])
    return model


def _stand_in_inputs(tmp_path, monkeypatch, overrides=None, eval_counts=None, record=None, films=8):
    """tuner_fn's and run_fn's inputs on synthetic data, the Transform stood in for: returns (fn_args,
    images, labels). ``films`` training films (8), half of each class; the eval split counts ``eval_counts``
    (default the same) and holds the same films. ``record`` collects each dataset read: "datasets"
    (the arguments of each ``_dataset``), "passes" (how often each split, "t" or "e", was read
    through) and "training_batches" (``one_pass`` of each set made; the set is stood in for by
    ("training batches", one_pass))."""
    import collections

    data_dir = str(tmp_path / "data")
    synthetic.generate(data_dir, "covid-vs-normal", patients_per_class=2, seed=0)
    config = cfg.load_config("quick", overrides={"data.data_dir": data_dir, "model.image_size": "32",
                                                 "training.atypical_quantile": "0", **(overrides or {})})
    fn_args = tfx.components.FnArgs(
        custom_config=dict(config.model_custom_config(), data_dir=data_dir), train_files=["t"], eval_files=["e"],
        # The Trainer's executor copies transform_graph_path to the deprecated transform_output; the Tuner's does not.
        transform_output="transform graph", transform_graph_path="transform graph", working_dir=str(tmp_path / "tuning"),
        model_run_dir=str(tmp_path / "run"), serving_model_dir=str(tmp_path / "model"),
        hyperparameters=None, data_accessor=None)
    rng = np.random.RandomState(0)
    labels = np.arange(films) % 2
    images = (rng.rand(films, 32, 32, 1) * 0.2 + 0.4 * labels[:, None, None, None]).astype("float32")  # COVID brighter
    record = {} if record is None else record
    monkeypatch.setattr(trainer_task.tft, "TFTransformOutput",
                        lambda path: None if path == "transform graph" else pytest.fail(f"no Transform graph at {path}"))
    half = {("s", 0): films // 2, ("s", 1): films // 2}
    counts = {"t": half, "e": eval_counts or half}
    monkeypatch.setattr(trainer_task, "_count_source_labels", lambda files, *a: collections.Counter(counts[files[0]]))

    def dataset(*args, **kwargs):
        record.setdefault("datasets", []).append(args)

        def batches():  # called for each pass over the dataset
            record.setdefault("passes", collections.Counter())[args[0][0]] += 1
            yield from ((images[i:i + 4], labels[i:i + 4]) for i in range(0, films, 4))

        return tf.data.Dataset.from_generator(batches, output_signature=(
            tf.TensorSpec((None, 32, 32, 1), tf.float32), tf.TensorSpec((None,), tf.int64)))

    monkeypatch.setattr(trainer_task, "_dataset", dataset)
    monkeypatch.setattr(trainer_task, "_training_batches", lambda *a, one_pass=False: (
        record.setdefault("training_batches", []).append(one_pass), ("training batches", one_pass))[1])
    return fn_args, images, labels


def _run_fn_with_stand_ins(tmp_path, monkeypatch, ensemble_with, built_as=None, slopes=None, overrides=None,
                           eval_counts=None, record=None, films=8):
    """run_fn on synthetic data with the Transform, the fits and the export stood in for: returns
    (the model it exports, its metadata, the members it built). A family in ``slopes`` "trains" into
    a :func:`_brightness_model` of that slope; the others keep their initial weights. ``record``
    also collects (:func:`_stand_in_inputs`) "fits" (the keyword arguments of each fit) and
    "export" (the export's threshold and atypical-input check)."""
    from covid_cxr.serving import export

    record = {} if record is None else record
    fn_args, images, _ = _stand_in_inputs(tmp_path, monkeypatch, dict(overrides or {}, **{"model.ensemble_with": ensemble_with}),
                                          eval_counts, record, films)

    def fit(built, hparams, train_ds, eval_ds, **kwargs):
        record.setdefault("fits", []).append(dict(kwargs, train_ds=train_ds))
        if built.family in (slopes or {}):
            built.model = _brightness_model(slopes[built.family])
        return {"phase": [0], "epoch": [0], "val_auc": [0.5], training.KEPT: [1.0]}

    monkeypatch.setattr(training, "fit", fit)
    built = []
    real_build = trainer_task._build

    def build(hparams, cfg_, task):
        family = (built_as or {}).get(hparams.family, hparams.family)
        built.append(real_build(dataclasses.replace(hparams, family=family), cfg_, task))
        return built[-1]

    monkeypatch.setattr(trainer_task, "_build", build)
    exported = {}
    monkeypatch.setattr(export, "export_serving_model",
                        lambda model, tto, task, threshold, metadata, out, typicality_check=None:
                        exported.update(model=model, metadata=metadata, threshold=threshold, check=typicality_check))
    trainer_task.run_fn(fn_args)
    record["export"] = {"threshold": exported["threshold"], "check": exported["check"]}
    return exported["model"], exported["metadata"], built, images


def test_the_trainer_serves_the_mean_of_its_ensemble_members(tmp_path, monkeypatch):
    model, metadata, built, images = _run_fn_with_stand_ins(tmp_path, monkeypatch, "[cnn4]",
                                                            slopes={"cnn3": 10.0, "cnn4": 5.0})
    assert metadata["ensemble_members"] == ["cnn3", "cnn4"] and metadata["family"] == "cnn3+cnn4"
    expected = np.mean([m.model(images, training=False).numpy() for m in built], axis=0)
    np.testing.assert_allclose(model(images, training=False).numpy(), expected, rtol=1e-5)
    assert [(f["family"], f["eval_auc"], f["served"]) for f in metadata["training"]] == [
        ("cnn3", 1.0, True), ("cnn4", 1.0, True)]


def test_a_member_at_chance_is_not_averaged_into_the_served_model(tmp_path, monkeypatch, caplog):
    typicality_members = []
    typicality_scorer = trainer_task._typicality_scorer
    monkeypatch.setattr(trainer_task, "_typicality_scorer", lambda members, quantile: (
        typicality_members.append([m.family for m in members]), typicality_scorer(members, quantile))[1])
    with caplog.at_level("WARNING"):
        model, metadata, built, images = _run_fn_with_stand_ins(tmp_path, monkeypatch, "[cnn4]",
                                                                slopes={"cnn3": 10.0, "cnn4": 0.0})
    assert "ensemble member cnn4 dropped: eval AUC 0.500 is below training.member_min_auc 0.60" in caplog.text
    assert metadata["ensemble_members"] == ["cnn3"] and metadata["family"] == "cnn3"
    np.testing.assert_allclose(model(images, training=False).numpy(), built[0].model(images, training=False).numpy(),
                               rtol=1e-6)
    assert typicality_members == [["cnn3"]]  # the atypical-input check measures the served members only
    assert metadata["member_min_auc"] == 0.6
    assert [(f["family"], f["eval_auc"], f["served"]) for f in metadata["training"]] == [
        ("cnn3", 1.0, True), ("cnn4", 0.5, False)]
    assert metadata["history"]["member_names"] == ["cnn3", "cnn4"]  # both members' curves are kept
    assert metadata["validation_metrics"]["auc"] == 1.0


def test_when_no_member_reaches_the_floor_the_best_is_served_alone(tmp_path, monkeypatch, caplog):
    # cnn3 ranks every COVID film below the normals (AUC 0), cnn4 is at chance (0.5): the better one is served.
    with caplog.at_level("WARNING"):
        model, metadata, built, images = _run_fn_with_stand_ins(tmp_path, monkeypatch, "[cnn4]",
                                                                slopes={"cnn3": -10.0, "cnn4": 0.0})
    assert ("no ensemble member reached training.member_min_auc 0.60: serving the best alone, cnn4 (eval AUC 0.500)"
            in caplog.text)
    assert "ensemble member cnn3 dropped: eval AUC 0.000 is below training.member_min_auc 0.60" in caplog.text
    assert metadata["ensemble_members"] == ["cnn4"] and metadata["family"] == "cnn4"
    np.testing.assert_allclose(model(images, training=False).numpy(), built[1].model(images, training=False).numpy(),
                               rtol=1e-6)
    assert [(f["family"], f["served"]) for f in metadata["training"]] == [("cnn3", False), ("cnn4", True)]


def _members(*families):
    return [types.SimpleNamespace(family=family) for family in families]


def test_members_below_the_floor_are_dropped_and_the_rest_served(caplog):
    members = _members("mobilenet_v2", "cnn4", "cnn3")
    with caplog.at_level("WARNING"):
        served, dropped = trainer_task.select_members(members, [0.9, 0.5, 0.6], 0.6)
    assert served == [members[0], members[2]] and dropped == [members[1]]  # the floor itself is enough
    assert caplog.messages == ["ensemble member cnn4 dropped: eval AUC 0.500 is below training.member_min_auc 0.60"]
    caplog.clear()
    assert trainer_task.select_members(members[:2], [0.97, 0.95], 0.6) == (members[:2], [])  # full's two learn
    assert not caplog.messages


def test_when_every_member_is_below_the_floor_the_best_is_kept_the_first_on_ties(caplog):
    members = _members("cnn3", "cnn4", "bn_double_conv")
    with caplog.at_level("WARNING"):
        assert trainer_task.select_members(members, [0.52, 0.58, 0.4], 0.6) == ([members[1]], [members[0], members[2]])
    assert caplog.messages[0] == ("no ensemble member reached training.member_min_auc 0.60: serving the best alone, "
                                  "cnn4 (eval AUC 0.580), for the Evaluator's gate to judge")
    assert len(caplog.messages) == 3  # and one line per member dropped
    assert trainer_task.select_members(members, [0.55, 0.55, 0.5], 0.6)[0] == [members[0]]  # the Tuner's family


def test_a_lone_member_is_served_whatever_its_auc():
    member = _members("cnn3")
    assert trainer_task.select_members(member, [], 0.6) == (member, [])
    assert trainer_task.select_members(member, [0.5], 0.6) == (member, [])


def test_a_members_eval_auc_is_the_gates_covid_vs_rest_auc():
    three_class = features.get_task("three-class")
    covid = three_class.positive_index
    others = [i for i in range(3) if i != covid]
    labels = np.array([covid, covid, others[0], others[1], others[0], others[1]])
    scores = np.zeros((6, 3))
    scores[:, covid] = [0.5, 0.4, 0.45, 0.1, 0.2, 0.3]  # one normal above a COVID film: 7/8
    scores[:, others[0]] = [0.5, 0.6, 0.55, 0.0, 0.8, 0.0]
    scores[:, others[1]] = 1 - scores[:, covid] - scores[:, others[0]]
    assert trainer_task._eval_auc(three_class, labels, scores) == pytest.approx(7 / 8)
    assert trainer_task._eval_auc(BINARY, np.array([0, 0, 1, 1]), np.array([[0.1], [0.6], [0.5], [0.9]])) == 0.75


def test_a_member_built_as_a_family_already_trained_is_skipped(tmp_path, monkeypatch):
    # e.g. two transfer families without weights, both falling back to the same scratch CNN
    model, metadata, built, images = _run_fn_with_stand_ins(tmp_path, monkeypatch, "[cnn4]", built_as={"cnn4": "cnn3"})
    assert len(built) == 2 and metadata["ensemble_members"] == ["cnn3"] and metadata["family"] == "cnn3"
    np.testing.assert_allclose(model(images, training=False).numpy(),
                               built[0].model(images, training=False).numpy(), rtol=1e-6)


def test_the_trainer_writes_its_history_where_evaluate_reads_it():
    """Two definitions on purpose: importing evaluation.artifacts would change the Trainer's code fingerprint."""
    from covid_cxr.evaluation import artifacts

    assert trainer_task.HISTORY_FILE == artifacts.HISTORY_FILE


_TRANSFORM_OUTPUT = types.SimpleNamespace(transformed_metadata=types.SimpleNamespace(schema=None))


class _RecordingAccessor(_FakeAccessor):
    """A _FakeAccessor that keeps the options each read asked for."""

    def __init__(self, sources, labels):
        super().__init__(sources, labels)
        self.options = []

    def tf_dataset_factory(self, files, options, schema):
        self.options.append(options)
        return super().tf_dataset_factory(files, options, schema)


def _training_set(accessor, **kwargs):
    fn_args = types.SimpleNamespace(train_files=["f"], data_accessor=accessor)
    return trainer_task._training_batches(fn_args, _TRANSFORM_OUTPUT, 4, 7, {("cohen", 1): 2.0, ("rsna", 0): 0.5},
                                          **kwargs)()


@pytest.mark.parametrize("read, endless", [
    (lambda accessor: trainer_task._dataset(["f"], accessor, _TRANSFORM_OUTPUT, 4, True, 7), True),
    (lambda accessor: trainer_task._dataset(["f"], accessor, _TRANSFORM_OUTPUT, 4, False, 7), False),
    (_training_set, True),
    (functools.partial(_training_set, one_pass=True), False),  # backbone features computed once
    (lambda accessor: trainer_task._count_source_labels(["f"], accessor, _TRANSFORM_OUTPUT, 4), False),
], ids=["training", "eval", "training-batches", "one-pass", "counting"])
def test_training_reads_are_endless_and_shuffled_by_the_seed_and_every_other_read_one_ordered_pass(read, endless):
    accessor = _RecordingAccessor([b"cohen", b"rsna"], [1, 0])
    read(accessor)
    (options,) = accessor.options
    assert options.batch_size == 4 and options.label_key == preprocessing.LABEL_XF
    assert (options.num_epochs, options.shuffle) == ((None, True) if endless else (1, False))
    if endless:
        assert options.shuffle_seed == 7


def test_training_batches_are_weighted_with_the_weights_given():
    _, labels, weights = next(iter(_training_set(_FakeAccessor([b"cohen", b"rsna"], [1, 0]))))
    assert labels.numpy().tolist() == [1, 0] and weights.numpy().tolist() == [2.0, 0.5]


def test_example_weights_balance_the_tasks_classes_at_the_configured_strength():
    import collections

    three_class = features.get_task("three-class")
    counts = collections.Counter({("cohen", 2): 6, ("cohen", 0): 2, ("rsna", 0): 2, ("rsna", 1): 2})
    # Strength 0: n / (3 classes x n_class) for every source, whatever the task's classes present.
    assert trainer_task._training_weights(counts, three_class, {"source_balance": 0.0}) == pytest.approx(
        {("cohen", 2): 12 / 18, ("cohen", 0): 1.0, ("rsna", 0): 1.0, ("rsna", 1): 2.0})
    balanced = trainer_task._training_weights(counts, three_class, {"source_balance": 0.5})
    assert balanced == pytest.approx(training.source_class_weights(counts, 3, 0.5))
    assert balanced != pytest.approx(training.source_class_weights(counts, 3, 0.0))


def test_an_epoch_is_every_training_film_once_rounded_up_to_whole_batches():
    assert [trainer_task._steps(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [1, 1, 1, 2, 2, 3]


def test_an_eval_class_counted_zero_is_missing_too():
    with pytest.raises(ValueError, match=r"holds no covid films \(eval films per class: normal 3, covid 0\)"):
        trainer_task._check_eval_classes(BINARY, {0: 3, 1: 0})


def _searched_config(**overrides):
    return cfg.load_config("full", None, {"tuner.fine_tune_epochs": "1", **overrides}).model_custom_config()


def test_the_search_space_takes_the_first_of_each_listed_value_and_the_augmentation_from_the_config():
    cfg_ = _searched_config(**{"tuner.dropouts": "[0.4, 0.2]", "tuner.dense_units": "[32, 64]",
                               "tuner.fine_tune_layers": "[20, 10]", "model.augment": "false",
                               "model.augment_contrast": "0.2", "model.augment_gamma": "0.3"})
    hparams = trainer_task._search_space(keras_tuner.HyperParameters(), cfg_)
    assert (hparams.dropout, hparams.dense_units, hparams.fine_tune_layers) == (0.4, 32, 20)
    assert hparams.augment == models.AugmentConfig(enabled=False, contrast=0.2, gamma=0.3)


def test_the_configured_augmentation_sizes_reach_the_built_models_layers():
    # The path the Tuner and the Trainer both take: custom_config -> _search_space -> _build.
    def augmentation_layers(**overrides):
        custom = cfg.load_config("quick", None, {"model.weights": "none", **overrides}).model_custom_config()
        hparams = trainer_task._hparams_from_tuner(None, custom)
        built = trainer_task._build(hparams, custom, BINARY)
        return {layer.name: layer for layer in built.model.get_layer(models.AUGMENTATION_NAME).layers}

    layers = augmentation_layers(**{"model.augment_rotation_degrees": "36", "model.augment_shift": "0.25",
                                    "model.augment_shear": "0.3", "model.augment_zoom": "0.05",
                                    "model.augment_horizontal_flip": "false"})
    assert list(layers) == ["aug_rotation", "aug_shift", "aug_shear", "aug_zoom"]  # no flip
    assert layers["aug_rotation"].factor == pytest.approx(36 / 360)
    assert (layers["aug_shift"].height_factor, layers["aug_shift"].width_factor) == (0.25, 0.25)
    assert layers["aug_shear"].factor == 0.3
    assert (layers["aug_zoom"].height_factor, layers["aug_zoom"].width_factor) == (0.05, 0.05)
    # Untouched, they are the studies' (AugmentConfig's) values; a size of 0 drops its layer.
    defaults = augmentation_layers()
    assert list(defaults) == ["aug_flip", "aug_rotation", "aug_shift", "aug_shear", "aug_zoom"]
    expected = {layer.name: layer.get_config() for layer in models.augmentation_block(models.AugmentConfig()).layers}
    assert {name: layer.get_config() for name, layer in defaults.items()} == expected
    assert "aug_shear" not in augmentation_layers(**{"model.augment_shear": "0"})


def test_the_trainer_takes_the_tuners_best_values_when_the_tuner_ran():
    cfg_ = _searched_config(**{"tuner.dropouts": "[0.4, 0.2]", "tuner.dense_units": "[32, 64]"})
    hp = keras_tuner.HyperParameters()
    trainer_task._search_space(hp, cfg_)
    hp.values.update(dropout=0.2, dense_units=64)
    hparams = trainer_task._hparams_from_tuner(hp.get_config(), cfg_)
    assert (hparams.dropout, hparams.dense_units) == (0.2, 64)
    assert trainer_task._hparams_from_tuner(None, cfg_).dropout == 0.4  # no Tuner: the first values


def test_members_are_built_with_the_configured_weights_and_fallback(monkeypatch):
    cfg_ = cfg.load_config("quick", None, {"model.fallback": "cnn4", "model.weights": "none"}).model_custom_config()
    made = []
    monkeypatch.setattr(models, "build_model", lambda hparams, **kwargs: made.append(kwargs))
    trainer_task._build(trainer_task._hparams_from_tuner(None, cfg_), cfg_, BINARY)
    assert made == [{"input_size": cfg_["model"]["image_size"], "num_classes": 2, "weights": "none",
                     "weights_dir": cfg_["model"]["weights_dir"] or None, "fallback": "cnn4"}]


@pytest.mark.parametrize("measured, logged", [
    (["mobilenet_v2"], ["the atypical-input check leaves out cnn3 (no pooled features)"]),
    (["cnn3", "mobilenet_v2"], [])], ids=["one-left-out", "all-measured"])
def test_the_atypical_input_check_names_the_members_it_leaves_out(monkeypatch, caplog, measured, logged):
    monkeypatch.setattr(models, "scorer_with_features", lambda members: ("scorer", measured))
    with caplog.at_level("INFO", logger=trainer_task.__name__):
        assert trainer_task._typicality_scorer(_members("cnn3", "mobilenet_v2"), 0.9) == ("scorer", measured)
    assert caplog.messages == logged


def test_the_trainer_reads_eval_films_in_one_ordered_pass_and_fits_as_configured(tmp_path, monkeypatch):
    record, cache_keys, cache = {}, [], {"the Tuner's": "features"}
    monkeypatch.setattr(trainer_task, "_feature_cache", lambda *args: cache_keys.append(args[1:4]) or cache)
    _run_fn_with_stand_ins(tmp_path, monkeypatch, "[cnn4]", eval_counts={("s", 0): 2, ("s", 1): 2}, record=record,
                           overrides={"training.cache_frozen_features": "true", "training.epochs": "3",
                                      "training.fine_tune_epochs": "2", "training.batch_size": "3"})
    # Eval films, and the training films the atypical-input check is fitted on: one ordered pass each.
    assert record["datasets"] and all(args[3:5] == (3, False) for args in record["datasets"])
    assert sorted(record["training_batches"]) == [False, True]  # augmented batches, and one pass for the features
    fits = [{k: fit[k] for k in ("train_ds", "head_pass", "epochs", "fine_tune_epochs", "steps_per_epoch")}
            for fit in record["fits"]]
    assert cache_keys == [("transform graph", 3, 42)] and all(fit["feature_cache"] is cache for fit in record["fits"])
    assert fits == 2 * [{"train_ds": ("training batches", False), "head_pass": ("training batches", True),
                         "epochs": 3, "fine_tune_epochs": 2, "steps_per_epoch": 3}]  # 8 training films, 3 a batch


def test_after_training_each_split_is_read_once_and_gives_what_the_served_graphs_give_its_films(tmp_path, monkeypatch):
    """One pass over the eval films (each member's scores and pooled features, the served ones joined
    from them, the fingerprints) and one over the training films (the check's features, the
    fingerprints); the member check, threshold, atypical-input check and hashes are those of the
    served model and scorer run on the films."""
    from covid_cxr.serving import typicality

    record = {}
    model, metadata, built, images = _run_fn_with_stand_ins(
        tmp_path, monkeypatch, "[cnn4]", slopes={"cnn3": 10.0, "cnn4": 5.0}, record=record, films=12,
        overrides={"training.atypical_quantile": "0.5"})
    assert record["passes"] == {"e": 1, "t": 1}  # after training: fit, counting and the export are stood in for
    assert metadata["ensemble_members"] == ["cnn3", "cnn4"]
    labels = np.arange(12) % 2

    def scored(scorer):  # in the passes' batches of four
        outputs = [scorer(images[i:i + 4], training=False) for i in range(0, 12, 4)]
        return [np.concatenate([np.asarray(o[k]) for o in outputs]) for k in range(len(outputs[0]))]

    assert [f["eval_auc"] for f in metadata["training"]] == [
        trainer_task._eval_auc(BINARY, labels, scored(lambda x, training: [m.model(x, training=training)])[0])
        for m in built]
    scorer, families = models.scorer_with_features(built)
    scores, pooled = scored(scorer)
    np.testing.assert_array_equal(scores, scored(lambda x, training: [model(x, training=training)])[0])
    train_cfg = cfg.load_config("quick").training
    assert record["export"]["threshold"] == trainer_task._decision_threshold(BINARY, labels, scores, {
        "target_sensitivity": train_cfg.target_sensitivity, "target_specificity": train_cfg.target_specificity})
    assert metadata["typicality"] == typicality.fitted_check(scorer, families, pooled, pooled, 0.5)[1]
    assert metadata["typicality"]["features"] == "pooled features of cnn3 + cnn4"
    assert metadata[near_copies.KEY]["hashes"] == [h.hex() for h in near_copies.hash_batch(images)] * 2


def test_the_served_model_carries_its_run_and_the_threshold_and_check_it_was_given(tmp_path, monkeypatch):
    import json

    data_dir = tmp_path / "data"
    monkeypatch.setattr(trainer_task, "_typicality_check", lambda *args: ("the check", {"eval_atypical": 1}))
    real_read = writer.read_summary
    monkeypatch.setattr(writer, "read_summary", lambda d: dict(real_read(d), settings=dict(
        real_read(d)["settings"], sources={"rsna": "/home/jdoe/rsna", "cohen": "/c"})))
    record = {}
    model, metadata, _, images = _run_fn_with_stand_ins(
        tmp_path, monkeypatch, "[]", eval_counts={("s", 0): 3, ("s", 1): 5}, record=record,
        overrides={"tuner.image_sizes": "[24, 32]", "training.source_balance": "0.5",
                   "training.target_sensitivity": "0.9", "training.target_specificity": "0.5"})
    assert metadata["transform_image_size"] == 32 and metadata["hyperparameters"]["image_size"] == 24
    assert metadata["train_class_counts"] == {"normal": 4, "covid": 4}
    assert metadata["eval_class_counts"] == {"normal": 3, "covid": 5}
    assert (metadata["source_balance"], metadata["target_sensitivity"], metadata["target_specificity"]) == (0.5, 0.9, 0.5)
    assert metadata["data_summary"]["settings"]["sources"] == ["cohen", "rsna"]  # names, not the curator's folders
    assert metadata["data_summary"]["accepted"] == real_read(str(data_dir))["accepted"]
    with open(tmp_path / "run" / trainer_task.HISTORY_FILE) as f:
        assert json.load(f) == metadata["history"]
    # A lone member's eval AUC is the validation's.
    assert [f["eval_auc"] for f in metadata["training"]] == [metadata["validation_metrics"]["auc"]]
    labels = np.arange(8) % 2
    expected = trainer_task._decision_threshold(BINARY, labels, model(images, training=False).numpy(),
                                                {"target_sensitivity": 0.9, "target_specificity": 0.5})
    assert record["export"] == {"threshold": expected, "check": "the check"}
    assert metadata["typicality"] == {"eval_atypical": 1}


@pytest.mark.parametrize("fn", ["tuner_fn", "run_fn"])
def test_tuner_and_trainer_refuse_an_eval_split_missing_a_class_before_training(tmp_path, monkeypatch, fn):
    fn_args, _, _ = _stand_in_inputs(tmp_path, monkeypatch, eval_counts={("s", 0): 4})
    monkeypatch.setattr(trainer_task, "_build", lambda *a: pytest.fail("built before the eval split was checked"))
    with pytest.raises(ValueError, match=r"^the eval split holds no covid films"):
        getattr(trainer_task, fn)(fn_args)


@pytest.mark.parametrize("cache", [True, False])
def test_the_tuner_maximises_the_objective_over_the_configured_trials_and_epochs(tmp_path, monkeypatch, cache):
    record, phases = {}, []
    fn_args, _, _ = _stand_in_inputs(tmp_path, monkeypatch, record=record, overrides={
        "training.cache_frozen_features": str(cache).lower(), "training.batch_size": "3", "tuner.trials": "3",
        "tuner.epochs": "2", "model.families": "[cnn3]", "model.weights": "none"})
    monkeypatch.setattr(training, "compile_model", lambda built, hparams, n, phase, *args: phases.append(phase))
    result = trainer_task.tuner_fn(attr.evolve(fn_args, transform_output=None))  # as the Tuner's executor makes them
    tuner, config = result.tuner, fn_args.custom_config
    assert tuner.oracle.objective.name == training.TUNER_OBJECTIVE and tuner.oracle.objective.direction == "max"
    assert tuner.oracle.max_trials == 3 and tuner.oracle.seed == config["training"]["seed"]  # a run repeats
    assert tuner.hypermodel._head_pass == (("training batches", True) if cache else None)
    assert tuner.hypermodel._fine_tune_epochs == config["tuner"]["fine_tune_epochs"]
    assert {k: result.fit_kwargs[k] for k in ("steps_per_epoch", "epochs")} == {"steps_per_epoch": 3, "epochs": 2}
    assert record["datasets"] and all(args[3:5] == (3, False) for args in record["datasets"])  # eval: one pass
    assert phases and set(phases) == {models.PHASE_END_TO_END}  # a scratch CNN's trials train end to end


def _stub_trial(monkeypatch, pretrained=True, fine_tune_layers=2, head_pass=None, same_model=True,
                validation_data="eval", feature_cache=None):
    """A _TrialModel trial (3 head epochs, 2 of fine-tuning asked) on stand-in fits: returns the
    keyword arguments of each model.fit, each fit_head_on_features, then the trial's history."""
    fits, head_fits = [], []

    def history(first_epoch, epochs):
        result = keras.callbacks.History()
        result.epoch, result.history = list(range(first_epoch, epochs)), {"val_auc": [0.5] * (epochs - first_epoch)}
        return result

    model = types.SimpleNamespace(fit=lambda *args, **kwargs: fits.append(kwargs) or history(
        kwargs.get("initial_epoch", 0), kwargs["epochs"]))
    monkeypatch.setattr(training, "compile_model", lambda *args: None)
    monkeypatch.setattr(training, "fit_head_on_features", lambda *args, **kwargs: head_fits.append(kwargs) or history(
        0, kwargs["epochs"]))
    built = types.SimpleNamespace(model=model, pretrained=pretrained)
    hparams = models.HParams(fine_tune_layers=fine_tune_layers, label_smoothing=0.1)
    hypermodel = trainer_task._TrialModel(lambda hp: (built, hparams), lambda: "batches", BINARY, head_pass=head_pass,
                                          seed=7, feature_cache=feature_cache, fine_tune_epochs=2)
    hypermodel.build(None)
    result = hypermodel.fit(None, model if same_model else types.SimpleNamespace(fit=model.fit),
                            validation_data=validation_data, epochs=3, callbacks=["the tuner's"])
    return fits, head_fits, result


def test_a_fine_tuning_trial_picks_up_at_the_heads_last_epoch_and_stops_only_its_head_at_the_best_epoch(monkeypatch):
    fits, _, result = _stub_trial(monkeypatch)
    (head, fine_tune) = fits
    *best_epoch, tuners = head["callbacks"]
    assert tuners == "the tuner's" and [type(c) for c in best_epoch] == [training.SelectionScore, keras.callbacks.EarlyStopping]
    assert best_epoch[1].patience == 3 and best_epoch[1].monitor == training.MONITOR  # never stops the head early
    assert (fine_tune["initial_epoch"], fine_tune["epochs"], fine_tune["callbacks"]) == (3, 5, ["the tuner's"])
    assert result.epoch == [0, 1, 2, 3, 4]
    fits, _, _ = _stub_trial(monkeypatch, validation_data=None)  # nothing to pick the best epoch on
    assert [f["callbacks"] for f in fits] == [["the tuner's"], ["the tuner's"]]


@pytest.mark.parametrize("trial", [{"fine_tune_layers": 0}, {"pretrained": False}], ids=["no-depth", "scratch"])
def test_a_trial_with_nothing_to_fine_tune_fits_its_first_phase_only(monkeypatch, trial):
    fits, _, result = _stub_trial(monkeypatch, **trial)
    assert len(fits) == 1 and fits[0]["callbacks"] == ["the tuner's"] and result.epoch == [0, 1, 2]


@pytest.mark.parametrize("same_model, cached", [(True, True), (False, False)], ids=["built", "another-model"])
def test_a_trials_head_trains_on_cached_features_only_for_the_model_it_built(monkeypatch, same_model, cached):
    cache = {"the Tuner's": "features"}
    fits, head_fits, _ = _stub_trial(monkeypatch, fine_tune_layers=0, head_pass="one pass", same_model=same_model,
                                     feature_cache=cache)
    assert (len(head_fits), len(fits)) == ((1, 0) if cached else (0, 1))
    if cached:  # the features shared with the Trainer; the Trainer's seed and loss
        assert head_fits[0]["cache"] is cache and (head_fits[0]["seed"], head_fits[0]["label_smoothing"]) == (7, 0.1)


def test_p_covid_is_the_covid_classs_column_wherever_the_task_lists_it():
    covid_first = features.Task("covid-first", (features.COVID, features.NORMAL, features.PNEUMONIA), {})
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    np.testing.assert_array_equal(trainer_task._covid_scores(covid_first, scores), [0.7, 0.1])
    np.testing.assert_array_equal(trainer_task._covid_scores(BINARY, np.array([[0.7], [0.1]])), [0.7, 0.1])


@pytest.mark.parametrize("fn", ["tuner_fn", "run_fn"])
def test_tuner_and_trainer_refuse_code_other_than_the_pipeline_was_built_with(tmp_path, monkeypatch, fn):
    from covid_cxr.pipeline import fingerprints

    fn_args, _, _ = _stand_in_inputs(tmp_path, monkeypatch)
    fn_args.custom_config[fingerprints.CODE_KEY] = "0" * 64
    monkeypatch.setattr(trainer_task, "_data_summary", lambda *a: pytest.fail("read the data before checking the code"))
    with pytest.raises(fingerprints.CodeChangedError, match="is not the code the pipeline was built with"):
        getattr(trainer_task, fn)(fn_args)


def test_the_atypical_input_check_is_fitted_on_the_training_films_pooled_features_at_the_configured_quantile(monkeypatch):
    fitted = []
    monkeypatch.setattr(trainer_task.typicality, "fitted_check", lambda *args: fitted.append(args) or (
        "check", {k: 1 for k in ("dimensions", "features", "train_films", "eval_atypical", "eval_films", "shrinkage")}))
    check, _ = trainer_task._typicality_check("scorer", ["cnn4"], "the train features", "the eval features", 0.8)
    assert check == "check" and fitted == [("scorer", ["cnn4"], "the train features", "the eval features", 0.8)]


def test_one_pass_gives_the_labels_every_scorers_outputs_and_the_hashes_of_every_batchs_films():
    rng = np.random.default_rng(0)
    images = rng.random((6, 16, 16, 1), dtype=np.float32)
    passes = []

    def batches():
        passes.append(1)
        yield from ((images[i:i + 4], np.arange(i, min(i + 4, 6))) for i in range(0, 6, 4))

    dataset = tf.data.Dataset.from_generator(batches, output_signature=(
        tf.TensorSpec((None, 16, 16, 1), tf.float32), tf.TensorSpec((None,), tf.int64)))
    both = lambda x, training: (x[:, 0, 0], x[:, 1, 1, 0])  # noqa: E731
    labels, outputs, hashes = trainer_task._one_pass(dataset, {"one": lambda x, training: 2 * x, "both": both})
    assert passes == [1]  # the films are read once for every scorer and the hashes
    np.testing.assert_array_equal(labels, np.arange(6))
    np.testing.assert_array_equal(outputs["one"][0], 2 * images)
    np.testing.assert_array_equal(outputs["both"][0], images[:, 0, 0])
    np.testing.assert_array_equal(outputs["both"][1], images[:, 1, 1, 0])
    assert hashes == near_copies.hash_batch(images)
    assert trainer_task._one_pass(dataset, {})[1] == {}


def test_the_trainer_stores_the_fingerprints_of_every_train_and_eval_film_it_saw(tmp_path, monkeypatch):
    """Hashed from the transformed images (evaluate hashes an evaluated film through the same decode)."""
    _, metadata, _, images = _run_fn_with_stand_ins(tmp_path, monkeypatch, "[]", overrides={"model.border_crop": "0.05"})
    stored = metadata[near_copies.KEY]
    # The stand-in train and eval splits both hold these eight films.
    assert stored["hashes"] == [h.hex() for h in near_copies.hash_batch(images)] * 2
    assert (stored["image_size"], stored["border_crop"], stored["threshold"]) == (32, 0.05, 40)
