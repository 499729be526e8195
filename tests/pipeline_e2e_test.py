"""The whole TFX DAG on a small synthetic set, run for real with LocalDagRunner.

One module-scoped pipeline root is shared by the scenarios below, in order, the way an MLOps team
would live through them: first run blessed and pushed; an unchanged re-run reuses the cache and
pushes nothing; an impossible bar refuses the same model; a broken model is refused and the
serving directory keeps the blessed one; bad data stops the run before Transform.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store

from covid_cxr import local_runner
from covid_cxr.components import pusher
from covid_cxr.components.schema_gate import DataValidationError
from covid_cxr.data import features, synthetic
from covid_cxr.pipeline import config as cfg
from covid_cxr.pipeline import metadata

TASK = "covid-vs-normal"


def _config(root, **overrides):
    values = {
        "data.data_dir": os.path.join(root, "data"),
        "runtime.pipeline_root": os.path.join(root, "root"),
        "runtime.serving_dir": os.path.join(root, "serving"),
        "model.task": TASK,
    }
    values.update(overrides)
    return cfg.load_config("quick", overrides=values)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("e2e"))
    synthetic.generate(os.path.join(root, "data"), TASK, patients_per_class=40, seed=7)
    config = _config(root)
    started = time.time()
    outcome = local_runner.run(config)
    return root, config, outcome, time.time() - started


def test_first_run_is_blessed_and_pushes_a_versioned_model(first_run):
    _, config, outcome, _ = first_run
    assert outcome.blessed, outcome.report.failures
    assert outcome.pushed
    assert outcome.report.metrics["sensitivity"] >= config.gate.min_sensitivity
    assert outcome.report.metrics["specificity"] >= config.gate.min_specificity
    assert outcome.report.metrics["examples"] > 10
    versions = pusher.versions(config.runtime.serving_dir)
    assert len(versions) == 1 and outcome.destination.endswith(str(versions[0]))
    for name in ("saved_model.pb", "model_card.md", pusher.PUSH_RECORD):
        assert os.path.exists(os.path.join(outcome.destination, name)), name
    assert "BLESSED" in open(os.path.join(outcome.destination, "model_card.md")).read()
    # The report has slices by source/view/sex from the raw examples.
    assert any(name.startswith("source:") for name in outcome.report.slices)


def test_every_component_recorded_its_artifacts_in_mlmd(first_run):
    _, config, _, _ = first_run
    store = metadata_store.MetadataStore(metadata.connection_config(config))
    types = {t.name for t in store.get_artifact_types()}
    for expected in ("Examples", "ExampleStatistics", "Schema", "ExampleAnomalies", "TransformGraph",
                     "HyperParameters", "Model", "ModelEvaluation", "ModelBlessing", "PushedModel"):
        assert expected in types, expected
        assert store.get_artifacts_by_type(expected), expected


def test_splits_are_patient_disjoint(first_run):
    _, config, _, _ = first_run
    store = metadata_store.MetadataStore(metadata.connection_config(config))
    examples = store.get_artifacts_by_type("Examples")
    uri = min(examples, key=lambda a: a.id).uri  # ExampleGen's (Transform's come later)
    groups = {}
    for split in ("train", "eval", "test"):
        files = tf.io.gfile.glob(os.path.join(uri, f"Split-{split}", "*"))
        dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
        groups[split] = {tf.train.Example.FromString(r.numpy()).features.feature[features.GROUP].bytes_list.value[0]
                         for r in dataset}
        assert groups[split], split
    assert not groups["train"] & groups["eval"]
    assert not groups["train"] & groups["test"]
    assert not groups["eval"] & groups["test"]


def _test_examples(config, limit=8):
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(config.data.data_dir, "records-*")),
                                      compression_type="GZIP")
    return [r.numpy() for r in records.take(limit)]


def test_pushed_model_answers_on_both_signatures(first_run):
    _, config, outcome, _ = first_run
    model = tf.saved_model.load(outcome.destination)
    serialized = _test_examples(config)
    by_example = model.signatures["serving_default"](examples=tf.constant(serialized))
    images = [tf.train.Example.FromString(s).features.feature[features.IMAGE].bytes_list.value[0] for s in serialized]
    by_image = model.signatures["predict_image"](image_bytes=tf.constant(images))
    np.testing.assert_allclose(by_example["covid_probability"].numpy(), by_image["covid_probability"].numpy(), atol=1e-5)
    probabilities = by_example["probabilities"].numpy()
    assert probabilities.shape == (len(serialized), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    threshold = float(by_example["threshold"].numpy()[0])
    assert 0.0 < threshold < 1.0
    expected = np.where(by_example["covid_probability"].numpy() > threshold, b"covid", b"normal")
    assert by_example["label"].numpy().tolist() == expected.tolist()
    truth = [tf.train.Example.FromString(s).features.feature[features.LABEL].bytes_list.value[0] for s in serialized]
    assert np.mean(np.array(truth) == by_example["label"].numpy()) >= 0.75


def test_unchanged_rerun_is_cached_and_pushes_nothing_new(first_run):
    _, config, first, first_seconds = first_run
    started = time.time()
    outcome = local_runner.run(config)
    assert time.time() - started < first_seconds * 0.7
    assert outcome.blessed and not outcome.pushed
    assert "already" in outcome.reason
    assert outcome.model_uri == first.model_uri  # the Trainer was not re-run
    assert len(pusher.versions(config.runtime.serving_dir)) == 1


def test_the_same_model_is_refused_at_an_impossible_bar(first_run):
    root, config, first, _ = first_run
    # The Resolver hands the Evaluator the same model as baseline; demanding that it beat itself
    # by 0.05 AUC is a bar no model can clear, whatever its quality.
    outcome = local_runner.run(_config(root, **{"gate.max_auc_regression": "-0.05"}))
    assert outcome.model_uri == first.model_uri
    assert not outcome.blessed and not outcome.pushed
    assert any(f.startswith("AUC change") for f in outcome.report.failures), outcome.report.failures
    assert pusher.versions(config.runtime.serving_dir) == [int(os.path.basename(first.destination))]


def test_a_broken_model_is_not_blessed_and_serving_keeps_the_previous_one(first_run):
    root, config, first, _ = first_run
    before = pusher.versions(config.runtime.serving_dir)
    # One epoch at a vanishing learning rate: an untrained network.
    broken = _config(root, **{"tuner.enabled": "false", "training.epochs": "1", "tuner.learning_rates": "[1e-9]",
                              "training.fine_tune_epochs": "0"})
    outcome = local_runner.run(broken)
    assert outcome.model_uri != first.model_uri
    assert not outcome.blessed and not outcome.pushed
    assert outcome.report.failures
    assert pusher.versions(config.runtime.serving_dir) == before
    assert os.path.exists(os.path.join(first.destination, "saved_model.pb"))


def test_data_anomalies_stop_the_run_before_transform(tmp_path):
    data_dir = tmp_path / "data"
    synthetic.generate(str(data_dir), TASK, patients_per_class=6, seed=3)
    # Corrupt: a record whose label is outside the schema's vocabulary and whose sex is missing.
    bad = features.Record(png=b"not an image", label="cat", label_index=1, patient_id="p", group="g",
                          source="synthetic-a", view="PA", sex="?", age=200)
    with tf.io.TFRecordWriter(str(data_dir / "records-99999-of-99999.tfrecord.gz"),
                              options=tf.io.TFRecordOptions(compression_type="GZIP")) as out:
        for _ in range(5):
            out.write(bad.to_example().SerializeToString())
    config = cfg.load_config("quick", overrides={
        "data.data_dir": str(data_dir), "runtime.pipeline_root": str(tmp_path / "root"),
        "runtime.serving_dir": str(tmp_path / "serving"), "model.task": TASK})
    with pytest.raises(DataValidationError, match="feature label") as info:
        local_runner.run(config)
    assert "feature sex" in str(info.value) or "feature age" in str(info.value)
    store = metadata_store.MetadataStore(metadata.connection_config(config))
    assert not store.get_artifacts_by_type("TransformGraph")
    assert not os.path.exists(tmp_path / "serving")


def test_cli_reports_user_errors_in_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("gate: {min_sensitivity: [\n")
    cases = [
        (["run", "--data", str(tmp_path / "missing")], "does not exist"),
        (["run", "--data", str(empty)], "no curated TFRecords"),
        (["run", "--data", str(empty), "--task", "covid-vs-cats"], "unknown task"),
        (["run", "--data", str(empty), "--config", str(bad_yaml)], "not valid YAML"),
    ]
    for args, message in cases:
        result = subprocess.run([sys.executable, "-m", "covid_cxr.cli", *args], capture_output=True, text=True,
                                cwd=str(tmp_path))
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len([l for l in result.stderr.splitlines() if l.startswith("covid-cxr: error")]) == 1
