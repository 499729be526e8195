"""TFX entry points: `tuner_fn` (Tuner component) and `run_fn` (Trainer component).

Both read the transformed examples written by Transform, build models from trainer/models.py and
train them with trainer/training.py. Only the sections of the typed config that change the model
are passed in `custom_config` (PipelineConfig.model_custom_config), so editing e.g. the serving directory never invalidates the cache.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
from typing import Callable, Optional

import keras_tuner
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from covid_cxr.data import features, writer
from covid_cxr.evaluation import metrics as ci_metrics
from covid_cxr.pipeline import fingerprints
from covid_cxr.serving import export, near_copies, typicality
from covid_cxr.trainer import models, training
from covid_cxr.transform import preprocessing

# A module logger: logging.warning() on the root logger configures it, and users then saw "WARNING:root:".
log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"  # in the model run directory, read by `covid-cxr evaluate`


def _transformed_dataset(files, data_accessor, tf_transform_output, batch_size: int, training_mode: bool, seed: int):
    """(transformed features, label) batches; endless and shuffled for training, one ordered pass otherwise."""
    options = tfxio.TensorFlowDatasetOptions(
        batch_size=batch_size,
        label_key=preprocessing.LABEL_XF,
        num_epochs=None if training_mode else 1,
        shuffle=training_mode,
        shuffle_seed=seed,
        shuffle_buffer_size=1024,
    )
    return data_accessor.tf_dataset_factory(files, options, tf_transform_output.transformed_metadata.schema)


def _dataset(files, data_accessor, tf_transform_output, batch_size: int, training_mode: bool, seed: int,
             example_weights: Optional[dict] = None):
    """(image_xf, label) batches, or (image_xf, label, weight) with ``{(source, class): weight}``."""
    dataset = _transformed_dataset(files, data_accessor, tf_transform_output, batch_size, training_mode, seed)
    if example_weights is None:
        return dataset.map(lambda feats, label: (feats[preprocessing.IMAGE_XF], label)).prefetch(tf.data.AUTOTUNE)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            [f"{source}\x00{label}" for source, label in example_weights],
            [float(w) for w in example_weights.values()], value_dtype=tf.float32),
        # Every (source, class) of these files was counted from them; no example falls through.
        default_value=1.0)

    def with_weights(feats, label):
        key = tf.strings.join([tf.reshape(feats[preprocessing.SOURCE_XF], [-1]),
                               tf.strings.as_string(tf.reshape(label, [-1]))], separator="\x00")
        return feats[preprocessing.IMAGE_XF], label, table.lookup(key)

    return dataset.map(with_weights).prefetch(tf.data.AUTOTUNE)


def _training_batches(fn_args, tf_transform_output, batch_size: int, seed: int, example_weights: dict,
                      one_pass: bool = False):
    """A function building the weighted training dataset anew each time it is called: shuffled and
    endless (every fit gets its own: see :func:`training.fit` for why a reused one does not repeat),
    or one ordered pass with ``one_pass`` (for backbone features computed once)."""
    return functools.partial(_dataset, fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size,
                             not one_pass, seed, example_weights)


def _one_pass(dataset, scorers: dict) -> tuple[np.ndarray, dict, list[bytes]]:
    """(labels, {name: [each output of that scorer, every film's]}, every film's perceptual hash) from
    one ordered pass over ``dataset``: the films are read and decoded once for the scores, the
    features and the near-copy fingerprints."""
    labels, outputs, hashes = [], collections.defaultdict(list), []
    for images, label in dataset:
        labels.append(label.numpy().reshape(-1))
        hashes.extend(near_copies.hash_batch(images.numpy()))
        for name, scorer in scorers.items():
            out = scorer(images, training=False)
            outputs[name].append([t.numpy() for t in (out if isinstance(out, (list, tuple)) else [out])])
    return (np.concatenate(labels),
            {name: [np.concatenate(parts) for parts in zip(*batches)] for name, batches in outputs.items()}, hashes)


def _member_scorers(members: list, quantile: float) -> dict:
    """{family: the member's scorer for the eval pass}: with the atypical-input check on, its
    probabilities and its pooled features (when it has them) from one pass of its backbone."""
    return {m.family: models.member_scorer(m, f"{m.family}_scorer")[0] if quantile else m.model for m in members}


def _served_eval(served: list, member_outputs: dict) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(the served model's eval scores, its pooling members' eval features or None), joined from the
    served members' outputs of :func:`_one_pass` by the served graph's own layers
    (:func:`models.joined_outputs`): the numbers the served model and its scorer give those films."""
    joined = models.joined_outputs([member_outputs[m.family][0] for m in served],
                                   [member_outputs[m.family][1] for m in served if len(member_outputs[m.family]) > 1])
    return tuple(None if outputs is None else np.asarray(outputs) for outputs in joined)


def _count_source_labels(files, data_accessor, tf_transform_output, batch_size: int) -> collections.Counter:
    """Examples per (source name, class index)."""
    counts: collections.Counter = collections.Counter()
    for feats, label in _transformed_dataset(files, data_accessor, tf_transform_output, batch_size, False, 0):
        sources = feats[preprocessing.SOURCE_XF].numpy().reshape(-1)
        counts.update((s.decode(), int(v)) for s, v in zip(sources, label.numpy().reshape(-1)))
    return counts


def _feature_cache(fn_args, transform_dir: str, batch_size: int, seed: int, example_weights: dict,
                   model_cfg: dict) -> training.FeatureCache:
    """The process's backbone-feature cache for these inputs: with LocalDagRunner the Trainer gets
    the one the Tuner filled (:func:`training.shared_feature_cache`). Keyed by everything the cached
    passes depend on: transformed files and Transform graph, batching and shuffle seed, example
    weights, the model section of the config (families, weights); the cache adds family, size, split."""
    return training.shared_feature_cache(
        sorted(fn_args.train_files), sorted(fn_args.eval_files), transform_dir, batch_size, seed,
        sorted([source, label, weight] for (source, label), weight in example_weights.items()), model_cfg)


def _per_class(source_counts: collections.Counter) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for (_, label), n in source_counts.items():
        counts[label] += n
    return counts


def _training_weights(source_counts: collections.Counter, task: features.Task, train_cfg: dict) -> dict:
    weights = training.source_class_weights(source_counts, task.num_classes, float(train_cfg.get("source_balance", 0.0)))
    log.info("example weights per (source, class): %s",
                 {f"{s}/{task.classes[c]}": round(w, 3) for (s, c), w in sorted(weights.items())})
    return weights


def _search_space(hp: keras_tuner.HyperParameters, cfg: dict) -> models.HParams:
    """Declares the Tuner's search space and returns the HParams of the current trial.

    Called with an empty HyperParameters (no Tuner run), every dimension takes its first value.
    """
    model_cfg, tuner_cfg, train_cfg = cfg["model"], cfg["tuner"], cfg["training"]
    sizes = [s for s in (tuner_cfg["image_sizes"] or [model_cfg["image_size"]]) if s <= model_cfg["image_size"]]
    learning_rate = hp.Choice("learning_rate", [float(v) for v in tuner_cfg["learning_rates"]])
    factors = [float(v) for v in tuner_cfg["fine_tune_lr_factors"]]
    return models.HParams(
        family=hp.Choice("family", list(model_cfg["families"])),
        image_size=hp.Choice("image_size", sizes or [model_cfg["image_size"]]),
        learning_rate=learning_rate,
        dropout=hp.Choice("dropout", [float(v) for v in tuner_cfg["dropouts"]]),
        dense_units=hp.Choice("dense_units", [int(v) for v in tuner_cfg["dense_units"]]),
        fine_tune_layers=hp.Choice("fine_tune_layers", [int(v) for v in tuner_cfg["fine_tune_layers"]]),
        # Declared last, and only when there is a choice: keras-tuner's random search seeds each
        # declared hyperparameter in turn, so an extra one would change the trials a config samples.
        fine_tune_learning_rate=learning_rate * (
            hp.Choice("fine_tune_lr_factor", factors) if len(factors) > 1 else factors[0]),
        early_stopping_patience=int(train_cfg["early_stopping_patience"]),
        label_smoothing=float(train_cfg.get("label_smoothing", 0.0)),
        augment=models.augment_config(model_cfg),
    )


def _build(hparams: models.HParams, cfg: dict, task: features.Task) -> models.BuiltModel:
    """The model for ``hparams``, built right after seeding every RNG with ``training.seed``.

    Seeding here, not only before fitting, is what makes a run repeatable: the new head's weights
    (and the augmentation layers' generators) are drawn when the model is built, so without it each
    Tuner trial and each Trainer member started from a different draw, and the Tuner's pick (and so
    the served model) changed from one run of the same config to the next.
    """
    keras.utils.set_random_seed(int(cfg["training"]["seed"]))
    model_cfg = cfg["model"]
    return models.build_model(
        hparams,
        input_size=model_cfg["image_size"],
        num_classes=task.num_classes,
        weights=model_cfg["weights"],
        weights_dir=model_cfg["weights_dir"] or None,
        fallback=model_cfg["fallback"],
    )


def _steps(count: int, batch_size: int) -> int:
    return max(1, -(-count // batch_size))


class _TrialModel(keras_tuner.HyperModel):
    """Fits every trial on a training dataset built for it (see :func:`training.fit`: a dataset
    reused by the next fit would hand it an order that depends on how far the last one read ahead).

    With ``head_pass`` (``training.cache_frozen_features``), a trial on a pretrained backbone trains
    its head on backbone features computed once per family and size, kept in ``feature_cache`` and
    shared by the trials (and by the Trainer, when it runs in the same process).

    With ``fine_tune_epochs`` (``tuner.fine_tune_epochs``), a trial on a pretrained backbone then
    fine-tunes as the Trainer's phase 2 does, so the fine-tuning depth and learning rate it drew
    are what its score measures; the head's epochs alone cannot tell them apart."""

    def __init__(self, build_fn: Callable, training_batches: Callable[[], tf.data.Dataset],
                 task: features.Task, head_pass: Optional[Callable[[], tf.data.Dataset]] = None, seed: int = 42,
                 feature_cache: Optional[training.FeatureCache] = None, fine_tune_epochs: int = 0):
        super().__init__()
        self._task = task
        self._build_fn = build_fn
        self._training_batches = training_batches
        self._head_pass = head_pass
        self._seed = seed
        self._features: training.FeatureCache = {} if feature_cache is None else feature_cache
        self._fine_tune_epochs = fine_tune_epochs
        self._built: Optional[tuple[models.BuiltModel, models.HParams]] = None

    def build(self, hp):
        self._built = self._build_fn(hp)
        return self._built[0].model

    def fit(self, hp, model, *args, validation_data=None, epochs=1, steps_per_epoch=None, **kwargs):
        built, hparams = self._built
        fine_tunes = bool(self._fine_tune_epochs and built.pretrained and hparams.fine_tune_layers > 0)
        head_kwargs = dict(kwargs)
        if fine_tunes and validation_data is not None:
            # Fine-tune from the head's best epoch, as the Trainer does; never stops the head early.
            head_kwargs["callbacks"] = [*training.best_epoch_callbacks(training.MONITOR, patience=epochs),
                                        *kwargs.get("callbacks", [])]
        if self._head_pass is not None and built.model is model and built.pretrained:
            history = training.fit_head_on_features(
                built, hparams.learning_rate, self._head_pass, validation_data, epochs=epochs,
                num_classes=self._task.num_classes, seed=self._seed, cache=self._features,
                label_smoothing=hparams.label_smoothing, **head_kwargs)
        else:
            history = model.fit(self._training_batches(), *args, validation_data=validation_data, epochs=epochs,
                                steps_per_epoch=steps_per_epoch, **head_kwargs)
        if not fine_tunes:
            return history
        training.compile_model(built, hparams, self._task.num_classes, models.PHASE_FINE_TUNE, self._task.positive_index)
        fine_tuned = model.fit(self._training_batches(), *args, validation_data=validation_data, initial_epoch=epochs,
                               epochs=epochs + self._fine_tune_epochs, steps_per_epoch=steps_per_epoch, **kwargs)
        # One history of both phases: the Tuner scores a trial by its best epoch, as the Trainer
        # keeps the frozen phase's weights when fine-tuning never beats them.
        both: dict[str, list] = {"phase": [], "epoch": []}
        training.append_phase(both, history, models.PHASE_HEAD)
        training.append_phase(both, fine_tuned, models.PHASE_FINE_TUNE)
        result = keras.callbacks.History()
        result.epoch, result.history = both.pop("epoch"), {k: v for k, v in both.items() if k != "phase"}
        return result


def _data_summary(cfg: dict, task: features.Task) -> dict:
    """The curation summary, read where the data is, not when the pipeline was compiled (a compiled
    Kubeflow spec is re-run on new data, and only `covid-cxr run` checks before the DAG starts)."""
    data_summary = writer.read_summary(cfg["data_dir"])
    writer.check_fits_task(data_summary, cfg["data_dir"], task)
    return data_summary


def _summary_for_the_model(data_summary: dict) -> dict:
    """The curation summary as the served model carries it: the sources' names, not where they lay
    on the curating machine (a home directory, an export folder named after a patient)."""
    settings = dict(data_summary.get("settings") or {})
    if isinstance(settings.get("sources"), dict):
        settings["sources"] = sorted(settings["sources"])
    served = dict(data_summary, settings=settings)
    if isinstance(served.get("held_out"), dict):  # which source was held out, not the folder it went to
        served["held_out"] = {k: v for k, v in served["held_out"].items() if k != "dir"}
    return served


def tuner_fn(fn_args: tfx.components.FnArgs) -> tfx.components.TunerFnResult:
    """Random search over family, learning rate, dropout, width, image size and fine-tune depth."""
    cfg = fn_args.custom_config
    fingerprints.check_code(__name__, cfg.get(fingerprints.CODE_KEY))
    training.require_process_env(cfg["training"])
    task = features.get_task(cfg["model"]["task"])
    _data_summary(cfg, task)  # fails in seconds on data curated for another task
    train_cfg = cfg["training"]
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    batch = train_cfg["batch_size"]
    source_counts = _count_source_labels(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch)
    _check_eval_classes(task, _per_class(_count_source_labels(fn_args.eval_files, fn_args.data_accessor,
                                                              tf_transform_output, batch)))
    weights = _training_weights(source_counts, task, train_cfg)

    def build(hp):
        hparams = _search_space(hp, cfg)
        built = _build(hparams, cfg, task)
        # Trials compare families on their first phase (frozen pretrained base, or end to end).
        phase = models.PHASE_HEAD if built.pretrained else models.PHASE_END_TO_END
        training.compile_model(built, hparams, task.num_classes, phase, task.positive_index)
        return built, hparams

    batches = functools.partial(_training_batches, fn_args, tf_transform_output, batch, train_cfg["seed"], weights)
    cache = _feature_cache(fn_args, fn_args.transform_graph_path, batch, train_cfg["seed"], weights, cfg["model"])
    tuner = keras_tuner.RandomSearch(
        _TrialModel(build, batches(), task, batches(one_pass=True) if train_cfg["cache_frozen_features"] else None,
                    train_cfg["seed"], cache, int(cfg["tuner"]["fine_tune_epochs"])),
        objective=keras_tuner.Objective(training.TUNER_OBJECTIVE, direction="max"),
        max_trials=cfg["tuner"]["trials"],
        seed=train_cfg["seed"],
        directory=fn_args.working_dir,
        project_name="covid_cxr_tuning",
        overwrite=True,
    )
    return tfx.components.TunerFnResult(
        tuner=tuner,
        fit_kwargs={  # the training batches come from _TrialModel (a dataset built for each trial)
            "validation_data": _dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch, False, 0),
            "steps_per_epoch": _steps(sum(source_counts.values()), batch),
            "epochs": cfg["tuner"]["epochs"],
            "verbose": 2,
        },
    )


def _check_eval_classes(task: features.Task, eval_counts: dict) -> None:
    """Before any training (Tuner and Trainer): the trials, early stopping, the threshold and the
    atypical-input check are chosen on the eval split, so every class must be in it (a few hundred
    films split by hash can miss one)."""
    missing = [name for index, name in enumerate(task.classes) if not eval_counts.get(index)]
    if missing:
        counts = ", ".join(f"{name} {eval_counts.get(index, 0)}" for index, name in enumerate(task.classes))
        raise ValueError(f"the eval split holds no {' and no '.join(missing)} films (eval films per class: {counts}); "
                         "the decision threshold is chosen on it: curate more films or give data.eval_buckets more buckets")


def _decision_threshold(task: features.Task, labels: np.ndarray, scores: np.ndarray, train_cfg: dict) -> float:
    """The stored threshold on P(covid), chosen on the eval split for the config's targets. Three-class
    too: COVID when P(covid) is above it, else the more probable other class."""
    sensitivity, specificity = train_cfg["target_sensitivity"], train_cfg["target_specificity"]
    threshold = training.choose_threshold(labels.reshape(-1) == task.positive_index, _covid_scores(task, scores),
                                          sensitivity, specificity)
    log.info("decision threshold %.4f (eval targets: sensitivity %.2f, specificity %.2f)", threshold,
                 sensitivity, specificity)
    return threshold


def _covid_scores(task: features.Task, scores: np.ndarray) -> np.ndarray:
    """P(covid) [N] from the model's output ([N, 1] sigmoid or [N, C] softmax)."""
    return scores.reshape(-1) if task.is_binary else scores[:, task.positive_index]


def _eval_auc(task: features.Task, labels: np.ndarray, scores: np.ndarray) -> Optional[float]:
    """COVID-vs-rest AUC of P(covid): what the Evaluator's gate judges, every task."""
    return ci_metrics.roc_auc(labels.reshape(-1) == task.positive_index, _covid_scores(task, scores))


def _validation_metrics(task: features.Task, labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """COVID-vs-rest sensitivity, specificity (Wilson CIs) and AUC on the eval split at the served decision."""
    covid_scores = _covid_scores(task, scores)
    is_covid = labels.reshape(-1) == task.positive_index
    result = ci_metrics.binary_metrics(is_covid, covid_scores > threshold)  # the export's rule, every task
    return {"split": "eval", "auc": _eval_auc(task, labels, scores), **result}


def _hparams_from_tuner(hyperparameters: Optional[dict], cfg: dict) -> models.HParams:
    """Best Tuner values when the Tuner ran; otherwise the first choice of each search dimension."""
    hp = keras_tuner.HyperParameters.from_config(hyperparameters) if hyperparameters else keras_tuner.HyperParameters()
    return _search_space(hp, cfg)


def _typicality_scorer(members: list, quantile: float):
    """(:func:`models.scorer_with_features` of the members, the families it measures) when the served
    model gets an atypical-input check; (None, []) when it is off or no member pools."""
    if not quantile:
        return None, []
    scorer, families = models.scorer_with_features(members)
    if scorer is None:
        log.warning("%s: no pooled features layer, so the served model has no atypical-input check",
                        " + ".join(m.family for m in members))
        return None, []
    if len(families) < len(members):
        log.info("the atypical-input check leaves out %s (no pooled features)",
                     " + ".join(m.family for m in members if m.family not in families))
    return scorer, families


def _typicality_check(scorer, families: list, train_features: np.ndarray, eval_features: np.ndarray, quantile: float):
    """(the served atypical-input check, its summary for the model card), fitted on the pooled
    features ``scorer`` gave the training films, unaugmented, and the eval films; (None, None)
    without a scorer or when too few films."""
    if scorer is None:
        return None, None
    try:
        check, summary = typicality.fitted_check(scorer, families, train_features, eval_features, quantile)
    except ValueError as e:  # e.g. a handful of demo films: the model is still served, without the check
        log.warning("the served model has no atypical-input check: %s", e)
        return None, None
    log.info("atypical-input check on the %d %s of %d training films: %d of %d eval films atypical "
                 "(shrinkage %.3f)", summary["dimensions"], summary["features"], summary["train_films"],
                 summary["eval_atypical"], summary["eval_films"], summary["shrinkage"])
    return check, summary


def ensemble_families(tuned_family: str, ensemble_with) -> list[str]:
    """The Tuner's family first, then each ``model.ensemble_with`` family not already listed."""
    return list(dict.fromkeys([tuned_family, *ensemble_with]))


def select_members(members: list, aucs: list[float], floor: float) -> tuple[list, list]:
    """(members served, members dropped) of an ensemble, given each member's eval AUC alone.

    A member below ``floor`` (``training.member_min_auc``) has not learned (quick's cnn4 once ended
    at AUC 0.50) and averaging it in would only dilute the others. When none reaches the floor the
    best one is served (the first on ties: the Tuner's family) and the Evaluator's gate judges it.
    """
    if len(members) < 2:
        return list(members), []
    served = [i for i, auc in enumerate(aucs) if auc >= floor]
    if not served:
        served = [int(np.argmax(aucs))]  # the first of ties
        log.warning("no ensemble member reached training.member_min_auc %.2f: serving the best alone, %s "
                    "(eval AUC %.3f), for the Evaluator's gate to judge", floor, members[served[0]].family,
                    aucs[served[0]])
    dropped = [i for i in range(len(members)) if i not in served]
    for i in dropped:
        log.warning("ensemble member %s dropped: eval AUC %.3f is below training.member_min_auc %.2f",
                    members[i].family, aucs[i], floor)
    return [members[i] for i in served], [members[i] for i in dropped]


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Trains (frozen base, then fine-tuning) the tuned family and any ``ensemble_with`` families,
    averages those whose eval AUC reaches ``training.member_min_auc`` when there are several, picks
    the threshold on eval, exports the SavedModel."""
    cfg = fn_args.custom_config
    fingerprints.check_code(__name__, cfg.get(fingerprints.CODE_KEY))
    training.require_process_env(cfg["training"])
    task = features.get_task(cfg["model"]["task"])
    # `predict` repeats the curation settings recorded in it. Before training, so a directory that
    # was not curated for this task fails in seconds.
    data_summary = _data_summary(cfg, task)
    train_cfg = cfg["training"]
    batch, seed = train_cfg["batch_size"], train_cfg["seed"]
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    source_counts = _count_source_labels(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch)
    counts = _per_class(source_counts)
    eval_counts = _per_class(_count_source_labels(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch))
    log.info("training examples per class %s, eval %s", dict(counts), dict(eval_counts))
    _check_eval_classes(task, eval_counts)
    weights = _training_weights(source_counts, task, train_cfg)

    hparams = _hparams_from_tuner(fn_args.hyperparameters, cfg)
    train_ds = _training_batches(fn_args, tf_transform_output, batch, seed, weights)  # afresh per phase and member
    head_pass = (_training_batches(fn_args, tf_transform_output, batch, seed, weights, one_pass=True)
                 if train_cfg["cache_frozen_features"] else None)
    eval_ds = _dataset(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch, False, 0)
    feature_cache = _feature_cache(fn_args, fn_args.transform_output, batch, seed, weights, cfg["model"])
    members: list[models.BuiltModel] = []
    histories: list[dict] = []
    for family in ensemble_families(hparams.family, cfg["model"].get("ensemble_with") or []):
        member_hparams = dataclasses.replace(hparams, family=family)
        built = _build(member_hparams, cfg, task)
        if built.family in [m.family for m in members]:  # e.g. two transfer families fell back to one CNN
            log.warning("ensemble member %s was built as %s, which is trained already: skipped", family, built.family)
            continue
        log.info("training %s (%s)", built.family, built.note)
        histories.append(training.fit(
            built, member_hparams, train_ds, eval_ds,
            epochs=train_cfg["epochs"],
            fine_tune_epochs=train_cfg["fine_tune_epochs"],
            steps_per_epoch=_steps(sum(counts.values()), batch),
            validation_steps=None,
            num_classes=task.num_classes,
            callbacks=[keras.callbacks.TensorBoard(log_dir=os.path.join(fn_args.model_run_dir, built.family), update_freq="epoch")],
            seed=seed,
            head_pass=head_pass,
            feature_cache=feature_cache,
        ))
        members.append(built)
    history = training.concatenate_histories(histories, [m.family for m in members])  # every member's curves
    fits = [{"family": m.family, **training.summarize_fit(h)} for m, h in zip(members, histories)]
    for fit in fits:
        log.info("%s: epochs run %s; serving the weights of %s", fit["family"], fit["epochs_run"], fit["kept"])
    # One pass over the eval films: every member's scores (and pooled features, for the atypical-input
    # check) and the films' fingerprints. The served model's scores are joined from its members' by
    # its own layers (models.joined_outputs), so no backbone scores an eval film twice.
    quantile = float(train_cfg["atypical_quantile"])
    labels, member_outputs, eval_hashes = _one_pass(eval_ds, _member_scorers(members, quantile))
    # Each member alone on eval, when there is a choice to make (a lone member's AUC is the validation's).
    aucs = [_eval_auc(task, labels, member_outputs[m.family][0]) for m in members] if len(members) > 1 else []
    min_auc = float(train_cfg["member_min_auc"])
    served, _ = select_members(members, aucs, min_auc)
    built = models.average_ensemble(served) if len(served) > 1 else served[0]

    scorer, scored_families = _typicality_scorer(served, quantile)
    scores, eval_features = _served_eval(served, member_outputs)
    threshold = _decision_threshold(task, labels, scores, train_cfg)
    validation = _validation_metrics(task, labels, scores, threshold)
    for fit, auc in zip(fits, aucs or [validation["auc"]]):
        fit.update(eval_auc=auc, served=fit["family"] in [m.family for m in served])

    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, HISTORY_FILE), "w") as f:
        json.dump(history, f)
    metadata = {
        "family": built.family,
        "family_note": built.note,
        "ensemble_members": [m.family for m in served],
        "member_min_auc": min_auc,
        "hyperparameters": hparams.to_dict(),
        "transform_image_size": cfg["model"]["image_size"],
        "train_class_counts": {task.classes[k]: v for k, v in sorted(counts.items())},
        "source_balance": float(train_cfg.get("source_balance", 0.0)),
        "eval_class_counts": {task.classes[k]: v for k, v in sorted(eval_counts.items())},
        "target_sensitivity": train_cfg["target_sensitivity"],
        "target_specificity": train_cfg["target_specificity"],
        "data_summary": _summary_for_the_model(data_summary),
        "validation_metrics": validation,
        "history": history,
        "training": fits,
    }
    # One pass over the training films: the pooled features the atypical-input check is fitted on, and
    # their fingerprints (with the eval films', for evaluate's near-copy check).
    _, train_outputs, train_hashes = _one_pass(
        _dataset(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch, False, 0),
        {} if scorer is None else {"scorer": scorer})
    check, metadata["typicality"] = _typicality_check(
        scorer, scored_families, train_outputs["scorer"][1] if scorer is not None else None, eval_features, quantile)
    metadata[near_copies.KEY] = near_copies.fingerprints(
        train_hashes + eval_hashes, cfg["model"]["image_size"], cfg["model"].get("border_crop", 0.0))
    training.compile_for_export(built, task.num_classes)
    export.export_serving_model(built.model, tf_transform_output, task, threshold, metadata, fn_args.serving_model_dir,
                                typicality_check=check)
