"""The whole TFX DAG on a small synthetic set, run for real with LocalDagRunner.

The first run IS the README's main job: `covid-cxr demo` through the CLI. One module-scoped
pipeline root is shared by the scenarios below, in order, the way an MLOps team would live through
them: the demo is blessed and pushed; an unchanged second demo reuses the cache and pushes nothing;
the pushed model answers `predict` and `evaluate`; an impossible bar refuses the same model; a broken
model is refused and the serving directory keeps the blessed one; bad data stops the run before
Transform.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from covid_cxr import cli, local_runner
from covid_cxr.components import pusher
from covid_cxr.data import features, synthetic, writer
from covid_cxr.pipeline import config as cfg
from covid_cxr.pipeline import metadata
from covid_cxr.serving import model_metadata

TASK = "covid-vs-normal"


def _config(root, **overrides):
    """The config `covid-cxr demo --out root` builds, plus overrides."""
    values = {
        "data.data_dir": os.path.join(root, "data"),
        "runtime.pipeline_root": os.path.join(root, "root"),
        "runtime.serving_dir": os.path.join(root, "serving"),
        "model.task": TASK,
    }
    values.update(overrides)
    return cfg.load_config("quick", overrides=values)


def _demo(root):
    result = CliRunner().invoke(cli.main, ["demo", "--out", root])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("e2e"))
    output = _demo(root)
    config = _config(root)
    return root, config, metadata.latest_outcome(config), output


def _split(config, name) -> list[bytes]:
    """Serialized examples of one ExampleGen split (`test`: never trained or tuned on)."""
    store = metadata_store.MetadataStore(metadata.connection_config(config))
    uri = min(store.get_artifacts_by_type("Examples"), key=lambda a: a.id).uri  # ExampleGen's (Transform's come later)
    files = tf.io.gfile.glob(os.path.join(uri, f"Split-{name}", "*"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_demo_is_blessed_and_pushes_a_versioned_model(first_run):
    _, config, outcome, output = first_run
    assert "\nBLESSED" in output and "NOT BLESSED" not in output, output
    assert f"Model pushed to {outcome.destination}" in output
    assert "sensitivity 95% CI (Wilson)" in output and "at the served decision:" in output
    assert outcome.blessed, outcome.report.failures
    assert outcome.pushed
    assert outcome.report.metrics["sensitivity"] >= config.gate.min_sensitivity
    assert outcome.report.metrics["specificity"] >= config.gate.min_specificity
    counts = outcome.report.confusion_counts()
    assert sum(counts.values()) == outcome.report.metrics["examples"] > 10
    versions = pusher.versions(config.runtime.serving_dir)
    assert len(versions) == 1 and outcome.destination.endswith(str(versions[0]))
    for name in ("saved_model.pb", "model_card.md", pusher.PUSH_RECORD):
        assert os.path.exists(os.path.join(outcome.destination, name)), name
    card = open(os.path.join(outcome.destination, "model_card.md")).read()
    assert "BLESSED" in card and "Wilson score intervals on the held-out test split" in card
    assert f"{counts['tp']} true positives" in card
    # Both quick members (cnn3, cnn4: one end-to-end phase each) say which epoch they serve.
    fits = model_metadata.read(outcome.destination)["training"]
    assert [f["family"] for f in fits] == ["cnn3", "cnn4"]
    for fit in fits:
        [[phase, epochs]] = fit["epochs_run"]
        assert phase == fit["kept"]["phase"] == "end to end" and 1 <= fit["kept"]["epoch_in_phase"] <= epochs
        assert f"| {fit['family']} | end to end {epochs} | end to end, epoch {fit['kept']['epoch_in_phase']} |" in card
    # The report has slices by source/view/sex from the raw examples.
    assert any(name.startswith("source:") for name in outcome.report.slices)
    # The Trainer recorded the curation summary of the data it trained on (predict repeats its settings).
    assert model_metadata.read(outcome.destination)["data_summary"] == writer.read_summary(config.data.data_dir)


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
    groups = {}
    for split in ("train", "eval", "test"):
        groups[split] = {tf.train.Example.FromString(r).features.feature[features.GROUP].bytes_list.value[0]
                         for r in _split(config, split)}
        assert groups[split], split
    assert not groups["train"] & groups["eval"]
    assert not groups["train"] & groups["test"]
    assert not groups["eval"] & groups["test"]


def test_leak_check_deals_every_group_into_the_split_example_gen_chose(first_run, load_script):
    _, config, _, _ = first_run
    split_of = {}
    for split in ("train", "eval", "test"):
        for record in _split(config, split):
            split_of[tf.train.Example.FromString(record).features.feature[features.GROUP].bytes_list.value[0].decode()] = split
    groups = sorted(split_of)
    assert load_script("leak_check").split_of(groups, config.data) == [split_of[g] for g in groups]
    assert set(split_of.values()) == {"train", "eval", "test"}


def test_pushed_model_answers_on_both_signatures(first_run):
    _, config, outcome, _ = first_run
    model = tf.saved_model.load(outcome.destination)
    serialized = _split(config, "test")
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


def test_pushed_model_serves_predict_and_evaluate_commands(first_run, tmp_path):
    _, config, outcome, _ = first_run
    serialized = _split(config, "test")[:4]
    files = []
    for i, record in enumerate(serialized):
        path = tmp_path / f"image-{i}.png"
        path.write_bytes(tf.train.Example.FromString(record).features.feature[features.IMAGE].bytes_list.value[0])
        files.append(str(path))
    # The serving base directory means its newest version: the one the demo pushed.
    # stdout is the JSON alone; the demo model's "trained on synthetic images" warning goes to stderr.
    result = CliRunner(mix_stderr=False).invoke(cli.main, ["predict", "--model", config.runtime.serving_dir, "--json", *files])
    assert result.exit_code == 0, result.output + result.stderr
    assert "trained on SYNTHETIC images" in result.stderr
    predicted = json.loads(result.output)
    assert predicted["model"]["version"] == int(os.path.basename(outcome.destination))
    assert [p["file"] for p in predicted["predictions"]] == files
    for row in predicted["predictions"]:
        assert row["label"] in ("normal", "covid") and set(row["probabilities"]) == {"normal", "covid"}

    report_dir = tmp_path / "report"
    # No --data: the run's own held-out test split.
    result = CliRunner(mix_stderr=False).invoke(
        cli.main, ["evaluate", "--model", config.runtime.serving_dir, "--pipeline-root", config.runtime.pipeline_root,
                   "--json", "--out", str(report_dir), "--bootstrap", "200"])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.output)
    assert report["n"] == outcome.report.metrics["examples"]
    for key in ("sensitivity", "specificity", "auc", "accuracy"):
        low, high = report[key]["ci95"]
        assert low <= report[key]["value"] <= high, key
    # The served decision, the gate and `evaluate` agree on the same test split.
    assert report["sensitivity"]["value"] == pytest.approx(outcome.report.metrics["sensitivity"], abs=1e-6)
    assert report["specificity"]["value"] == pytest.approx(outcome.report.metrics["specificity"], abs=1e-6)
    assert report["data"]["path"].endswith("Split-test")
    for name in ("report.html", "roc.png", "confusion_matrix.png"):
        assert (report_dir / name).stat().st_size > 1000, name
    html = (report_dir / "report.html").read_text()
    assert "TFDV anomalies" in html and "TFMA (Evaluator, test split): BLESSED" in html
    # One card with both: the gate the Pusher recorded and this evaluation's per-source table.
    card = (report_dir / "model_card.md").read_text()
    gate = config.gate
    assert (f"deployment gate on the held-out test split: sensitivity >= {gate.min_sensitivity}, "
            f"specificity >= {gate.min_specificity}") in card
    assert "## Held-out test evaluation (BLESSED)" in card and "AUC within the source (95% CI)" in card


def _newest_states(config) -> dict:
    store = metadata_store.MetadataStore(metadata.connection_config(config))
    types = {t.id: t.name.rsplit(".", 1)[-1] for t in store.get_execution_types()}
    newest = {}
    for execution in sorted(store.get_executions(), key=lambda e: e.id):
        newest[types[execution.type_id]] = execution.last_known_state
    return newest


def test_unchanged_second_demo_is_cached_and_pushes_nothing_new(first_run):
    root, config, first, _ = first_run
    output = _demo(root)
    assert "reusing the synthetic data already there" in output
    assert "Not pushed again: this model is already the newest served version" in output
    outcome = metadata.latest_outcome(config)
    assert outcome.blessed and not outcome.pushed
    assert outcome.model_uri == first.model_uri  # the Trainer was not re-run
    states = _newest_states(config)
    for component in ("ImportExampleGen", "StatisticsGen", "ExampleValidator", "Transform", "Tuner", "Trainer"):
        assert states.get(component) == metadata_store_pb2.Execution.CACHED, (component, states)
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
    # The refusal is on file in the Pusher's own artifact, and evaluate on the refused model finds it.
    assert outcome.decision_record.startswith(os.path.join(config.runtime.pipeline_root, "VersionedPusher", ""))
    with open(outcome.decision_record) as f:
        decision = json.load(f)
    assert not decision["blessed"] and decision["failures"] == outcome.report.failures
    assert decision["gate"]["max_auc_regression"] == -0.05 and decision["model_uri"] == outcome.model_uri
    with open(first.decision_record) as f:
        assert json.load(f)["blessed"]
    result = CliRunner().invoke(cli.main, ["evaluate", "--model", outcome.model_uri, "--data", config.data.data_dir,
                                           "--no-audit", "--bootstrap", "100", "--out", os.path.join(root, "refused")])
    assert result.exit_code == 0, result.output
    assert f"the run's gate decided NOT BLESSED: {outcome.report.failures[0]}" in result.output
    assert "(NOT BLESSED)" in open(os.path.join(root, "refused", "model_card.md")).read()


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
    # `evaluate --pipeline-root` on the served model shows the Evaluator output that blessed it (its
    # push record says which), not the newer refusals.
    result = CliRunner(mix_stderr=False).invoke(
        cli.main, ["evaluate", "--model", config.runtime.serving_dir, "--pipeline-root", config.runtime.pipeline_root,
                   "--json", "--no-audit", "--bootstrap", "100", "--out", os.path.join(root, "report-after-refusal")])
    assert result.exit_code == 0, result.output + result.stderr
    evaluation = json.loads(result.output)["pipeline"]["evaluation"]
    assert evaluation["blessed"] and evaluation["uri"] == first.evaluation_uri != outcome.evaluation_uri


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
    # As a user meets it: one error line on stderr (after the run's notes), exit code 1, no traceback.
    result = subprocess.run([sys.executable, "-m", "covid_cxr.cli", "run", "--preset", "quick", "--data", str(data_dir),
                             "--pipeline-root", config.runtime.pipeline_root,
                             "--serving-dir", config.runtime.serving_dir], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("covid-cxr: error: "), result.stderr
    assert "feature label" in lines[0] and "stopped before Transform" in lines[0]
    assert "feature sex" in lines[0] or "feature age" in lines[0]
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
        (["run"], "Missing option '--data'"),  # click's own usage errors: one line too
        (["run", "--data", str(empty), "--preset", "huge"], "Invalid value for '--preset'"),
    ]
    for args, message in cases:
        result = CliRunner(mix_stderr=False).invoke(cli.main, args)
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len([l for l in result.stderr.splitlines() if l.startswith("covid-cxr: error")]) == 1
    # As a user meets it, in a process of its own (the full preset's thread restart included):
    # one line on stderr and nothing else, no traceback, before any pipeline work.
    result = subprocess.run([sys.executable, "-m", "covid_cxr.cli", *cases[0][0]], capture_output=True, text=True,
                            cwd=str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"covid-cxr: error: data directory {str(tmp_path / 'missing')!r} does not exist"]
    assert "restarting" not in result.stdout  # the wrong --data is caught before the reproducible restart
