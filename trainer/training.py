"""Compiling, two-phase training and decision-threshold selection for :mod:`covid_cxr.trainer.models`.

Labels are the Transform's ``label_xf`` (int class index). COVID is always the LAST class index of a
task (1 in the binary tasks, 2 in ``three-class``), which is what "recall"/"precision" report.

Metric names are fixed (``auc``, ``recall``, ``precision``, ``accuracy``) in every phase and task,
so histories of both phases merge key by key.

Early stopping, best-checkpoint restore and the LR plateau watch ``val_selection``: validation AUC,
ties broken by validation loss (:class:`SelectionScore`). AUC alone saturates at 1.0 on a small
validation split while the scores still sit near 0.5, so "restore the best AUC" restored a barely
trained model; loss alone stopped real fine-tuning early (it rises with over-confidence while AUC
still improves: 0.974 -> 0.980 on the shared corpus).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
import tf_keras as keras

from covid_cxr.trainer import models
from covid_cxr.trainer.models import BuiltModel, HParams

logger = logging.getLogger(__name__)

MONITOR = "val_selection"  # higher is better, see SelectionScore
# History key: 1.0 at the one epoch whose weights the model ends with (the best epoch of the phase
# that won), 0.0 elsewhere, so curves and model cards can show what is served.
KEPT = "kept"
TUNER_OBJECTIVE = "val_auc"  # higher is better
# Loss weight in the selection score. Val loss moves by a few hundredths between epochs, i.e. a few
# 1e-5 here: about one reordered pair of a 150 x 100 film split (6.7e-5 of AUC), so the loss mostly
# breaks AUC ties; a jump of 0.5 in the loss (5e-4) would outweigh several reordered pairs.
LOSS_TIE_BREAK = 1e-3


class SelectionScore(keras.callbacks.Callback):
    """Adds ``[val_]selection = [val_]auc - LOSS_TIE_BREAK * [val_]loss`` to the epoch logs.

    Must come before the callbacks that monitor it (Keras hands them the same logs dict in order).
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for prefix in ("", "val_"):
            if f"{prefix}auc" in logs and f"{prefix}loss" in logs:
                logs[f"{prefix}selection"] = float(logs[f"{prefix}auc"]) - LOSS_TIE_BREAK * float(logs[f"{prefix}loss"])


# ----------------------------------------------------------------------------------------------
# Metrics for integer labels with a softmax output (Keras' AUC/Recall/Precision want one-hot)
# ----------------------------------------------------------------------------------------------


# ``training.reproducible``: with the seed alone, two runs on the same input drift apart in
# fine-tuning, because independent ops run concurrently on the inter-op pool. Started with one
# inter-op thread and a fixed intra-op count (each kernel then splits its work the same way every
# run), shortened pipeline runs on the same input gave bit-identical weights, two of them sharing
# the cores, and took no longer than with TensorFlow's defaults (docs/results.md). These variables
# are read when TensorFlow loads, so they must be set before Python starts; sizing only the eager
# context's pools (tf.config.threading) did not make runs repeat. The input order (Transform's
# output) is the other half: PipelineConfig.validate puts Beam on one worker for it. Still not
# bit-identical over a long run: after about 90 executions of a training function TensorFlow's
# executor starts running the kernels it measured as cheap inline, the schedule then follows
# timings, and now and then a step differs in the last bit, whatever the threads (docs/results.md,
# stops 17-18; scripts/step_determinism.py).
THREAD_VARIABLES = ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")
# ``training.onednn``: TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512
# class features, so the same run is faster, and numerically different, on one machine than on
# another. `on` / `off` pin it; `auto` leaves TensorFlow's choice (and this variable) alone.
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
ONEDNN_SETTINGS = {"on": "1", "off": "0", "auto": None}


class ProcessEnvError(RuntimeError):
    """The process was not started with the TensorFlow environment its training config asks for."""


def _intra_op_threads() -> Optional[int]:
    value = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def reproducible_thread_env() -> dict:
    """One inter-op thread; the intra-op count already set, else one per core (same count, same sums)."""
    intra = str(_intra_op_threads() or os.cpu_count() or 1)
    return {"TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": intra, "OMP_NUM_THREADS": intra}


def process_env(reproducible: bool, onednn: str = "auto") -> dict:
    """The variables TensorFlow reads when it loads that these training settings need (name: value)."""
    wanted = dict(reproducible_thread_env()) if reproducible else {}
    if ONEDNN_SETTINGS[onednn] is not None:
        wanted[ONEDNN_VARIABLE] = ONEDNN_SETTINGS[onednn]
    return wanted


def process_env_problems(reproducible: bool, onednn: str = "auto") -> dict:
    """The variables of :func:`process_env` this process was started without (name: wanted)."""
    return {k: v for k, v in process_env(reproducible, onednn).items() if os.environ.get(k) != v}


