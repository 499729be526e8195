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


def _write_failures(directory, failures) -> None:
    """The Evaluator's validations file: one failed bar per (record whose slice it is on, metric key,
    value, threshold as a dict)."""
    validation = validation_result_pb2.ValidationResult(validation_ok=False)
    for record, key, value, threshold in failures:
        per_slice = validation.metric_validations_per_slice.add()
        per_slice.slice_key.CopyFrom(record.slice_key)
        failure = per_slice.failures.add()
        failure.metric_key.CopyFrom(key)
        failure.metric_value.double_value.value = value
        json_format.ParseDict(threshold, failure.metric_threshold)
    _write(directory, [validation], name="validations")


def _one_sided(record):
    """Six COVID films found, no non-COVID film: the counts of a test split with one side only."""
    for name, value in (("true_positives", 6), ("false_negatives", 0), ("true_negatives", 0), ("false_positives", 0)):
        _add(record, name, value)


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
    _write_failures(tmp_path, [(overall, covid_sensitivity, 0.8, dict(value_threshold=dict(lower_bound=0.9))),
                               (cohen, auc_change, -0.02, dict(change_threshold=dict(absolute=-0.01)))])
    report = gate_report.read_gate_report(str(tmp_path), blessed=False, classes=["normal", "pneumonia", "covid"])
    assert report.headline() == "NOT BLESSED"
    assert report.metrics == {"specificity": 0.0, "sensitivity (covid vs rest)": 0.8}
    assert report.slices == {"source:cohen": {"AUC": 0.7, "AUC change": -0.02}}
    assert report.failures == [
        "sensitivity (covid vs rest) 0.800 is below the required minimum 0.900",
        "AUC change -0.020 is below the allowed change against the last blessed model (-0.010) (slice source:cohen)"]


def test_a_test_split_without_one_side_says_so_instead_of_printing_nan(tmp_path):
    record = _record()
    _one_sided(record)
    _add(record, "auc", 0.0)
    specificity = _add(record, "specificity", float("nan"))
    _write(tmp_path, [record])
    _write_failures(tmp_path, [(record, specificity, float("nan"), dict(value_threshold=dict(lower_bound=0.8)))])
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
    _one_sided(record)
    auc = _add(record, "auc", 0.0)  # TFMA's AUC with one class present
    _write(tmp_path, [record])
    _write_failures(tmp_path, [(record, auc, 0.0, dict(value_threshold=dict(lower_bound=0.9)))])
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


_COUNTS = {"true positives": 9, "false negatives": 1, "true negatives": 27, "false positives": 3}


def test_intervals_give_sensitivity_and_specificity_from_counts_rounded_to_whole_films():
    # TFMA's counts are floats, and a sum of weights may land a hair under the whole number
    report = gate_report.GateReport(True, {**_COUNTS, "true positives": 8.9999999, "true negatives": 27.0000001}, [], {})
    assert report.confusion_counts() == {"tp": 9, "fn": 1, "tn": 27, "fp": 3}
    intervals = report.intervals()
    assert set(intervals) == {"sensitivity", "specificity"}
    assert (intervals["sensitivity"]["k"], intervals["specificity"]["k"]) == (9, 27)


@pytest.mark.parametrize("tp, fn, tn, fp, missing", [
    (0, 2, 5, 1, None), (2, 0, 0, 3, None), (0, 0, 5, 1, "COVID"), (2, 1, 0, 0, "non-COVID"), (1, 0, 1, 0, None)])
def test_a_side_is_missing_only_when_the_split_has_no_film_of_it(tp, fn, tn, fp, missing):
    counts = {"true positives": tp, "false negatives": fn, "true negatives": tn, "false positives": fp}
    assert gate_report.GateReport(False, counts, [], {}).missing_side() == missing


def test_changes_against_the_baseline_are_not_marked_unmeasurable_for_want_of_a_side_or_a_sensitivity():
    nan_change = {"sensitivity change": float("nan"), "AUC change": 0.1}  # only a NaN is, as it is
    assert gate_report.GateReport(False, nan_change, [], {}).unmeasurable() == {"sensitivity change"}
    no_negatives = {**_COUNTS, "true negatives": 0, "false positives": 0, "AUC": 0.0, "AUC change": -0.3,
                    "macro AUC": 0.5, "macro AUC change": 0.1, "sensitivity at the gate's specificity": 0.0,
                    "sensitivity at the gate's specificity change": 0.0}
    assert gate_report.GateReport(False, no_negatives, [], {}).unmeasurable() == {
        "AUC", "macro AUC", "sensitivity at the gate's specificity"}


