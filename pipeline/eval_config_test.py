"""The deployment gate, run for real with TFMA on small exported models (no pipeline).

Models with a known decision make the outcome certain: a stored threshold near 0 calls every image
COVID (sensitivity 1, specificity 0), so the same model must pass a low bar and fail a specificity
bar, and the counts must be exactly the class sizes.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma

from covid_cxr.data import features
from covid_cxr.evaluation import gate_report
from covid_cxr.pipeline import config as cfg
from covid_cxr.pipeline import eval_config
from covid_cxr.serving import export, testing



@pytest.fixture(scope="module")
def calls_everything_covid(tmp_path_factory):
    first = testing.tiny_model(tmp_path_factory)  # reuse its transform graph: no second Beam run
    base = str(tmp_path_factory.mktemp("all-covid"))
    return testing.build_tiny_model(base, threshold=1e-6, transform_dir=first.transform_dir)


@pytest.fixture(scope="module")
def three_class_model(tmp_path_factory):
    """About half the films called COVID (its threshold halves its own scores), all with P(covid) near
    1/3, so below another class's probability: the served label differs from the argmax."""
    return testing.tiny_model(tmp_path_factory, "three-class")


def _gate(tiny, tmp_path, **gate):
    """Runs TFMA with the pipeline's EvalConfig; returns the GateReport the pusher would read."""
    overrides = {"model.task": tiny.task.name, **{f"gate.{k}": str(v) for k, v in gate.items()}}
    config = eval_config.build_eval_config(cfg.load_config("quick", overrides=overrides))
    out = str(tmp_path / "evaluation")
    tfma.run_model_analysis(
        eval_shared_model=tfma.default_eval_shared_model(eval_saved_model_path=tiny.model_dir, eval_config=config,
                                                   rubber_stamp=True),  # no baseline: a first run
        eval_config=config,
        data_location=os.path.join(tiny.data_dir, features.TFRECORD_PATTERN),
        output_path=out,
    )
    blessed = tfma.load_validation_result(out).validation_ok
    return gate_report.read_gate_report(out, blessed, tiny.task.classes)


def _written_metric_names(evaluation_dir) -> set:
    return {kv.key.name for m in tfma.load_metrics(evaluation_dir) for kv in m.metric_keys_and_values}


def _assert_report_names_every_metric(written: set):
    # gate_report shows only metrics it has a plain name for: a metric added to the EvalConfig without
    # one would be computed, maybe gated on, and missing from the report the pusher's users read.
    unnamed = written - set(gate_report.PLAIN_NAMES)
    assert not unnamed, f"add these to gate_report.PLAIN_NAMES: {sorted(unnamed)}"


def _labels(serialized) -> np.ndarray:
    return np.array([tf.train.Example.FromString(r).features.feature[features.LABEL_INDEX].int64_list.value[0]
                     for r in serialized])


def _class_sizes(tiny):
    return np.bincount(_labels(testing.read_records(tiny.data_dir)), minlength=tiny.task.num_classes)


def test_the_gate_judges_the_stored_threshold_and_blesses_only_above_the_bars(calls_everything_covid, tmp_path):
    negatives, positives = _class_sizes(calls_everything_covid)
    refused = _gate(calls_everything_covid, tmp_path / "strict", min_sensitivity=0.9, min_specificity=0.5)
    assert not refused.blessed
    assert refused.metrics["sensitivity"] == pytest.approx(1.0)
    assert refused.metrics["specificity"] == pytest.approx(0.0)
    assert refused.confusion_counts() == {"tp": positives, "fn": 0, "tn": 0, "fp": negatives}
    assert refused.intervals()["specificity"]["k"] == 0
    assert len(refused.failures) == 1
    # TFMA measured only the served decision, not the model's compiled training metrics on its raw
    # output (computing them made it rebuild the Keras model in every Beam bundle)...
    written = _written_metric_names(str(tmp_path / "strict" / "evaluation"))
    assert "loss" not in written, sorted(written)
    _assert_report_names_every_metric(written)
    # ...whose "accuracy" (at 0.5 on the raw probability) used to stand in the report for the served one.
    assert refused.metrics["accuracy"] == pytest.approx(positives / (positives + negatives))
    assert refused.failures[0].startswith("specificity 0.000 is below the required minimum 0.500")

    accepted = _gate(calls_everything_covid, tmp_path / "lenient", min_sensitivity=0.9, min_specificity=0.0)
    assert accepted.blessed and not accepted.failures

    # gate.min_auc is a bar too: just above the AUC this model reaches, the same model is refused.
    auc = accepted.metrics["AUC"]
    assert auc < 0.99
    too_high = _gate(calls_everything_covid, tmp_path / "auc", min_sensitivity=0.0, min_specificity=0.0,
                     min_auc=round(auc + 0.01, 4))
    assert not too_high.blessed
    assert [f.split(" ")[0] for f in too_high.failures] == ["AUC"], too_high.failures