def require_process_env(train_cfg: Mapping[str, Any]) -> None:
    """Raises unless TensorFlow started with what ``training.reproducible`` and ``training.onednn`` need."""
    missing = process_env_problems(bool(train_cfg.get("reproducible")), train_cfg.get("onednn", "auto"))
    if missing:
        raise ProcessEnvError(
            "training.reproducible and training.onednn need the process started with "
            + " ".join(f"{k}={v}" for k, v in missing.items())
            + " (covid-cxr run and demo restart themselves with them; the Dockerfile sets them for "
            "Kubeflow and Vertex AI)")


def _one_hot(y_true, num_classes: int):
    y_true = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    return tf.one_hot(y_true, num_classes)


class _SparseLabels:
    """Mixin: one-hot the integer labels before the wrapped Keras metric sees them."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(_one_hot(y_true, self.num_classes), y_pred, sample_weight)

    def get_config(self):
        config = super().get_config()
        config["num_classes"] = self.num_classes
        return config


@keras.saving.register_keras_serializable(package="covid_cxr")
class SparseAUC(_SparseLabels, keras.metrics.AUC):
    """Macro one-vs-rest ROC AUC over ``num_classes`` from integer labels and softmax scores."""

    def __init__(self, num_classes: int, name: str = "auc", **kwargs):
        kwargs.setdefault("multi_label", True)
        kwargs.setdefault("num_labels", num_classes)
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)


@keras.saving.register_keras_serializable(package="covid_cxr")
class SparseClassAUC(keras.metrics.AUC):
    """One-vs-rest ROC AUC of ``class_id`` from integer labels and softmax scores: for COVID, the AUC the
    Evaluator's gate and the Trainer's member check judge, the same quantity as a binary task's ``auc``."""

    def __init__(self, class_id: int, name: str = "auc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_id = int(class_id)

    def update_state(self, y_true, y_pred, sample_weight=None):
        is_class = tf.equal(tf.reshape(tf.cast(y_true, tf.int32), [-1]), self.class_id)
        return super().update_state(tf.cast(is_class, tf.float32), y_pred[:, self.class_id], sample_weight)

    def get_config(self):
        return {**super().get_config(), "class_id": self.class_id}


@keras.saving.register_keras_serializable(package="covid_cxr")
class SparseRecall(_SparseLabels, keras.metrics.Recall):
    """Recall of ``class_id`` (predicted = argmax) from integer labels."""

    def __init__(self, num_classes: int, class_id: int, name: str = "recall", **kwargs):
        kwargs.setdefault("top_k", 1)
        super().__init__(name=name, class_id=class_id, **kwargs)
        self.num_classes = int(num_classes)


@keras.saving.register_keras_serializable(package="covid_cxr")
class SparsePrecision(_SparseLabels, keras.metrics.Precision):
    """Precision of ``class_id`` (predicted = argmax) from integer labels."""

    def __init__(self, num_classes: int, class_id: int, name: str = "precision", **kwargs):
        kwargs.setdefault("top_k", 1)
        super().__init__(name=name, class_id=class_id, **kwargs)
        self.num_classes = int(num_classes)


def make_metrics(num_classes: int, positive_index: Optional[int] = None) -> list[keras.metrics.Metric]:
    """accuracy, auc, recall and precision (of the COVID class) for integer labels."""
    if num_classes == 2:
        return [
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.Precision(name="precision"),
        ]
    covid = num_classes - 1 if positive_index is None else positive_index
    return [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        # "auc" is COVID vs rest in every task: what epoch selection, early stopping and the Tuner's
        # objective rank by, as the gate judges it. The macro average over classes is for the curves.
        SparseClassAUC(covid, name="auc"),
        SparseAUC(num_classes, name="macro_auc"),
        SparseRecall(num_classes, covid, name="recall"),
        SparsePrecision(num_classes, covid, name="precision"),
    ]


class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy on integer labels with label smoothing, which Keras' sparse loss lacks."""

    def __init__(self, num_classes: int, label_smoothing: float, name: str = "sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.label_smoothing = num_classes, label_smoothing

    def call(self, y_true, y_pred):
        return keras.losses.categorical_crossentropy(_one_hot(y_true, self.num_classes), y_pred,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "label_smoothing": self.label_smoothing}


def make_loss(num_classes: int, label_smoothing: float = 0.0) -> keras.losses.Loss:
    if num_classes == 2:
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing, name="binary_crossentropy")
    if label_smoothing:
        return SparseSmoothedCrossentropy(num_classes, label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(name="sparse_categorical_crossentropy")


def phase_learning_rate(hparams: HParams, phase: int) -> float:
    return hparams.fine_tune_learning_rate if phase == models.PHASE_FINE_TUNE else hparams.learning_rate


def compile_model(
    built: BuiltModel,
    hparams: HParams,
    num_classes: int,
    phase: int,
    positive_index: Optional[int] = None,
    compile_kwargs: Optional[Mapping[str, Any]] = None,
) -> keras.Model:
    """Set the phase's trainable layers (:func:`models.set_phase`) and compile with Adam.

    phase 1: backbone frozen, lr = ``learning_rate``; phase 2: top ``fine_tune_layers`` non-BN
    backbone layers trainable, lr = ``fine_tune_learning_rate``; phase 0: everything trainable,
    lr = ``learning_rate`` (scratch families / random-init backbones). Loss: binary cross-entropy on
    the single sigmoid unit (labels 0/1) or sparse categorical cross-entropy. ``compile_kwargs``
    go to ``Model.compile`` (e.g. ``steps_per_execution``, ``jit_compile``, ``run_eagerly``).
    """
    models.set_phase(built, phase, hparams.fine_tune_layers)
    _compile(built.model, phase_learning_rate(hparams, phase), num_classes, positive_index, compile_kwargs,
             hparams.label_smoothing)
    return built.model


def _compile(model: keras.Model, learning_rate: float, num_classes: int, positive_index: Optional[int] = None,
             compile_kwargs: Optional[Mapping[str, Any]] = None, label_smoothing: float = 0.0) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=make_loss(num_classes, label_smoothing),
        metrics=make_metrics(num_classes, positive_index),
        **dict(compile_kwargs or {}),
    )


def class_weights(
    label_counts: Union[Mapping[int, int], Sequence[int]], num_classes: Optional[int] = None
) -> dict[int, float]:
    """Balanced class weights ``n_total / (n_classes * n_c)`` (sklearn's "balanced").

    ``label_counts`` is ``{class_index: count}`` or a sequence indexed by class. The weighted mean
    over the training examples is 1, so the loss scale (and learning rate) stays comparable. Classes
    with no examples (or missing from the mapping, up to ``num_classes``) get weight 1.0, which
    never applies to any example.
    """
    if isinstance(label_counts, Mapping):
        counts = {int(k): int(v) for k, v in label_counts.items()}
    else:
        counts = {i: int(v) for i, v in enumerate(label_counts)}
    if any(k < 0 for k in counts) or any(v < 0 for v in counts.values()):
        raise ValueError(f"class indices and counts must be >= 0, got {counts}")
    k = max(num_classes or 0, (max(counts) + 1) if counts else 0)
    if k == 0:
        raise ValueError("no classes")
    total = sum(counts.values())
    if total == 0:
        raise ValueError("no labelled examples")
    return {i: (total / (k * counts[i])) if counts.get(i, 0) > 0 else 1.0 for i in range(k)}


def source_class_weights(
    counts: Mapping[tuple[str, int], int], num_classes: int, strength: float
) -> dict[tuple[str, int], float]:
    """Per-example weights for each (source, class) cell that make the source carry less label.

    When one source sends nearly all of a class (here: a hospital behind most of Cohen's COVID
    films, with a handful of normals), a model can score the source instead of the disease. The
    weight ``(n_s / (k_s * n_sc)) ** strength`` balances the classes *within* each source (``k_s``:
    classes present there); ``strength`` 1 removes the source's label information, 0 leaves it. Each
    class is then rescaled so the classes are balanced overall as in :func:`class_weights` and the
    mean weight over the examples is 1; at ``strength`` 1 every source holding both classes then
    has the same class ratio (a one-class source, such as RSNA's normals, cannot be evened out).
    With ``strength`` 0 the result is exactly :func:`class_weights` for every source.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    cells = {(str(s), int(c)): int(n) for (s, c), n in counts.items() if int(n) > 0}
    if not cells:
        raise ValueError("no labelled examples")
    per_source: dict[str, int] = {}
    classes_in_source: dict[str, int] = {}
    per_class: dict[int, int] = {}
    for (source, label), n in cells.items():
        per_source[source] = per_source.get(source, 0) + n
        classes_in_source[source] = classes_in_source.get(source, 0) + 1
        per_class[label] = per_class.get(label, 0) + n
    balanced = class_weights(per_class, num_classes)
    if strength == 0.0:  # exactly the class weights, so runs with the option off repeat earlier runs bit for bit
        return {cell: balanced[cell[1]] for cell in cells}
    within = {cell: (per_source[cell[0]] / (classes_in_source[cell[0]] * n)) ** strength for cell, n in cells.items()}
    mass = {label: sum(n * within[cell] for cell, n in cells.items() if cell[1] == label) for label in per_class}
    # Rescale so each class's total weight equals what class_weights gives it (n_c * w_c).
    return {cell: within[cell] * per_class[cell[1]] * balanced[cell[1]] / mass[cell[1]] for cell in cells}


def compile_for_export(built: BuiltModel, num_classes: int) -> keras.Model:
    """Recompile with the loss and built-in metrics only, right before ``model.save``.

    The three-class metrics (:class:`SparseAUC`, ...) are custom classes: a SavedModel holding them
    cannot be opened by ``keras.models.load_model`` (as TFMA does) in a process that has not
    imported this module. Binary models only use built-in metrics, so this is a no-op for them in
    effect. Weights, trainable flags and the serving graph are unchanged.
    """
    metrics = make_metrics(num_classes) if num_classes == 2 else [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    built.model.compile(
        optimizer=getattr(built.model, "optimizer", None) or "adam", loss=make_loss(num_classes), metrics=metrics
    )
    return built.model


# ----------------------------------------------------------------------------------------------
# Phase 1 on cached backbone features
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CachedFeatures:
    """One split's pooled backbone features with its labels (and example weights), in pass order."""

    features: np.ndarray
    labels: np.ndarray
    weights: Optional[np.ndarray]
    batch_size: int

    def dataset(self, shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
        """Batches as the original pass had them; reshuffled every epoch when ``shuffle_seed`` is given."""
        tensors = (self.features, self.labels) + (() if self.weights is None else (self.weights,))
        dataset = tf.data.Dataset.from_tensor_slices(tensors)
        if shuffle_seed is not None:
            dataset = dataset.shuffle(len(self.labels), seed=shuffle_seed, reshuffle_each_iteration=True)
        return dataset.batch(self.batch_size)


def features_function(extractor: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """``extractor`` in inference mode (augmentation off) as one graph for any batch size: traced
    once (about 20 s for MobileNetV2 at 224 px on 2 cores), not again for a last, smaller batch."""
    spec = tf.TensorSpec([None, *extractor.input_shape[1:]], extractor.input.dtype)
    return tf.function(lambda images: extractor(images, training=False), input_signature=[spec])


def backbone_features(features_fn: Callable[[tf.Tensor], tf.Tensor], batches: Iterable) -> CachedFeatures:
    """Run ``features_fn`` (:func:`features_function`) once over a finite pass of
    ``(image, label[, weight])`` batches."""
    features, labels, weights, batch_size = [], [], [], 0
    for batch in batches:
        batch_size = batch_size or int(batch[1].shape[0])
        features.append(features_fn(batch[0]).numpy())
        labels.append(batch[1].numpy())
        if len(batch) > 2:
            weights.append(batch[2].numpy())
    if not features:
        raise ValueError("no batches to compute backbone features from")
    return CachedFeatures(np.concatenate(features), np.concatenate(labels),
                          np.concatenate(weights) if weights else None, batch_size)


FeatureCache = dict  # (family, image size, split name) -> CachedFeatures; valid for one set of files

# LocalDagRunner runs the Tuner and then the Trainer in one Python process, and both pass the same
# transformed films through the same frozen pretrained backbone, so the Trainer takes the Tuner's
# features instead of computing them again (about a minute for MobileNetV2 at 224 px on 2 cores:
# the pass and its trace, docs/results.md stop 30). On Kubeflow / Vertex each component is its own
# container and computes its own. Held here, not in trainer/task.py: TFX reloads the module named
# by `run_fn` / `tuner_fn` before each component.
# Only the most recent sets are kept (a set is a few MB: one pooled vector per film).
_SHARED_FEATURE_CACHES: "collections.OrderedDict[str, FeatureCache]" = collections.OrderedDict()
SHARED_FEATURE_CACHES_KEPT = 2


def shared_feature_cache(*inputs) -> FeatureCache:
    """This process's :data:`FeatureCache` for ``inputs`` (JSON-serializable: everything the cached
    passes depend on besides family, image size and split), created empty on first use."""
    key = json.dumps(inputs, sort_keys=True, default=str)
    if key in _SHARED_FEATURE_CACHES:
        _SHARED_FEATURE_CACHES.move_to_end(key)
        if _SHARED_FEATURE_CACHES[key]:
            logger.info("backbone features already computed in this process (by the Tuner) are reused: %s",
                        sorted(_SHARED_FEATURE_CACHES[key]))
    else:
        _SHARED_FEATURE_CACHES[key] = {}
        while len(_SHARED_FEATURE_CACHES) > SHARED_FEATURE_CACHES_KEPT:
            _SHARED_FEATURE_CACHES.popitem(last=False)
    return _SHARED_FEATURE_CACHES[key]


def _cached_features(cache: Optional[FeatureCache], built: BuiltModel, split: str,
                     features_fn: Callable[[tf.Tensor], tf.Tensor], batches: Callable[[], Iterable]) -> CachedFeatures:
    # A pretrained backbone's features depend only on its family and input size: Tuner trials that
    # differ in learning rate, dropout or head width share them.
    cache = {} if cache is None else cache
    key = (built.family, built.image_size, split)
    if key not in cache:
        started = time.monotonic()
        cache[key] = backbone_features(features_fn, batches())
        logger.info("%s: %s backbone features of %d films computed once in %.1f s",
                    built.family, split, len(cache[key].labels), time.monotonic() - started)
    return cache[key]


def fit_head_on_features(
    built: BuiltModel,
    learning_rate: float,
    train_pass: Callable[[], Iterable],
    val_ds: Optional[Iterable],
    *,
    epochs: int,
    initial_epoch: int = 0,
    num_classes: int,
    callbacks: Iterable[keras.callbacks.Callback] = (),
    class_weight: Optional[Mapping[int, float]] = None,
    seed: int = 42,
    verbose: Union[int, str] = 2,
    compile_kwargs: Optional[Mapping[str, Any]] = None,
    cache: Optional[FeatureCache] = None,
    label_smoothing: float = 0.0,
) -> keras.callbacks.History:
    """Phase 1 (frozen pretrained backbone) trained on features computed once.

    With the backbone frozen and in inference mode, an epoch of phase 1 is a forward pass of the
    backbone over every film plus a small update of the head; here that pass runs once, over
    ``train_pass()`` (one ordered pass: image, label[, weight]) and ``val_ds``, and the head trains
    on the stored features (reshuffled each epoch with ``seed``). The price: phase 1 sees the films
    without augmentation (phase 2 still augments). ``built``'s backbone must already be frozen
    (:func:`compile_model` with phase 1). The callbacks see a copy of the head (its weights are
    copied into ``built.model`` at the end). Returns the head's fit History; its metrics are the
    whole model's, since the head's input is exactly the backbone's output.
    """
    extractor, head = models.split_head(built)
    features_fn = features_function(extractor)  # one trace for both splits
    train = _cached_features(cache, built, "train", features_fn, train_pass)
    val = _cached_features(cache, built, "eval", features_fn, lambda: val_ds) if val_ds is not None else None
    _compile(head, learning_rate, num_classes, compile_kwargs=compile_kwargs, label_smoothing=label_smoothing)
    history = head.fit(
        train.dataset(shuffle_seed=seed),
        validation_data=val.dataset() if val is not None else None,
        epochs=initial_epoch + epochs,
        initial_epoch=initial_epoch,
        class_weight=dict(class_weight) if class_weight else None,
        callbacks=list(callbacks),
        verbose=verbose,
    )
    models.set_head_weights(built, head)  # the callbacks' best-epoch restore included
    return history


# ----------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------


def _schedule_callbacks(hparams: HParams, monitor: str, first_epoch: int, epochs: int, base_lr: float):
    if hparams.lr_schedule == "plateau":
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                mode="max",
                factor=hparams.reduce_lr_factor,
                patience=hparams.reduce_lr_patience,
                # Any better score is progress, as for early stopping: Keras' default 1e-4 hid the
                # loss tie-break (a few 1e-5) and one reordered film pair, and cut the rate meanwhile.
                min_delta=0.0,
                min_lr=base_lr * 1e-3,
                verbose=0,
            )
        ]
    if hparams.lr_schedule == "cosine":

        def cosine(epoch, lr):
            progress = (epoch - first_epoch) / max(epochs, 1)
            return float(base_lr * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))

        return [keras.callbacks.LearningRateScheduler(cosine, verbose=0)]
    return []