def test_a_three_class_split_without_non_covid_films_cannot_measure_the_covid_auc():
    all_covid = {**_COUNTS, "true negatives": 0, "false positives": 0, "sensitivity (covid vs rest)": 0.9,
                 "AUC (covid vs rest)": 0.0, "AUC (normal vs rest)": 0.8}
    assert "AUC (covid vs rest)" in gate_report.GateReport(False, all_covid, [], {}).unmeasurable()


def test_a_binary_auc_without_meaning_does_not_take_a_macro_auc_with_it():
    metrics = {"sensitivity": float("nan"), "AUC": 0.0, "macro AUC": 0.7}  # no counts: no side known missing
    assert gate_report.GateReport(False, metrics, [], {}).unmeasurable() == {"sensitivity", "AUC"}


def _key(name, class_id=None, macro=False, is_diff=False):
    key = metrics_for_slice_pb2.MetricKey(name=name, is_diff=is_diff)
    if class_id is not None:
        key.sub_key.class_id.value = class_id
    if macro:
        key.aggregation_type.macro_average = True
    return key


@pytest.mark.parametrize("key, expected", [
    (_key("recall", class_id=3), "sensitivity (class 3 vs rest)"),  # a class the task does not name
    (_key("auc", macro=True), "macro AUC"),
    (_key("auc", macro=True, is_diff=True), "macro AUC change"),
    (_key("recall", class_id=0), "sensitivity (normal vs rest)"),
    (_key("sensitivity_at_specificity"), "sensitivity at the gate's specificity"),  # what unmeasurable() looks for
])
def test_metric_names(key, expected):
    assert gate_report.metric_name(key, ["normal", "pneumonia", "covid"]) == expected


def test_slice_names_join_their_columns_and_show_numeric_values():
    key = metrics_for_slice_pb2.SliceKey()
    for column, field, value in (("source", "bytes_value", b"cohen"), ("view", "int64_value", 3),
                                 ("age", "float_value", 0.5)):
        single = key.single_slice_keys.add(column=column)
        setattr(single, field, value)
    assert gate_report._slice_name(key) == "source:cohen, view:3, age:0.5"
    assert gate_report._slice_name(metrics_for_slice_pb2.SliceKey()) == "overall"


def test_a_metric_without_a_plain_number_is_left_out(tmp_path):
    record = _record()
    _add(record, "recall", 0.9)
    kv = record.metric_keys_and_values.add()
    kv.key.name = "precision"
    kv.value.bytes_value = b"not a number"
    _write(tmp_path, [record])
    assert gate_report.read_gate_report(str(tmp_path), blessed=True).metrics == {"sensitivity": 0.9}


def test_a_slice_failure_shows_its_value_even_when_the_whole_split_cannot_measure_that_metric(tmp_path):
    overall, cohen = _record(), _record("source", "cohen")
    _one_sided(overall)
    _add(overall, "auc", 0.0)
    cohen_auc = _add(cohen, "auc", 0.3)
    _write(tmp_path, [overall, cohen])
    _write_failures(tmp_path, [(cohen, cohen_auc, 0.3, dict(value_threshold=dict(lower_bound=0.9)))])
    report = gate_report.read_gate_report(str(tmp_path), blessed=False)
    assert "AUC" in report.unmeasurable()
    assert report.failures == ["AUC 0.300 is below the required minimum 0.900 (slice source:cohen)"]


@pytest.mark.parametrize("threshold, bar", [
    (dict(value_threshold=dict(upper_bound=0.1)), "its threshold"),
    (dict(value_threshold=dict(lower_bound=0.85)), "the required minimum 0.850"),
    (dict(change_threshold=dict(absolute=0.01)), "the allowed change against the last blessed model (+0.010)"),
])
def test_a_failure_names_its_bar(threshold, bar):
    failure = validation_result_pb2.ValidationFailure(metric_key=_key("recall"))
    failure.metric_value.double_value.value = 0.81234
    json_format.ParseDict(threshold, failure.metric_threshold)
    assert gate_report._failure_sentence(failure) == f"sensitivity 0.812 is below {bar}"


def test_a_failure_without_a_number_is_not_given_one_on_any_slice():
    failure = validation_result_pb2.ValidationFailure(metric_key=_key("specificity"))
    failure.metric_value.double_value.value = float("nan")
    json_format.ParseDict(dict(value_threshold=dict(lower_bound=0.8)), failure.metric_threshold)
    assert gate_report._failure_sentence(failure) == ("specificity could not be measured on the test split, so it "
                                                      "cannot meet the required minimum 0.800")