def test_three_class_gate_counts_the_served_label_covid_one_vs_rest(three_class_model, tmp_path):
    model = tf.saved_model.load(three_class_model.model_dir)
    serialized = testing.read_records(three_class_model.data_dir)
    served = model.signatures[export.EXAMPLES_SIGNATURE](examples=tf.constant(serialized))
    predicted_covid = served["label_index"].numpy() == three_class_model.task.positive_index
    np.testing.assert_array_equal(predicted_covid, served["covid_probability"].numpy() > three_class_model.threshold)
    is_covid = _labels(serialized) == three_class_model.task.positive_index
    assert 0 < predicted_covid.sum() < len(predicted_covid)  # both decisions occur: tn and fn can be counted
    # gate_score is above 0.5 exactly in the served class
    gate = served[export.GATE_OUTPUT].numpy()
    assert ((gate > 0.5) == (np.arange(3) == served["label_index"].numpy()[:, None])).all()

    report = _gate(three_class_model, tmp_path, min_sensitivity=0.0, min_specificity=0.0)
    assert report.blessed
    _assert_report_names_every_metric(_written_metric_names(str(tmp_path / "evaluation")))
    assert report.confusion_counts() == {
        "tp": int((predicted_covid & is_covid).sum()), "fn": int((~predicted_covid & is_covid).sum()),
        "tn": int((~predicted_covid & ~is_covid).sum()), "fp": int((predicted_covid & ~is_covid).sum())}
    for name in ("sensitivity (covid vs rest)", "specificity (covid vs rest)", "macro AUC", "accuracy"):
        assert name in report.metrics, sorted(report.metrics)


def _metric(config, spec_index, name):
    [metric] = [m for m in config.metrics_specs[spec_index].metrics if m.class_name == name]
    return metric


def test_the_auc_may_drop_against_the_baseline_by_at_most_the_allowed_amount_and_only_overall_is_gated():
    config = eval_config.build_eval_config(cfg.load_config("quick", overrides={"gate.max_auc_regression": "0.02"}))
    [auc] = _metric(config, 0, "AUC").per_slice_thresholds
    change = auc.threshold.change_threshold
    # change = candidate AUC - baseline AUC must be >= -0.02
    assert change.direction == tfma.MetricDirection.HIGHER_IS_BETTER
    assert change.absolute.value == pytest.approx(-0.02)
    # Must improve by 0.05 when the allowed regression is negative.
    strict = eval_config.build_eval_config(cfg.load_config("quick", overrides={"gate.max_auc_regression": "-0.05"}))
    assert _metric(strict, 0, "AUC").per_slice_thresholds[0].threshold.change_threshold.absolute.value == pytest.approx(0.05)
    # No Resolver baseline (open-source Kubeflow): no change threshold, the value bars still apply.
    alone = eval_config.build_eval_config(cfg.load_config("quick", overrides={"gate.compare_to_baseline": "false"}))
    assert not _metric(alone, 0, "AUC").per_slice_thresholds[0].threshold.HasField("change_threshold")
    # Every gated bar applies to the whole test split only, never to a slice.
    gated = [m for m in config.metrics_specs[0].metrics if m.per_slice_thresholds]
    assert {m.class_name for m in gated} == {"Recall", "Specificity", "AUC"}
    for metric in gated:
        for threshold in metric.per_slice_thresholds:
            assert list(threshold.slicing_specs) == [tfma.SlicingSpec()], metric.class_name