def _phases(built: BuiltModel, hparams: HParams, epochs: int, fine_tune_epochs: int) -> list[tuple[int, int]]:
    if built.backbone is None or not built.pretrained:
        # Nothing pretrained to protect: train end-to-end in one phase (no phase 2).
        return [(models.PHASE_END_TO_END, epochs)]
    phases = [(models.PHASE_HEAD, epochs)]
    if hparams.fine_tune_layers > 0 and fine_tune_epochs > 0:
        phases.append((models.PHASE_FINE_TUNE, fine_tune_epochs))
    return phases


def fit(
    built: BuiltModel,
    hparams: HParams,
    train_ds: Union[tf.data.Dataset, Callable[[], tf.data.Dataset]],
    val_ds: Optional[tf.data.Dataset],
    *,
    epochs: int,
    steps_per_epoch: Optional[int],
    validation_steps: Optional[int],
    fine_tune_epochs: int = 0,
    callbacks: Iterable[keras.callbacks.Callback] = (),
    seed: int = 42,
    num_classes: Optional[int] = None,
    class_weight: Optional[Mapping[int, float]] = None,
    verbose: Union[int, str] = 2,
    compile_kwargs: Optional[Mapping[str, Any]] = None,
    head_pass: Optional[Callable[[], Iterable]] = None,
    feature_cache: Optional[FeatureCache] = None,
) -> dict[str, list[Any]]:
    """Train ``built.model`` (compiled here) and return the merged history of all phases.

    Phases: pretrained transfer model -> phase 1 (frozen backbone, ``epochs``) then, if
    ``fine_tune_layers > 0`` and ``fine_tune_epochs > 0``, phase 2 (top layers unfrozen, lower LR,
    recompiled); scratch families and random-init backbones -> one end-to-end phase (``epochs``).

    ``train_ds`` may be a function returning the training dataset; each phase then gets its own.
    Pass one for runs that must repeat: a seeded ``shuffle().repeat()`` dataset (tfxio's) draws a
    new shuffle seed from state shared by its iterators at every pass over the data, and the
    iterator of the previous phase has read ahead a timing-dependent number of passes, so a reused
    dataset starts the next phase in an order that varies run to run.

    Every phase: EarlyStopping on ``val_selection`` (AUC, loss as tie-break; patience
    ``early_stopping_patience``) restoring the best weights, plus the LR schedule of
    ``hparams.lr_schedule``, plus ``callbacks``. Phase 2 stops on its own patience, like phase 1;
    if its best never beats phase 1's, phase 1's weights are restored. ``keras.utils.set_random_seed
    (seed)`` is called first. ``num_classes`` defaults to the model's output width (1 unit -> 2).
    ``class_weight`` (see :func:`class_weights`) and ``compile_kwargs`` apply to every phase.
    ``head_pass`` (one ordered pass over the training data) makes phase 1 train the head on backbone
    features computed once (:func:`fit_head_on_features`; ``feature_cache`` may already hold them);
    it does not apply to end-to-end training.

    Returns ``{metric: [per-epoch values, phase 1 then phase 2]}`` plus ``"phase"``, ``"epoch"`` and
    ``KEPT`` lists of the same length (keys missing in one phase are padded with NaN).
    """
    keras.utils.set_random_seed(seed)
    if num_classes is None:
        width = int(built.model.output_shape[-1])
        num_classes = 2 if width == 1 else width
    monitor = MONITOR if val_ds is not None else "selection"
    history: dict[str, list[Any]] = {"phase": [], "epoch": []}
    epoch = 0
    best_score = -np.inf
    best_weights = None
    best_phase = kept_epoch = None
    for phase, phase_epochs in _phases(built, hparams, epochs, fine_tune_epochs):
        if phase_epochs <= 0:
            continue
        compile_model(built, hparams, num_classes, phase, compile_kwargs=compile_kwargs)
        base_lr = phase_learning_rate(hparams, phase)
        # No `baseline` of phase 1's best for phase 2: fine-tuning's validation score dips and
        # climbs, and stopping it once it had not beaten phase 1 within the patience cut off
        # fine-tunings that went on to beat it (docs/results.md, stop 27).
        score, stopper = best_epoch_callbacks(monitor, hparams.early_stopping_patience)
        phase_callbacks = [
            score,
            stopper,
            *_schedule_callbacks(hparams, monitor, epoch, phase_epochs, base_lr),
            *callbacks,
        ]
        if phase == models.PHASE_HEAD and head_pass is not None:
            result = fit_head_on_features(
                built, base_lr, head_pass, val_ds, epochs=phase_epochs, initial_epoch=epoch,
                num_classes=num_classes, callbacks=phase_callbacks, class_weight=class_weight, seed=seed,
                verbose=verbose, compile_kwargs=compile_kwargs, cache=feature_cache,
                label_smoothing=hparams.label_smoothing)
        else:
            result = built.model.fit(
                train_ds() if callable(train_ds) else train_ds,
                validation_data=val_ds,
                epochs=epoch + phase_epochs,
                initial_epoch=epoch,
                steps_per_epoch=steps_per_epoch,
                validation_steps=validation_steps if val_ds is not None else None,
                class_weight=dict(class_weight) if class_weight else None,
                callbacks=phase_callbacks,
                verbose=verbose,
            )
        epoch += append_phase(history, result, phase)
        scores = [v for v in result.history.get(monitor, []) if not math.isnan(v)]
        phase_best = max(scores) if scores else -np.inf
        if best_weights is not None and phase_best <= best_score:
            logger.info(
                "phase %d best %s %.4f did not beat phase %d's %.4f: restoring phase %d weights",
                phase, monitor, phase_best, best_phase, best_score, best_phase,
            )
            built.model.set_weights(best_weights)
        else:
            best_score, best_phase, kept_epoch = phase_best, phase, stopper.best_epoch
            best_weights = built.model.get_weights()  # EarlyStopping already restored this phase's best
    history[KEPT] = [1.0 if e == kept_epoch else 0.0 for e in history["epoch"]]
    return history


