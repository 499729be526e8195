"""Reads an Evaluator output (TFMA metrics + validation result) into plain words and numbers."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import tensorflow as tf
import tensorflow_model_analysis as tfma

from covid_cxr.evaluation import metrics as ci_metrics

# TFMA metric names -> what the users of this product call them.
PLAIN_NAMES = {
    "recall": "sensitivity",
    "specificity": "specificity",
    "auc": "AUC",
    "precision": "precision",
    "binary_accuracy": "accuracy",
    "sparse_categorical_accuracy": "accuracy",
    "example_count": "examples",
    "sensitivity_at_specificity": "sensitivity at the gate's specificity",
    "true_positives": "true positives",
    "false_positives": "false positives",
    "true_negatives": "true negatives",
    "false_negatives": "false negatives",
}
COUNTS = {"true positives": "tp", "false positives": "fp", "true negatives": "tn", "false negatives": "fn"}


@dataclasses.dataclass
class GateReport:
    blessed: bool
    metrics: dict  # overall slice: {"sensitivity": 0.93, ...}; diffs vs baseline under "<name> change"
    failures: list  # plain sentences, empty when blessed
    slices: dict  # {"source:cohen": {"sensitivity": ...}, ...}

    def headline(self) -> str:
        return "BLESSED" if self.blessed else "NOT BLESSED"

    def confusion_counts(self) -> Optional[dict]:
        """{"tp", "fp", "tn", "fn"} at the served decision on the whole test split, or None."""
        return _counts(self.metrics)

    def missing_side(self) -> Optional[str]:
        """Which side of the served decision the test split has no films of ("COVID", "non-COVID");
        None when it has both (or without counts)."""
        return _missing_side(self.metrics)

    def unmeasurable(self) -> set:
        """The overall metrics that mean nothing on this test split (see :func:`_unmeasurable`)."""
        return _unmeasurable(self.metrics)

    def intervals(self) -> dict:
        """Sensitivity and specificity with Wilson 95% intervals from the counts ({} without them)."""
        c = self.confusion_counts()
        if c is None:
            return {}
        rates = ci_metrics.binary_metrics_from_counts(**c)
        return {name: rates[name] for name in ("sensitivity", "specificity")}


def _counts(metrics: dict) -> Optional[dict]:
    found = {}
    for key, value in metrics.items():
        for count, short in COUNTS.items():
            if key.startswith(count) and "change" not in key:
                found[short] = int(round(value))
    return found if len(found) == 4 else None


def _missing_side(metrics: dict) -> Optional[str]:
    c = _counts(metrics)
    if c is None:
        return None
    if c["tp"] + c["fn"] == 0:
        return "COVID"
    return "non-COVID" if c["tn"] + c["fp"] == 0 else None


def _unmeasurable(metrics: dict) -> set:
    """Names of ``metrics`` without meaning on this test split, which TFMA reports as NaN or as 0: a
    rate with no films to count, the AUC of a class (or side) the split holds no films of, and the
    sensitivity at the gate's specificity, or the macro AUC, of a split that lacks one."""
    one_sided = _missing_side(metrics) is not None
    out = {key for key, value in metrics.items() if isinstance(value, float) and math.isnan(value)}
    for key in metrics:
        if key.startswith("AUC") and not key.endswith("change"):
            per_class = key[len("AUC"):]  # "" or " (pneumonia vs rest)"
            if f"sensitivity{per_class}" in out or (one_sided and per_class in ("", " (covid vs rest)")):
                out.add(key)
    wanted = ("sensitivity at", "macro AUC") if one_sided else ("macro AUC",) if any(
        key.startswith("AUC (") for key in out) else ()
    return out | {key for key in metrics if wanted and key.startswith(wanted) and not key.endswith("change")}


def metric_name(key, classes: Optional[Sequence[str]] = None) -> str:
    name = PLAIN_NAMES.get(key.name, key.name)
    if key.HasField("sub_key") and key.sub_key.HasField("class_id"):
        class_id = key.sub_key.class_id.value
        # Only three-class binarizes: COVID one-vs-rest (the gate) and per-class for macro averages.
        label = classes[class_id] if classes and class_id < len(classes) else f"class {class_id}"
        name += f" ({label} vs rest)"
    if key.HasField("aggregation_type") and key.aggregation_type.macro_average:
        name = "macro " + name
    if key.is_diff:
        name += " change"
    return name


def _slice_name(slice_key) -> str:
    parts = [f"{s.column}:{s.bytes_value.decode() if s.HasField('bytes_value') else s.int64_value or s.float_value}"
             for s in slice_key.single_slice_keys]
    return ", ".join(parts) or "overall"


def _value(metric_value) -> Optional[float]:
    if metric_value.HasField("double_value"):
        return metric_value.double_value.value
    return None


def read_gate_report(evaluation_uri: str, blessed: bool, classes: Optional[Sequence[str]] = None) -> GateReport:
    """`classes`: the task's class names, so three-class metrics read "sensitivity (covid vs rest)"."""
    slices: dict = {}
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        values = {}
        for kv in metrics_for_slice.metric_keys_and_values:
            if kv.key.model_name == "baseline":  # with a baseline, ours is named "candidate"
                continue
            # Evaluations written before b4c37f6 also hold the model's compiled training metrics on its
            # raw output ("loss", and an "accuracy" that would overwrite the served decision's).
            if kv.key.name not in PLAIN_NAMES:
                continue
            value = _value(kv.value)
            if value is not None:
                values[metric_name(kv.key, classes)] = value
        slices[_slice_name(metrics_for_slice.slice_key)] = values
    failures = []
    if _has_validation(evaluation_uri):
        validation = tfma.load_validation_result(evaluation_uri)
        unmeasurable = frozenset(_unmeasurable(slices.get("overall", {})))
        for per_slice in validation.metric_validations_per_slice:
            where = _slice_name(per_slice.slice_key)
            for failure in per_slice.failures:
                sentence = _failure_sentence(failure, classes, unmeasurable if where == "overall" else frozenset())
                failures.append(sentence if where == "overall" else f"{sentence} (slice {where})")
    overall = slices.pop("overall", {})
    return GateReport(blessed=blessed, metrics=overall, failures=failures, slices=slices)


def _has_validation(evaluation_uri: str) -> bool:
    # tf.io.gfile: on Kubeflow/Vertex the evaluation lives in gs://
    return tf.io.gfile.isdir(evaluation_uri) and any(
        n.startswith("validations") for n in tf.io.gfile.listdir(evaluation_uri))


def _failure_sentence(failure, classes: Optional[Sequence[str]] = None, unmeasurable: frozenset = frozenset()) -> str:
    name = metric_name(failure.metric_key, classes)
    value = _value(failure.metric_value)
    threshold = failure.metric_threshold
    if threshold.HasField("value_threshold") and threshold.value_threshold.HasField("lower_bound"):
        bar = f"the required minimum {threshold.value_threshold.lower_bound.value:.3f}"
    elif threshold.HasField("change_threshold"):
        bar = f"the allowed change against the last blessed model ({threshold.change_threshold.absolute.value:+.3f})"
    else:
        bar = "its threshold"
    if value is None or math.isnan(value) or name in unmeasurable:  # e.g. specificity without negatives
        return f"{name} could not be measured on the test split, so it cannot meet {bar}"
    return f"{name} {value:.3f} is below {bar}"