def test_the_reported_sensitivity_at_specificity_uses_the_specificity_bar():
    config = eval_config.build_eval_config(cfg.load_config("quick", overrides={"gate.min_specificity": "0.85",
                                                                                "gate.min_sensitivity": "0.7"}))
    assert json.loads(_metric(config, 0, "SensitivityAtSpecificity").config) == {"specificity": 0.85}
    three = eval_config.build_eval_config(cfg.load_config("quick", overrides={"model.task": "three-class"}))
    task = features.get_task("three-class")
    assert list(three.metrics_specs[1].binarize.class_ids.values) == [task.positive_index]  # COVID one-vs-rest gates


@pytest.mark.parametrize("task, gated_spec", [("covid-vs-normal", 0), ("three-class", 1)])
def test_each_bar_is_its_own_gate_setting_on_the_served_decision(task, gated_spec):
    # The everything-COVID model above has sensitivity 1: it cannot tell the sensitivity bar from another.
    config = cfg.load_config("quick", overrides={"model.task": task, "gate.min_sensitivity": "0.91",
                                                  "gate.min_specificity": "0.82", "gate.min_auc": "0.73"})
    built = eval_config.build_eval_config(config)
    bars = {m.class_name: m.per_slice_thresholds[0].threshold.value_threshold.lower_bound.value
            for m in built.metrics_specs[gated_spec].metrics if m.per_slice_thresholds}
    assert bars == pytest.approx({"Recall": 0.91, "Specificity": 0.82, "AUC": 0.73})
    # Judged on the gate_score output (the served label) against the records' label index, sliced as configured.
    [spec] = built.model_specs
    assert (spec.signature_name, spec.label_key, spec.prediction_key) == (
        export.EXAMPLES_SIGNATURE, features.LABEL_INDEX, export.GATE_OUTPUT)
    assert [list(s.feature_keys) for s in built.slicing_specs] == [[]] + [[f] for f in config.gate.slice_features]
    assert config.gate.slice_features


# What the gate report, the CLI and the model card show besides the bars (gate_report.PLAIN_NAMES):
# the confusion counts, precision, accuracy and the number of films; the plots are TFMA's own view.
REPORTED = ["ExampleCount", "Recall", "Specificity", "AUC", "Precision", "BinaryAccuracy", "ConfusionMatrixPlot",
            *eval_config.COUNT_METRICS, "SensitivityAtSpecificity"]


def _names(spec) -> list:
    return sorted(m.class_name for m in spec.metrics)


@pytest.mark.parametrize("task", ["covid-vs-normal", "covid-vs-noncovid"])
def test_a_binary_task_measures_everything_the_report_shows_and_nothing_the_model_compiled(task):
    built = eval_config.build_eval_config(cfg.load_config("quick", overrides={"model.task": task}))
    [spec] = built.metrics_specs
    assert _names(spec) == sorted(REPORTED)
    assert not spec.HasField("binarize") and not spec.HasField("aggregate")
    assert eval_config.COUNT_METRICS == ("TruePositives", "FalsePositives", "TrueNegatives", "FalseNegatives")
    # The model's compiled metrics score its raw output (and made TFMA rebuild it in every Beam bundle).
    assert built.options.HasField("include_default_metrics") and not built.options.include_default_metrics.value


def test_three_class_measures_covid_vs_rest_like_a_binary_task_and_macro_averages_over_all_classes():
    built = eval_config.build_eval_config(cfg.load_config("quick", overrides={"model.task": "three-class"}))
    overall, covid, macro = built.metrics_specs
    assert _names(overall) == ["ExampleCount", "MultiClassConfusionMatrixPlot", "SparseCategoricalAccuracy"]
    assert _names(covid) == sorted(set(REPORTED) - {"ExampleCount"})
    assert _names(macro) == ["AUC", "Precision", "Recall"]
    assert list(macro.binarize.class_ids.values) == [0, 1, 2]
    assert macro.aggregate.macro_average and dict(macro.aggregate.class_weights) == {0: 1.0, 1: 1.0, 2: 1.0}
    assert not built.options.include_default_metrics.value