def best_epoch_callbacks(monitor: str, patience: int) -> tuple[SelectionScore, keras.callbacks.EarlyStopping]:
    """The selection score, then early stopping on ``monitor`` after ``patience`` epochs without a
    better one. At the end of the fit (stopped or not) the best epoch's weights are restored."""
    return SelectionScore(), keras.callbacks.EarlyStopping(
        monitor=monitor, mode="max", patience=patience, restore_best_weights=True, verbose=0)


def append_phase(history: dict[str, list], result: keras.callbacks.History, phase: int) -> int:
    """Append one phase's fit ``result`` to ``history`` (``{"phase": [...], "epoch": [...], metric:
    [...]}``), padding keys only one side reported with NaN; returns the epochs it ran."""
    ran = len(result.epoch)
    n_before = len(history["phase"])
    for key, values in result.history.items():
        history.setdefault(key, [math.nan] * n_before).extend(float(v) for v in values)
    history["phase"].extend([phase] * ran)
    history["epoch"].extend(result.epoch)
    for values in history.values():  # pad keys this phase did not report
        values.extend([math.nan] * (n_before + ran - len(values)))
    return ran


PHASE_NAMES = {models.PHASE_END_TO_END: "end to end", models.PHASE_HEAD: "frozen backbone",
               models.PHASE_FINE_TUNE: "fine-tuning"}


