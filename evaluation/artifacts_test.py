"""Reading a pipeline root's newest artifacts (fake roots laid out as LocalDagRunner writes them)."""
import json
import os
import re

import pytest

from covid_cxr.evaluation import artifacts, gate_report


def _folder(root, *parts, files=("x",)):
    path = os.path.join(str(root), *parts)
    os.makedirs(path, exist_ok=True)
    for name in files:
        with open(os.path.join(path, name), "w") as f:
            f.write("{}")
    return path


def test_the_newest_execution_is_the_highest_numbered_one_that_holds_files(tmp_path):
    for execution in ("2", "10"):
        _folder(tmp_path, "Trainer", "model", execution)
    _folder(tmp_path, "Trainer", "model", "11", files=())  # an execution still running, or failed
    _folder(tmp_path, "Trainer", "model", "latest")
    _folder(tmp_path, "Trainer", "model", files=("12",))  # a file, not an execution
    assert artifacts.newest_execution(str(tmp_path), "Trainer", "model") == str(tmp_path / "Trainer" / "model" / "10")
    assert artifacts.newest_execution(str(tmp_path), "Evaluator", "evaluation") is None
    _folder(tmp_path, "Evaluator", files=("evaluation",))
    assert artifacts.newest_execution(str(tmp_path), "Evaluator", "evaluation") is None


def test_a_trained_run_needs_both_the_model_and_the_examples(tmp_path):
    model = _folder(tmp_path, "Trainer", "model", "4")
    with pytest.raises(ValueError, match="no Trainer model or ImportExampleGen examples"):
        artifacts.trained_run(str(tmp_path))
    examples = _folder(tmp_path, "ImportExampleGen", "examples", "1")
    assert artifacts.trained_run(str(tmp_path)) == (model, examples)


