"""Reading a pipeline root's newest artifacts (fake roots laid out as LocalDagRunner writes them)."""
import json
import os

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
    assert artifacts.newest_execution(str(tmp_path), "Trainer", "model") == str(tmp_path / "Trainer" / "model" / "10")
    assert artifacts.newest_execution(str(tmp_path), "Evaluator", "evaluation") is None


def test_a_trained_run_needs_both_the_model_and_the_examples(tmp_path):
    model = _folder(tmp_path, "Trainer", "model", "4")
    with pytest.raises(ValueError, match="no Trainer model or ImportExampleGen examples"):
        artifacts.trained_run(str(tmp_path))
    examples = _folder(tmp_path, "ImportExampleGen", "examples", "1")
    assert artifacts.trained_run(str(tmp_path)) == (model, examples)


def _string_feature(dataset, name, values, missing=0):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    feature = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.STRING)
    feature.path.step.append(name)
    feature.string_stats.unique = len(values)
    feature.string_stats.common_stats.num_missing = missing
    feature.string_stats.common_stats.num_non_missing = 10 - missing
    for i, value in enumerate(values):
        feature.string_stats.top_values.add(value=value, frequency=len(values) - i)


def test_statistics_list_at_most_eight_values_of_a_categorical_feature_and_none_of_ids():
    from tensorflow_metadata.proto.v0 import statistics_pb2

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    dataset = stats.datasets.add(num_examples=10)
    _string_feature(dataset, "source", [f"s{i}" for i in range(artifacts.MAX_CATEGORIES)], missing=4)
    _string_feature(dataset, "view", [f"v{i}" for i in range(artifacts.MAX_CATEGORIES + 1)])
    _string_feature(dataset, "patient_id", ["p1", "p2"])
    empty = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.INT)
    empty.path.step.append("age")
    empty.num_stats.mean = 0.0  # no example had the feature: no count to divide by
    summary = artifacts.summarize_statistics(stats)["features"]
    assert summary["source"]["top_values"] == {f"s{i}": artifacts.MAX_CATEGORIES - i for i in range(artifacts.MAX_TOP_VALUES)}
    assert summary["source"]["missing"] == 4 and summary["source"]["missing_fraction"] == 0.4
    assert "top_values" not in summary["view"] and summary["view"]["unique"] == artifacts.MAX_CATEGORIES + 1
    assert "top_values" not in summary["patient_id"]
    assert summary["age"]["missing_fraction"] == 0.0 and summary["age"]["type"] == "num"
    assert artifacts.summarize_statistics(statistics_pb2.DatasetFeatureStatisticsList()) == {"num_examples": 0, "features": {}}


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
    assert artifacts.read_evaluation(root)["uri"] == newest and not artifacts.read_evaluation(root)["blessed"]
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


def test_a_pipeline_report_ignores_another_roots_artifacts_and_collects_errors(tmp_path, gate_reports, monkeypatch):
    root = str(tmp_path / "root")
    newest = _folder(root, *artifacts.EVALUATION, "6")
    mine = _folder(root, *artifacts.EVALUATION, "2")
    elsewhere = _folder(tmp_path, "other", *artifacts.EVALUATION, "1")
    asked = []
    monkeypatch.setattr(artifacts, "_evaluation_of_model", lambda root, model_uri: asked.append(model_uri))
    assert artifacts.read_pipeline(root, evaluation_uri=elsewhere)["evaluation"]["uri"] == newest and asked == [""]
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
    with pytest.raises(FileNotFoundError, match="no pipeline run under"):
        artifacts.read_pipeline(str(tmp_path / "other" / "Evaluator"))


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
    model = _folder(root, "Trainer", "model", "3")
    os.symlink(root, tmp_path / "link")
    pipeline = artifacts.read_pipeline(str(tmp_path / "link"), model_uri=model)
    assert pipeline["evaluation"]["uri"] == newest.replace(str(root), str(tmp_path / "link"))
    assert pipeline["errors"] == [] and asked[-1] == model