def summarize_fit(history: Mapping[str, list]) -> dict[str, Any]:
    """What one :func:`fit` did, for the model card and the log: ``epochs_run`` ([phase name,
    epochs] in training order), and ``kept``: the phase, epoch and validation scores of the weights
    the model ends with (None for a history without ``KEPT``)."""
    phases = [int(p) for p in history.get("phase", [])]
    # [phase, epochs] pairs in training order (a JSON object's keys get sorted on export)
    epochs_run = [[PHASE_NAMES.get(p, str(p)), phases.count(p)] for p in dict.fromkeys(phases)]
    flags = history.get(KEPT) or []
    if 1.0 not in flags:
        return {"epochs_run": epochs_run, "kept": None}
    index = flags.index(1.0)
    phase = phases[index]

    def at_kept(key: str) -> Optional[float]:
        values = history.get(key) or []
        return None if index >= len(values) or math.isnan(values[index]) else float(values[index])

    return {
        "epochs_run": epochs_run,
        "kept": {
            "phase": PHASE_NAMES.get(phase, str(phase)),
            "epoch_in_phase": phases[: index + 1].count(phase),  # 1-based, as the log prints epochs
            "val_selection": at_kept(MONITOR),
            "val_auc": at_kept("val_auc"),
        },
    }


def concatenate_histories(histories: Sequence[Mapping[str, list]],
                          names: Optional[Sequence[str]] = None) -> dict[str, list]:
    """Histories of several models trained one after another (ensemble members) as one history.

    Epochs follow each other and ``member`` (0, 1, ...) says whose epoch it is; ``member_names``
    (given ``names``, one per history) says which family member i is, for the training-curves plot.
    Keys missing for a member are padded with NaN. One history is returned unchanged.
    """
    if len(histories) == 1:
        return dict(histories[0])
    if names is not None and len(names) != len(histories):
        raise ValueError(f"{len(names)} names for {len(histories)} histories")
    merged: dict[str, list] = {"member": []}
    for index, history in enumerate(histories):
        length = len(history.get("epoch", []))
        n_before = len(merged["member"])
        for key, values in history.items():
            merged.setdefault(key, [math.nan] * n_before).extend(values)
        merged["member"].extend([index] * length)
        for values in merged.values():
            values.extend([math.nan] * (n_before + length - len(values)))
    if names is not None:
        merged["member_names"] = list(names)  # one per member, not per epoch: added after the padding
    return merged