def _string_feature(dataset, name, values, missing=0, legacy=False):
    """legacy: named as TFDV's older statistics name a feature (`name`, no `path`)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    feature = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.STRING)
    if legacy:
        feature.name = name
    else:
        feature.path.step.append(name)
    feature.string_stats.unique = len(values)
    feature.string_stats.common_stats.num_missing = missing
    feature.string_stats.common_stats.num_non_missing = 10 - missing
    for i, value in enumerate(values):
        feature.string_stats.top_values.add(value=value, frequency=len(values) - i)


def test_statistics_summarize_each_kind_of_feature_and_list_at_most_eight_values_of_a_categorical_one_none_of_ids():
    from tensorflow_metadata.proto.v0 import statistics_pb2

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    dataset = stats.datasets.add(num_examples=10)
    _string_feature(dataset, "source", [f"s{i}" for i in range(20)], missing=4)
    _string_feature(dataset, "view", [f"v{i}" for i in range(21)])
    _string_feature(dataset, "sex", ["F", "M"], legacy=True)
    for name in ("patient_id", "group"):
        _string_feature(dataset, name, [f"{name}1", f"{name}2"])
    empty = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.INT)
    empty.path.step.append("age")
    empty.num_stats.mean = 0.0  # no example had the feature: no count to divide by
    label = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.INT)
    label.path.step.append("label_index")
    label.num_stats.mean, label.num_stats.std_dev, label.num_stats.min, label.num_stats.max = 0.4, 0.5, 0.0, 1.0
    label.num_stats.num_zeros = 6
    label.num_stats.common_stats.num_non_missing = 10
    image = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.BYTES)
    image.path.step.append("image")
    image.bytes_stats.unique, image.bytes_stats.avg_num_bytes, image.bytes_stats.max_num_bytes = 10, 1500.0, 4000.0
    image.bytes_stats.common_stats.num_missing, image.bytes_stats.common_stats.num_non_missing = 2, 8
    stats_summary = artifacts.summarize_statistics(stats)
    summary = stats_summary["features"]
    assert stats_summary["num_examples"] == 10
    assert summary["source"]["top_values"] == {f"s{i}": 20 - i for i in range(8)}
    assert summary["source"]["missing"] == 4 and summary["source"]["missing_fraction"] == 0.4
    assert "top_values" not in summary["view"] and summary["view"]["unique"] == 21
    assert summary["sex"]["top_values"] == {"F": 2, "M": 1}
    assert "top_values" not in summary["patient_id"] and "top_values" not in summary["group"]
    assert summary["age"]["missing_fraction"] == 0.0 and summary["age"]["type"] == "num"
    assert summary["label_index"] == {"type": "num", "mean": 0.4, "std": 0.5, "min": 0.0, "max": 1.0, "zeros": 6,
                                      "missing": 0, "missing_fraction": 0.0}
    assert summary["image"] == {"type": "bytes", "unique": 10, "avg_bytes": 1500.0, "max_bytes": 4000.0,
                                "missing": 2, "missing_fraction": 0.2}
    assert artifacts.summarize_statistics(statistics_pb2.DatasetFeatureStatisticsList()) == {"num_examples": 0, "features": {}}


def _split_file(root, component, output, execution, split, name, message):
    """``message`` serialized as ``<root>/<component>/<output>/<execution>/Split-<split>/<name>``."""
    with open(os.path.join(_folder(root, component, output, execution, f"Split-{split}", files=()), name), "wb") as f:
        f.write(message.SerializeToString())


def test_the_newest_statistics_and_anomalies_are_read_per_split(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

    root = str(tmp_path)
    assert artifacts.read_statistics(root) is None and artifacts.read_anomalies(root) is None
    for execution, n in (("3", 40), ("4", 10)):
        stats = statistics_pb2.DatasetFeatureStatisticsList()
        stats.datasets.add(num_examples=n)
        _split_file(root, *artifacts.STATISTICS[:2], execution, "train", artifacts.STATISTICS[2], stats)
    _folder(root, *artifacts.STATISTICS[:2], "4", "Split-eval", files=())  # a split without statistics
    statistics = artifacts.read_statistics(root)
    assert statistics == {"uri": os.path.join(root, *artifacts.STATISTICS[:2], "4"),
                          "splits": {"train": {"num_examples": 10, "features": {}}}}
    found = anomalies_pb2.Anomalies()
    found.anomaly_info["view"].short_description = "Unexpected string values"
    _split_file(root, *artifacts.ANOMALIES[:2], "5", "test", artifacts.ANOMALIES[2], found)
    _split_file(root, *artifacts.ANOMALIES[:2], "5", "train", artifacts.ANOMALIES[2], anomalies_pb2.Anomalies())
    _folder(root, *artifacts.ANOMALIES[:2], "5", files=("Split-notes",))  # a file, not a split
    assert artifacts.read_anomalies(root) == {"uri": os.path.join(root, *artifacts.ANOMALIES[:2], "5"),
                                              "splits": {"test": ["feature view: Unexpected string values"], "train": []}}


@pytest.fixture
def gate_reports(monkeypatch):
    """read_gate_report stubbed (TFMA output is not faked here): which evaluation was read, and blessed how."""
    read = []

    def fake(uri, blessed):
        read.append((uri, blessed))
        return gate_report.GateReport(blessed, {"uri": uri}, [] if blessed else ["too few"], {})

    monkeypatch.setattr(gate_report, "read_gate_report", fake)
    return read


def test_the_evaluation_shown_is_the_one_named_else_the_models_own_else_the_newest(tmp_path, gate_reports, monkeypatch):
    root = str(tmp_path)
    old, own, newest = (_folder(root, *artifacts.EVALUATION, n) for n in ("3", "5", "8"))
    _folder(root, *artifacts.BLESSING, "5", files=("BLESSED",))
    _folder(root, *artifacts.BLESSING, "8", files=("NOT_BLESSED",))
    shown = artifacts.read_evaluation(root)
    assert (shown["uri"], shown["blessed"], shown["failures"]) == (newest, False, ["too few"])
    assert artifacts.read_evaluation(root, evaluation_uri=old)["uri"] == old
    assert artifacts.read_evaluation(root, evaluation_uri=str(tmp_path / "gone"))["uri"] == newest
    # ML Metadata names the evaluation that judged the model as its candidate.
    monkeypatch.setattr(artifacts, "_evaluation_of_model", lambda root, model_uri: own if model_uri == "m" else None)
    evaluation = artifacts.read_evaluation(root, model_uri="m")
    assert (evaluation["uri"], evaluation["blessed"], evaluation["failures"]) == (own, True, [])
    assert artifacts.read_evaluation(root, model_uri="m", evaluation_uri=old)["uri"] == old


def _decision(root, execution, model_uri, **fields):
    folder = _folder(root, *artifacts.PUSHED_MODEL, str(execution), files=())
    path = os.path.join(folder, artifacts.DECISION_RECORD)
    with open(path, "w") as f:
        json.dump(dict(fields, model_uri=model_uri), f)
    return path


def test_a_models_gate_decision_is_the_newest_record_that_names_it(tmp_path):
    model = str(tmp_path / "Trainer" / "model" / "9")
    older = _decision(tmp_path, 4, model, blessed=False)
    newer = _decision(tmp_path, 12, "out/root/Trainer/model/9/", blessed=True)  # named by another path
    _decision(tmp_path, 13, str(tmp_path / "Trainer" / "model" / "10"), blessed=True)  # another model
    _folder(tmp_path, *artifacts.PUSHED_MODEL, "15")  # no record (a run from before decision records)
    assert artifacts.gate_decision(model + "/") == ({"blessed": True, "model_uri": "out/root/Trainer/model/9/"}, newer)
    os.remove(newer)
    assert artifacts.gate_decision(model)[1] == older
    assert artifacts.gate_decision(str(tmp_path / "Trainer" / "model" / "11")) is None
    # Only a Trainer model artifact has decisions: a serving version's path is not one.
    assert artifacts.gate_decision(str(tmp_path / "Trainer" / "model_run" / "9")) is None
    assert artifacts.gate_decision(str(tmp_path / "serving" / "model" / "9")) is None


def test_a_damaged_decision_record_is_named_and_only_a_trainer_models_are_read(tmp_path):
    model = str(tmp_path / "Trainer" / "model" / "9")
    assert artifacts.gate_decision(model) is None  # no VersionedPusher ran
    damaged = _decision(tmp_path, 3, model)
    with open(damaged, "w") as f:
        f.write("[]")
    with pytest.raises(ValueError, match=re.escape(f"{damaged}: not a gate decision record (a JSON list")):
        artifacts.gate_decision(model)
    # A serving version's path is not a Trainer model: the root's records are not even read.
    assert artifacts.gate_decision(str(tmp_path / "serving" / "model" / "9")) is None


def test_the_newest_history_is_read_and_a_damaged_one_is_named(tmp_path):
    _folder(tmp_path, *artifacts.MODEL_RUN, "2", files=(artifacts.HISTORY_FILE,))
    newest = os.path.join(_folder(tmp_path, *artifacts.MODEL_RUN, "7", files=()), artifacts.HISTORY_FILE)
    with open(newest, "w") as f:
        f.write('{"loss": [0.5]}')
    _folder(tmp_path, *artifacts.MODEL_RUN, "9")  # a run without a history
    assert artifacts.newest_history(str(tmp_path)) == ({"loss": [0.5]}, newest)
    with open(newest, "w") as f:
        f.write('{"loss": [0.5')
    history, why = artifacts.newest_history(str(tmp_path))
    assert history is None and why.startswith(f"unreadable: {newest}: not a training history (invalid JSON")
    gone = str(tmp_path / "gone.json")
    assert artifacts.read_history(gone) == (None, f"unreadable: [Errno 2] No such file or directory: {gone!r}")


def test_a_pipeline_report_ignores_another_roots_artifacts_and_collects_errors(tmp_path, gate_reports, monkeypatch):
    root = str(tmp_path / "root")
    newest = _folder(root, *artifacts.EVALUATION, "6")
    mine = _folder(root, *artifacts.EVALUATION, "2")
    elsewhere = _folder(tmp_path, "other", *artifacts.EVALUATION, "1")
    asked = []
    monkeypatch.setattr(artifacts, "_evaluation_of_model", lambda root, model_uri: asked.append(model_uri))
    pipeline = artifacts.read_pipeline(root, evaluation_uri=elsewhere)
    assert pipeline["evaluation"]["uri"] == newest and asked == [""]
    assert "statistics" not in pipeline and "anomalies" not in pipeline  # missing pieces are absent, not None
    # A model trained under another root: this root's Evaluator judged another model, so nothing is shown.
    foreign = str(tmp_path / "other" / "Trainer" / "model" / "1")
    pipeline = artifacts.read_pipeline(root, model_uri=foreign, evaluation_uri=elsewhere)
    assert "evaluation" not in pipeline and asked == [""]
    assert pipeline["errors"] == [f"evaluation: not shown: the model was trained under another pipeline root "
                                  f"({foreign}), so this root's Evaluator judged another model"]
    assert artifacts.read_pipeline(root, evaluation_uri=mine)["evaluation"]["uri"] == mine

    def broken(pipeline_root):
        raise OSError("disk on fire\nsecond line")

    monkeypatch.setattr(artifacts, "read_statistics", broken)
    _folder(root, "StatisticsGen", "statistics", "1")
    pipeline = artifacts.read_pipeline(root)
    assert pipeline["errors"] == ["statistics: OSError: disk on fire"] and pipeline["evaluation"]["uri"] == newest
    not_a_root = str(tmp_path / "other" / "Evaluator")
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"no pipeline run under {not_a_root!r} (none of StatisticsGen, ExampleValidator, Evaluator)")):
        artifacts.read_pipeline(not_a_root)
    with pytest.raises(FileNotFoundError, match=re.escape(f"pipeline root {str(tmp_path / 'gone')!r} does not exist")):
        artifacts.read_pipeline(str(tmp_path / "gone"))


def test_a_model_uri_this_machine_cannot_place_is_not_taken_for_another_roots(tmp_path, gate_reports, monkeypatch):
    """The default pipeline root is relative (out/<task>/root): the push record names the model by the run's
    relative path. From another working directory, through a link to the root, or with a Kubeflow run's root
    copied here from its bucket, the model is not "trained under another pipeline root"."""
    root = tmp_path / "root"
    newest = _folder(root, *artifacts.EVALUATION, "6")
    asked = []
    monkeypatch.setattr(artifacts, "_evaluation_of_model", lambda root, model_uri: asked.append(model_uri))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for uri in ("out/cvn/root/Trainer/model/3", "gs://bucket/cvn/root/Trainer/model/3"):
        pipeline = artifacts.read_pipeline(str(root), model_uri=uri)
        assert pipeline["evaluation"]["uri"] == newest and pipeline["errors"] == [], uri
    assert asked == ["", ""]  # nor is it looked up in this root's ML Metadata
    model = _folder(root, "Trainer", "model", "3")
    os.symlink(root, tmp_path / "link")
    pipeline = artifacts.read_pipeline(str(tmp_path / "link"), model_uri=model)
    assert pipeline["evaluation"]["uri"] == newest.replace(str(root), str(tmp_path / "link"))
    assert pipeline["errors"] == [] and asked[-1] == model


def test_where_an_artifact_lies_is_told_by_whole_path_components(tmp_path, monkeypatch):
    root = tmp_path / "root"
    _folder(root, "Trainer", "model", "3")
    _folder(tmp_path, "root2", "Trainer", "model", "3")
    # A sibling root whose name begins with this one's is another root.
    assert artifacts.under_root(str(tmp_path / "root2" / "Trainer" / "model" / "3"), str(root)) is False
    monkeypatch.chdir(tmp_path)
    assert artifacts.under_root("root/Trainer/model/3", "root") is True
    assert artifacts.under_root("root2/Trainer/model/3", "root") is False  # relative, but found here
    monkeypatch.chdir(root)
    assert artifacts.under_root("gs://bucket/root/Trainer/model/3", str(root)) is None  # not a path here, wherever run


def _sqlite_without_ml_metadata(tmp_path) -> bytes:
    import sqlite3

    path = str(tmp_path / "another.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (text)")
    db.close()
    with open(path, "rb") as f:
        return f.read()


def test_a_runs_store_is_only_read_and_one_it_cannot_read_is_named_in_one_line(tmp_path, gate_reports):
    root = tmp_path / "root"
    newest = _folder(root, *artifacts.EVALUATION, "6")
    store = root / "metadata.sqlite"

    def report(content, model_uri=str(root / "Trainer" / "model" / "3")):
        store.write_bytes(content)
        pipeline = artifacts.read_pipeline(str(root), model_uri=model_uri)
        assert store.read_bytes() == content  # opened for writing, ML Metadata would lay its tables out in it
        return pipeline

    # An empty file is SQLite's new database, nothing recorded: as if there were no store.
    assert report(b"")["evaluation"]["uri"] == newest
    # Without a model to look up, the store is not opened at all.
    assert report(b"not a database", model_uri="")["errors"] == []
    # SQLite's reason, without the CREATE TABLE query ML Metadata's message goes on to quote.
    for content, reason in ((b"not a database", "file is not a database"),
                            (_sqlite_without_ml_metadata(tmp_path), "attempt to write a readonly database")):
        assert report(content)["errors"] == [f"evaluation: ValueError: ML Metadata's store {str(store)!r} cannot be read: "
                                             f"{reason}"]
