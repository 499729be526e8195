"""Reading an Evaluator output: only the gate's own metrics, at the served decision, reach the report."""
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_model_analysis.proto import metrics_for_slice_pb2, validation_result_pb2

from covid_cxr.evaluation import gate_report


def _write_metrics(directory, values: dict) -> None:
    record = metrics_for_slice_pb2.MetricsForSlice()  # empty slice key: the whole test split
    for name, value in values.items():
        kv = record.metric_keys_and_values.add()
        kv.key.name = name
        kv.value.double_value.value = value
    with tf.io.TFRecordWriter(f"{directory}/metrics-00000-of-00001.tfrecord") as out:
        out.write(record.SerializeToString())


def test_compiled_training_metrics_in_an_older_evaluation_do_not_overwrite_the_served_ones(tmp_path):
    # As TFMA wrote them when the model's compiled metrics were included: binary_accuracy at the
    # served decision, then the model's own "accuracy" at 0.5 on its raw probability, and its loss.
    _write_metrics(tmp_path, {"binary_accuracy": 0.647, "recall": 1.0, "accuracy": 0.529, "loss": 6.53})
    report = gate_report.read_gate_report(str(tmp_path), blessed=False)
    assert report.metrics == {"accuracy": 0.647, "sensitivity": 1.0}


def _record(slice_column=None, slice_value=None):
    record = metrics_for_slice_pb2.MetricsForSlice()
    if slice_column:
        key = record.slice_key.single_slice_keys.add()
        key.column, key.bytes_value = slice_column, slice_value.encode()
    return record


def _add(record, name, value, model_name="", is_diff=False, class_id=None):
    kv = record.metric_keys_and_values.add()
    kv.key.name, kv.key.model_name, kv.key.is_diff = name, model_name, is_diff
    if class_id is not None:
        kv.key.sub_key.class_id.value = class_id
    kv.value.double_value.value = value
    return kv.key


def _write(directory, records, name="metrics"):
    with tf.io.TFRecordWriter(f"{directory}/{name}-00000-of-00001.tfrecord") as out:
        for record in records:
            out.write(record.SerializeToString())


def test_with_a_baseline_the_candidates_own_values_are_reported_and_its_changes_apart(tmp_path):
    # TFMA writes the candidate's values, the baseline's, and the candidate's change against it.
    record = _record()
    for name, candidate, baseline in (("recall", 0.9, 0.5), ("true_positives", 9, 5), ("false_positives", 3, 1),
                                      ("true_negatives", 27, 29), ("false_negatives", 1, 5)):
        _add(record, name, candidate, model_name="candidate")
        _add(record, name, baseline, model_name="baseline")
        _add(record, name, candidate - baseline, model_name="candidate", is_diff=True)
    _write(tmp_path, [record])
    report = gate_report.read_gate_report(str(tmp_path), blessed=True)
    assert report.metrics["sensitivity"] == 0.9 and report.metrics["sensitivity change"] == pytest.approx(0.4)
    assert report.metrics["true positives"] == 9 and report.metrics["true positives change"] == 4
    assert report.confusion_counts() == {"tp": 9, "fp": 3, "tn": 27, "fn": 1}
    assert report.intervals()["sensitivity"]["k"] == 9


def test_without_all_four_counts_there_are_no_intervals():
    report = gate_report.GateReport(True, {"true positives": 9.0, "false positives": 3.0, "true negatives": 27.0}, [], {})
    assert report.confusion_counts() is None and report.intervals() == {}


def test_failures_name_their_bar_and_slice_and_slices_are_kept_apart_from_the_whole_split(tmp_path):
    overall, cohen = _record(), _record("source", "cohen")
    _add(overall, "specificity", 0.0)  # a value of 0 is a value
    covid_sensitivity = _add(overall, "recall", 0.8, class_id=2)
    _add(cohen, "auc", 0.7)
    auc_change = _add(cohen, "auc", -0.02, is_diff=True)
    _write(tmp_path, [overall, cohen])
    validation = validation_result_pb2.ValidationResult(validation_ok=False)
    for record, key, value, threshold in (
            (overall, covid_sensitivity, 0.8, dict(value_threshold=dict(lower_bound=0.9))),
            (cohen, auc_change, -0.02, dict(change_threshold=dict(absolute=-0.01)))):
        per_slice = validation.metric_validations_per_slice.add()
        per_slice.slice_key.CopyFrom(record.slice_key)
        failure = per_slice.failures.add()
        failure.metric_key.CopyFrom(key)
        failure.metric_value.double_value.value = value
        json_format.ParseDict(threshold, failure.metric_threshold)
    _write(tmp_path, [validation], name="validations")
    report = gate_report.read_gate_report(str(tmp_path), blessed=False, classes=["normal", "pneumonia", "covid"])
    assert report.headline() == "NOT BLESSED"
    assert report.metrics == {"specificity": 0.0, "sensitivity (covid vs rest)": 0.8}
    assert report.slices == {"source:cohen": {"AUC": 0.7, "AUC change": -0.02}}
    assert report.failures == [
        "sensitivity (covid vs rest) 0.800 is below the required minimum 0.900",
        "AUC change -0.020 is below the allowed change against the last blessed model (-0.010) (slice source:cohen)"]


