"""The Evaluator's deployment gate, built from the typed config (GateConfig).

Every task gates on the model's `gate_score` output at 0.5, which is the decision the model serves
(serving/export.py): P(covid) above the stored threshold (three-class: else the more probable
other class; gated COVID one-vs-rest). The confusion counts at that decision are reported too, so
the gate report and the model card can give sensitivity and specificity with Wilson confidence
intervals. A candidate is blessed only if sensitivity AND specificity (and AUC) clear their bars on
the held-out `test` split and its AUC does not regress against the latest blessed model.
"""
from __future__ import annotations

import json

import tensorflow_model_analysis as tfma
from google.protobuf import wrappers_pb2

from covid_cxr.data import features
from covid_cxr.serving import export

TEST_SPLIT = "test"
COUNT_METRICS = ("TruePositives", "FalsePositives", "TrueNegatives", "FalseNegatives")


def _overall_only(threshold: tfma.MetricThreshold) -> list:
    """The gate applies to the whole test split; slices are reported, not gated (a slice of five
    images must not veto a model, and must not pass one either)."""
    return [tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)]


def _lower_bound(value: float) -> list:
    return _overall_only(tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": value})))


def build_eval_config(config) -> tfma.EvalConfig:
    task, gate = config.task, config.gate
    no_regression = tfma.GenericChangeThreshold(
        direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -gate.max_auc_regression})
    auc_threshold = _overall_only(tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gate.min_auc}),
        change_threshold=no_regression if gate.compare_to_baseline else None,
    ))
    gated = [
        tfma.MetricConfig(class_name="Recall", per_slice_thresholds=_lower_bound(gate.min_sensitivity)),
        tfma.MetricConfig(class_name="Specificity", per_slice_thresholds=_lower_bound(gate.min_specificity)),
        tfma.MetricConfig(class_name="AUC", per_slice_thresholds=auc_threshold),
        tfma.MetricConfig(class_name="Precision"),
        tfma.MetricConfig(class_name="BinaryAccuracy"),
        tfma.MetricConfig(class_name="ConfusionMatrixPlot"),
        # Counts at the served decision (gate_score > 0.5): the confusion matrix behind the rates.
        *[tfma.MetricConfig(class_name=name) for name in COUNT_METRICS],
        tfma.MetricConfig(class_name="SensitivityAtSpecificity",
                          config=json.dumps({"specificity": gate.min_specificity})),
    ]
    if task.is_binary:
        metrics_specs = [tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="ExampleCount")] + gated)]
    else:
        metrics_specs = [
            tfma.MetricsSpec(metrics=[
                tfma.MetricConfig(class_name="ExampleCount"),
                tfma.MetricConfig(class_name="SparseCategoricalAccuracy"),
                tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
            ]),
            # COVID one-vs-rest: these carry the gate.
            tfma.MetricsSpec(metrics=gated, binarize=tfma.BinarizationOptions(class_ids={"values": [task.positive_index]})),
            # Macro averages over all classes, for the report.
            tfma.MetricsSpec(
                metrics=[tfma.MetricConfig(class_name=name) for name in ("Precision", "Recall", "AUC")],
                binarize=tfma.BinarizationOptions(class_ids={"values": list(range(task.num_classes))}),
                # TFMA needs the classes to average over spelled out as weights (equal: macro).
                aggregate=tfma.AggregationOptions(
                    macro_average=True, class_weights={i: 1.0 for i in range(task.num_classes)}),
            ),
        ]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=export.EXAMPLES_SIGNATURE,
            label_key=features.LABEL_INDEX,
            prediction_key=export.GATE_OUTPUT,
        )],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[f]) for f in config.gate.slice_features],
        metrics_specs=metrics_specs,
        # The model's compiled training metrics score its raw output, not the served decision, and
        # computing them makes TFMA rebuild the Keras model in every Beam bundle (~80% of the
        # Evaluator's time on the demo); the gate and the report use only the metrics above.
        options=tfma.Options(include_default_metrics=wrappers_pb2.BoolValue(value=False)),
    )