# ----------------------------------------------------------------------------------------------
# Threshold
# ----------------------------------------------------------------------------------------------


def _gap_middle(lower: float, upper: float) -> float:
    """A threshold t in the score gap [lower, upper), so that ``score > t`` accepts ``upper`` and
    rejects ``lower``: the middle of the gap in logit space, whatever float rounding does to
    probabilities near 0 or 1. Returned as a float32 value whenever one lies in the gap, because
    the export compares float32 scores with a float32 threshold."""
    # Not metrics.logit: its clip at 1e-7 would put every gap of saturated scores at the same middle.
    ends = np.clip(np.array([upper, lower], dtype=np.float64), 1e-300, 1.0 - 1e-16)
    middle = (np.log(ends) - np.log1p(-ends)).mean()
    t = min(max(1.0 / (1.0 + math.exp(-middle)), lower), float(np.nextafter(upper, -np.inf)))
    for candidate in (t, lower):  # lower itself when rounding t to float32 leaves the gap
        t32 = float(np.float32(candidate))
        if lower <= t32 < upper:
            return t32
    return t


def _standard_error(target: float, n: int) -> float:
    """Binomial standard error of a proportion of n at ``target`` (kept off 0 at targets 0 and 1)."""
    p = min(max(target, 0.5 / n), 1.0 - 0.5 / n)
    return math.sqrt(p * (1.0 - p) / n)


