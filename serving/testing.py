"""Test helper: a real exported covid-cxr SavedModel in seconds, without running the pipeline.

``build_tiny_model(base_dir, task)`` generates a small synthetic dataset, runs the real
Transform ``preprocessing_fn`` with tf.Transform on Beam (AnalyzeDataset + WriteTransformFn),
fits a tiny tf_keras model on ``image_xf`` for a couple of steps and exports it with
``serving.export.export_serving_model`` -- the same code path as the Trainer. The model is also
"pushed" into a serving directory laid out like components/pusher.py writes it
(``<serving_dir>/<version>/`` with the push record). Use it through ``tiny_model_fixture`` (built
once per pytest session and kind); the first build takes ~15-30 s on 2 CPU cores, later kinds reuse
its transform graph.

The model is NOT meant to be accurate: a couple of steps of training.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from typing import Optional

from covid_cxr.data import features, writer
from covid_cxr.serving import predict

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipeline", "schema", "schema.pbtxt")
PUSH_RECORD = predict.PUSH_RECORD
TINY_VERSION = 1700000000
TINY_IMAGE_SIZE = 32
TINY_ATYPICAL_QUANTILE = 0.8


@dataclasses.dataclass(frozen=True)
class TinyModel:
    task: features.Task
    data_dir: str  # curated-format synthetic records (records-*.tfrecord.gz, summary.json, ...)
    transform_dir: str  # tf.Transform output (TFTransformOutput dir)
    model_dir: str  # the exported SavedModel (like a Trainer's Format-Serving)
    serving_dir: str  # serving base dir holding one version
    version: int
    threshold: float
    history: dict

    @property
    def version_dir(self) -> str:
        return os.path.join(self.serving_dir, str(self.version))


def raw_schema():
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    with open(SCHEMA_FILE, encoding="utf-8") as f:
        text_format.Parse(f.read(), schema)
    return schema


def read_records(data_dir: str) -> list[bytes]:
    return list(writer.read_records(writer.record_files(data_dir)))


def _instances(serialized: list[bytes]) -> list[dict]:
    """tf.Examples -> tf.Transform instance dicts (every schema feature has shape [1])."""
    import tensorflow as tf

    out = []
    for s in serialized:
        ex = tf.train.Example.FromString(s)
        row = {}
        for name, feat in ex.features.feature.items():
            kind = feat.WhichOneof("kind")
            row[name] = list(getattr(feat, kind).value)
        out.append(row)
    return out


# Modules that keep an optional dependency's ImportError, traceback and all, at module level;
# apache_beam's first import loads them (through google.cloud.bigquery) when pandas-gbq or
# db-dtypes is not installed.
_KEEPS_IMPORT_ERRORS = ("google.cloud.bigquery._pandas_helpers", "google.cloud.bigquery._pyarrow_helpers")


def _beam_modules():
    """apache_beam and tf.Transform's Beam API, without pinning the caller's frames for good.

    google.cloud.bigquery (imported by apache_beam) stores the ImportError of its optional
    pandas_gbq and db_dtypes as module globals. Their tracebacks hold the frames of the import
    chain, and through ``f_back`` every frame that was on the stack at the first ``import
    apache_beam``: run_transform's, build_tiny_model's, the fixture's. Those frames, with their
    final locals, then live until interpreter teardown: run_transform's ``pipeline`` kept the whole
    Beam graph (tfx_bsl coders holding protobuf repeated fields) alive until the last garbage
    collection of Py_Finalize, after the protobuf (upb) module's state is gone, where
    PyUpb_RepeatedContainer_Dealloc dereferenced it: SIGSEGV at exit (status 139) after every test
    passed, whenever a test file that builds a tiny model ran alone. The exceptions stay (their
    messages are what bigquery reports); only their tracebacks, kept for nobody, are dropped.
    """
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    for name in _KEEPS_IMPORT_ERRORS:
        for value in list(vars(sys.modules.get(name) or object()).values()):
            while isinstance(value, BaseException):
                value.__traceback__ = None
                value = value.__context__
    return beam, tft, tft_beam, dataset_metadata, metadata_io


def run_transform(data_dir: str, transform_dir: str, image_size: int = TINY_IMAGE_SIZE) -> None:
    """Analyzes the records with the project's preprocessing_fn and writes the transform graph."""
    beam, tft, tft_beam, dataset_metadata, metadata_io = _beam_modules()

    from covid_cxr.transform import preprocessing

    metadata = dataset_metadata.DatasetMetadata(raw_schema())
    instances = _instances(read_records(data_dir))
    temp_dir = os.path.join(os.path.dirname(transform_dir), "tft_tmp")

    def fn(inputs):
        return preprocessing.preprocessing_fn(inputs, {preprocessing.IMAGE_SIZE_KEY: image_size})

    with beam.Pipeline(argv=["--direct_running_mode=in_memory", "--direct_num_workers=1"]) as pipeline:
        with tft_beam.Context(temp_dir=temp_dir, force_tf_compat_v1=False):
            raw = pipeline | "Create" >> beam.Create(instances, reshuffle=False)
            transform_fn = (raw, metadata) | "Analyze" >> tft_beam.AnalyzeDataset(fn)
            _ = transform_fn | "Write" >> tft_beam.WriteTransformFn(transform_dir)
    # The TFX Transform component also writes the raw metadata (TFTransformOutput.raw_feature_spec).
    metadata_io.write_metadata(metadata, os.path.join(transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    shutil.rmtree(temp_dir, ignore_errors=True)


def tiny_keras_model(task: features.Task, image_size: int = TINY_IMAGE_SIZE, conv: bool = True):
    """A small tf_keras model on image_xf [S, S, 1] ending in a layer named `probabilities`."""
    import tf_keras as keras

    from covid_cxr.transform import preprocessing

    inputs = keras.Input((image_size, image_size, 1), name=preprocessing.IMAGE_XF)
    x = inputs
    if conv:
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
        x = keras.layers.MaxPooling2D(2, name="pool1")(x)
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        x = keras.layers.AveragePooling2D(4, name="pool")(x)
        x = keras.layers.Flatten(name="flatten")(x)
    if task.is_binary:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probabilities")(x)
        loss = "binary_crossentropy"
    else:
        outputs = keras.layers.Dense(task.num_classes, activation="softmax", name="probabilities")(x)
        loss = "sparse_categorical_crossentropy"
    model = keras.Model(inputs, outputs, name="tiny")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, metrics=["accuracy"])
    return model


def transformed_images(transform_dir: str, serialized: list[bytes]):
    """(image_xf [N, S, S, 1], label_index [N]) numpy arrays through the written transform graph."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from covid_cxr.transform import preprocessing

    output = tft.TFTransformOutput(transform_dir)
    parsed = tf.io.parse_example(tf.constant(serialized), output.raw_feature_spec())
    transformed = output.transform_raw_features(parsed)
    return transformed[preprocessing.IMAGE_XF].numpy(), transformed[preprocessing.LABEL_XF].numpy()


def build_tiny_model(base_dir: str, task: str = "covid-vs-normal", patients_per_class: int = 4,
                     threshold: Optional[float] = None, conv: bool = True, seed: int = 0,
                     version: int = TINY_VERSION, transform_dir: Optional[str] = None) -> TinyModel:
    """Everything under `base_dir`: data/, transform/, model/ (SavedModel), serving/<version>/.

    `threshold`: the stored COVID threshold; None = between the middle two of the model's own
    P(covid) on its data. A tiny model barely learns (its scores span about 0.01), so a fixed
    threshold would give every film the same decision and no decision rule could be told apart.

    `transform_dir`: reuse an existing transform output (the preprocessing_fn has no analyzers and
    does not depend on the labels, so one transform graph serves every task) and skip Beam.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    from covid_cxr.data import synthetic
    from covid_cxr.serving import export, typicality
    from covid_cxr.trainer import models

    task_obj = features.get_task(task)
    data_dir = os.path.join(base_dir, "data")
    model_dir = os.path.join(base_dir, "model")
    serving_dir = os.path.join(base_dir, "serving")
    summary = synthetic.generate(data_dir, task, patients_per_class=patients_per_class, seed=seed)
    if transform_dir is None:
        transform_dir = os.path.join(base_dir, "transform")
        run_transform(data_dir, transform_dir)

    tf.keras.utils.set_random_seed(seed)
    images, labels = transformed_images(transform_dir, read_records(data_dir))
    model = tiny_keras_model(task_obj, conv=conv)
    fit = model.fit(images, labels, batch_size=8, epochs=2, validation_data=(images, labels), verbose=0)
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    if threshold is None:
        threshold = halving_threshold(model.predict(images, verbose=0), task_obj)
    metadata = {
        "family": "tiny-test-cnn" if conv else "tiny-test-dense",
        "family_note": "test fixture (serving/testing.py), not a real model",
        "hyperparameters": {"learning_rate": 0.01},
        "transform_image_size": TINY_IMAGE_SIZE,
        "train_class_counts": summary["per_class"],
        "eval_class_counts": summary["per_class"],
        "target_sensitivity": 0.95,
        "history": history,
    }
    # The Trainer's atypical-input check, fitted on the same films (the dense model has no pooled
    # features, so none); a low quantile, as a handful of films cannot place a 0.95 one.
    scorer, families = models.scorer_with_features([models.BuiltModel(model, None, metadata["family"], "")])
    check = None
    if scorer is not None:
        pooled = scorer.predict(images, verbose=0)[1]
        check, metadata["typicality"] = typicality.fitted_check(scorer, families, pooled, pooled, TINY_ATYPICAL_QUANTILE)
    export.export_serving_model(model, tft.TFTransformOutput(transform_dir), task_obj, threshold, metadata, model_dir,
                                typicality_check=check)
    push_copy(model_dir, serving_dir, version)
    return TinyModel(task_obj, data_dir, transform_dir, model_dir, serving_dir, version, threshold, history)


def halving_threshold(probabilities, task: features.Task) -> float:
    """Midway between the middle two distinct P(covid): about half the films are called COVID."""
    import numpy as np

    scores = np.unique(probabilities[:, 0] if task.is_binary else probabilities[:, task.positive_index])
    if len(scores) < 2:
        raise RuntimeError("the tiny model scores every film the same: no threshold splits them")
    k = len(scores) // 2
    return float((scores[k - 1] + scores[k]) / 2)


_CACHE: dict = {}


def tiny_model(tmp_path_factory, task: str = "covid-vs-normal", conv: bool = True) -> TinyModel:
    """A TinyModel built once per pytest session and kind (task, conv); later calls reuse it.

    The first model's transform graph is reused by the others (no second Beam run). Treat the
    returned directories as read-only: several test modules share them.
    """
    key = (task, conv)
    if key not in _CACHE:
        transform_dir = next(iter(_CACHE.values())).transform_dir if _CACHE else None
        base = str(tmp_path_factory.mktemp(f"tiny-{task}-{'conv' if conv else 'dense'}"))
        _CACHE[key] = build_tiny_model(base, task, conv=conv, transform_dir=transform_dir)
    return _CACHE[key]


def tiny_model_fixture(task: str = "covid-vs-normal", conv: bool = True):
    """A pytest fixture (assign it to a module-level name) yielding the session's TinyModel of a kind:

        from covid_cxr.serving import testing
        binary_model = testing.tiny_model_fixture()
        def test_x(binary_model): ...
    """
    import pytest

    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory):
        return tiny_model(tmp_path_factory, task, conv)

    return fixture


def argmax_era_copy(model_dir: str, target: str) -> str:
    """A copy of an exported three-class model whose metadata lacks `decision_rule`, like the exports
    from before three-class had a COVID threshold (their graph served the argmax)."""
    shutil.copytree(model_dir, target)
    asset = os.path.join(target, "assets", "covid_cxr.json")
    with open(asset, encoding="utf-8") as f:
        metadata = json.load(f)
    del metadata["decision_rule"]
    with open(asset, "w", encoding="utf-8") as f:
        json.dump(metadata, f)
    return target


def push_copy(model_dir: str, serving_dir: str, version: int, extra: Optional[dict] = None) -> str:
    """Copies a SavedModel to `<serving_dir>/<version>/` with a push record (like the pusher)."""
    target = os.path.join(serving_dir, str(version))
    shutil.copytree(model_dir, target, dirs_exist_ok=True)
    with open(os.path.join(target, PUSH_RECORD), "w", encoding="utf-8") as f:
        json.dump({"model_uri": model_dir, **(extra or {}), "version": version}, f)
    return target