def test_a_test_split_without_one_side_says_so_instead_of_printing_nan(tmp_path):
    record = _record()
    for name, value in (("true_positives", 6), ("false_negatives", 0), ("true_negatives", 0),
                        ("false_positives", 0), ("auc", 0.0)):
        _add(record, name, value)
    specificity = _add(record, "specificity", float("nan"))
    _write(tmp_path, [record])
    validation = validation_result_pb2.ValidationResult(validation_ok=False)
    failure = validation.metric_validations_per_slice.add().failures.add()
    failure.metric_key.CopyFrom(specificity)
    failure.metric_value.double_value.value = float("nan")
    json_format.ParseDict(dict(value_threshold=dict(lower_bound=0.8)), failure.metric_threshold)
    _write(tmp_path, [validation], name="validations")
    report = gate_report.read_gate_report(str(tmp_path), blessed=False)
    assert report.missing_side() == "non-COVID" and report.unmeasurable() == {"specificity", "AUC"}
    assert report.failures == ["specificity could not be measured on the test split, so it cannot meet the "
                               "required minimum 0.800"]
    assert gate_report.GateReport(False, {"true positives": 0, "false negatives": 0, "true negatives": 3,
                                          "false positives": 1}, [], {}).missing_side() == "COVID"
    assert gate_report.GateReport(False, {"true positives": 1, "false negatives": 0, "true negatives": 3,
                                          "false positives": 1}, [], {}).missing_side() is None


def test_an_auc_gate_failure_on_a_one_sided_test_split_is_not_given_a_value(tmp_path):
    record = _record()
    for name, value in (("true_positives", 6), ("false_negatives", 0), ("true_negatives", 0), ("false_positives", 0)):
        _add(record, name, value)
    auc = _add(record, "auc", 0.0)  # TFMA's AUC with one class present
    _write(tmp_path, [record])
    validation = validation_result_pb2.ValidationResult(validation_ok=False)
    failure = validation.metric_validations_per_slice.add().failures.add()
    failure.metric_key.CopyFrom(auc)
    failure.metric_value.double_value.value = 0.0
    json_format.ParseDict(dict(value_threshold=dict(lower_bound=0.9)), failure.metric_threshold)
    _write(tmp_path, [validation], name="validations")
    report = gate_report.read_gate_report(str(tmp_path), blessed=False)
    assert report.failures == ["AUC could not be measured on the test split, so it cannot meet the required minimum 0.900"]


def test_three_class_metrics_are_unmeasurable_only_for_the_class_the_split_lacks():
    nan = float("nan")
    counts = {"true positives": 5, "false negatives": 1, "true negatives": 20, "false positives": 2}
    no_pneumonia = {**counts, "sensitivity (covid vs rest)": 0.83, "AUC (covid vs rest)": 0.95,
                    "sensitivity (normal vs rest)": 0.9, "AUC (normal vs rest)": 0.91,
                    "sensitivity (pneumonia vs rest)": nan, "AUC (pneumonia vs rest)": 0.0,
                    "macro AUC": 0.62, "sensitivity at the gate's specificity": 0.8}
    assert gate_report.GateReport(False, no_pneumonia, [], {}).unmeasurable() == {
        "sensitivity (pneumonia vs rest)", "AUC (pneumonia vs rest)", "macro AUC"}
    no_covid = {**no_pneumonia, "true positives": 0, "false negatives": 0, "sensitivity (pneumonia vs rest)": 0.7,
                "AUC (pneumonia vs rest)": 0.88, "sensitivity (covid vs rest)": nan, "AUC (covid vs rest)": 0.0}
    assert gate_report.GateReport(False, no_covid, [], {}).unmeasurable() == {
        "sensitivity (covid vs rest)", "AUC (covid vs rest)", "macro AUC", "sensitivity at the gate's specificity"}