def _balanced_threshold(y_true: np.ndarray, y_score: np.ndarray, target_sensitivity: float,
                        target_specificity: float) -> Optional[float]:
    """The gap-middle threshold whose smaller margin over the two targets, each in standard errors
    of its own proportion, is largest; None when no threshold meets both targets on these data.
    Among equal smaller margins, the larger other margin: the binding bar is held either way, so
    nothing is given up on the other for nothing."""
    scores = np.unique(y_score)  # ascending
    if scores.size < 2:
        return None
    positives, negatives = np.sort(y_score[y_true == 1]), np.sort(y_score[y_true == 0])
    if negatives.size == 0:
        return None
    candidates = np.array([_gap_middle(lo, hi) for lo, hi in zip(scores[:-1], scores[1:])])
    # Rule: COVID when score > t. Both counts are step functions of t, read off the sorted scores.
    sensitivity = (positives.size - np.searchsorted(positives, candidates, side="right")) / positives.size
    specificity = np.searchsorted(negatives, candidates, side="right") / negatives.size
    margins = np.stack([(sensitivity - target_sensitivity) / _standard_error(target_sensitivity, positives.size),
                        (specificity - target_specificity) / _standard_error(target_specificity, negatives.size)])
    worse, better = margins.min(axis=0), margins.max(axis=0)
    best = int(np.lexsort((better, worse))[-1])  # sorted by worse, then better: the last is the best
    return float(candidates[best]) if worse[best] >= 0 else None


def choose_threshold(y_true, y_score, target_sensitivity: float = 0.95, target_specificity: float = 0.0) -> float:
    """A decision threshold meeting ``target_sensitivity`` (recall of COVID, label 1) on validation data.

    Decision rule: predict COVID when ``score > t``, as the export, TFMA and ``covid-cxr evaluate``
    do. Let ``t_hi`` be the k-th highest positive score, k = ceil(target * n_pos): every t in
    ``[s_below, t_hi)``, ``s_below`` being the highest score under ``t_hi``, reaches the target
    with the fewest false positives, and all classify the validation set exactly the same. The
    threshold returned is the middle of that gap in logit space, not its edge: sitting just under
    the lowest accepted positive would drop every new positive that scores a hair lower, and on a
    small validation split that is often a large share of them. Without a score below ``t_hi``,
    the float32 just under ``t_hi`` (every film is COVID). Target 0 keeps only the highest score(s).

    With ``target_specificity`` > 0, and when some threshold meets both targets on these data, the
    threshold is instead the one with the largest smaller margin, each margin counted in standard
    errors of its proportion at its target: slack on validation is shared between the two bars
    rather than all spent on specificity. That threshold sits exactly on the sensitivity target
    only when validation leaves no slack; sitting there, the k-th positive's score moves by more
    than the bar's margin between ~120-film samples, and test sensitivity lands below the target
    about half the time (docs/results.md). When no threshold meets both, sensitivity comes first.

    Raises ValueError when it is undefined: no positives in ``y_true``, a target outside [0, 1],
    empty/mismatched inputs, non-finite scores or labels other than 0/1.
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_score.ndim == 2 and y_score.shape[1] == 1:
        y_score = y_score[:, 0]
    if y_score.ndim != 1 or y_score.shape[0] != y_true.shape[0]:
        raise ValueError(f"y_score must be [N] or [N, 1] matching y_true [N]; got {y_score.shape} vs {y_true.shape}")
    if y_true.size == 0:
        raise ValueError("empty inputs")
    for name, target in (("target_sensitivity", target_sensitivity), ("target_specificity", target_specificity)):
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {target}")
    if not np.all(np.isfinite(y_score)):
        raise ValueError("y_score contains NaN or inf")
    if not np.all(np.isin(y_true, (0, 1))):
        raise ValueError("y_true must contain only 0 and 1")
    positives = np.sort(y_score[y_true == 1])[::-1]  # descending
    n_pos = positives.size
    if n_pos == 0:
        raise ValueError("no positive (COVID) examples: sensitivity is undefined")
    if target_specificity > 0.0:
        balanced = _balanced_threshold(y_true, y_score, target_sensitivity, target_specificity)
        if balanced is not None:
            return balanced
    if target_sensitivity == 0.0:
        t_hi = float(np.max(y_score))
    else:
        # Accepting the k highest positive scores (ties included) needs t just under the k-th of them.
        needed = max(1, int(math.ceil(target_sensitivity * n_pos - 1e-9)))
        t_hi = float(positives[needed - 1])
    below = y_score[y_score < t_hi]
    if below.size == 0:  # the float32 just under t_hi: the export compares in float32 (see _gap_middle)
        return float(np.nextafter(np.float32(t_hi), np.float32(-np.inf)))
    return _gap_middle(float(below.max()), t_hi)


def sensitivity_specificity(y_true, y_score, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of the rule ``score > threshold`` (NaN when a class is absent)."""
    y_true = np.asarray(y_true).reshape(-1)
    predicted = np.asarray(y_score, dtype=np.float64).reshape(-1) > threshold
    pos, neg = y_true == 1, y_true == 0
    sens = float(predicted[pos].mean()) if pos.any() else math.nan
    spec = float((~predicted[neg]).mean()) if neg.any() else math.nan
    return sens, spec


__all__ = [
    "SparseAUC",
    "SparseClassAUC",
    "SparsePrecision",
    "SparseRecall",
    "SelectionScore",
    "choose_threshold",
    "class_weights",
    "source_class_weights",
    "compile_for_export",
    "compile_model",
    "concatenate_histories",
    "fit",
    "make_loss",
    "make_metrics",
    "sensitivity_specificity",
]
