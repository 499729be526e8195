"""Reads the newest pipeline artifacts under a TFX pipeline root for `covid-cxr evaluate --pipeline-root`.

LocalDagRunner layout: ``<pipeline_root>/<component id>/<output key>/<execution id>/``. "Newest" is
the highest execution id that holds files. Read here:
  StatisticsGen/statistics/<id>/Split-*/FeatureStats.pb     TFDV statistics per split
  ExampleValidator/anomalies/<id>/Split-*/SchemaDiff.pb     TFDV anomalies per split
  Evaluator/evaluation/<id>/ (+ Evaluator/blessing/<id>/BLESSED)   TFMA metrics per slice
  Trainer/model_run/<id>/history.json                       training curves
  VersionedPusher/pushed_model/<id>/covid_cxr_decision.json  the gate's decision on a Trainer model
and, in the serving directory, ``<version>/covid_cxr_push.json`` (PUSH_RECORD): a pushed version's record.
Everything is summarized into plain JSON-ready dicts; missing pieces are simply absent.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from covid_cxr.data import jsonfile
from covid_cxr.messages import first_line

STATISTICS = ("StatisticsGen", "statistics", "FeatureStats.pb")
ANOMALIES = ("ExampleValidator", "anomalies", "SchemaDiff.pb")
EVALUATION = ("Evaluator", "evaluation")
BLESSING = ("Evaluator", "blessing")
MODEL_RUN = ("Trainer", "model_run")
# trainer.task.HISTORY_FILE's value, not imported: the Trainer's code fingerprint would then cover this
# module (pipeline/fingerprints.py); trainer/task_test.py pins the two equal.
HISTORY_FILE = "history.json"
PUSHED_MODEL = ("VersionedPusher", "pushed_model")
DECISION_RECORD = "covid_cxr_decision.json"  # components/pusher.py writes one per decision, blessed or not
# Beside a pushed version's saved_model.pb (TF Serving ignores it): written by components/pusher.py, read
# by `covid-cxr predict` / `evaluate`. Here, not in either: this module imports neither tfx nor TensorFlow.
PUSH_RECORD = "covid_cxr_push.json"
MAX_TOP_VALUES = 8
MAX_CATEGORIES = 20  # string features with more unique values get no value list
NO_VALUE_LIST = frozenset({"image", "patient_id", "group"})  # bytes and pseudonymous ids: counts only


def newest_execution(pipeline_root: str, component: str, output: str) -> Optional[str]:
    """`<root>/<component>/<output>/<highest numeric id>` that is a non-empty directory, or None."""
    base = os.path.join(pipeline_root, component, output)
    if not os.path.isdir(base):
        return None
    ids = sorted((int(n) for n in os.listdir(base) if n.isdigit()), reverse=True)
    for i in ids:
        path = os.path.join(base, str(i))
        if os.path.isdir(path) and os.listdir(path):
            return path
    return None


def trained_run(pipeline_root: str) -> tuple[str, str]:
    """(newest Trainer model artifact, newest ImportExampleGen examples) of a finished run; ValueError
    naming the root when either is missing. The model's SavedModel is ``<model>/Format-Serving``."""
    model_dir = newest_execution(pipeline_root, "Trainer", "model")
    examples = newest_execution(pipeline_root, "ImportExampleGen", "examples")
    if not model_dir or not examples:
        raise ValueError(f"{pipeline_root}: no Trainer model or ImportExampleGen examples (not a finished pipeline root?)")
    return model_dir, examples


def _splits(artifact_dir: str) -> list[tuple[str, str]]:
    return sorted((n[len("Split-"):], os.path.join(artifact_dir, n)) for n in os.listdir(artifact_dir)
                  if n.startswith("Split-") and os.path.isdir(os.path.join(artifact_dir, n)))


def _feature_name(feature) -> str:
    return ".".join(feature.path.step) if feature.HasField("path") else feature.name


def summarize_statistics(stats_list) -> dict:
    """A DatasetFeatureStatisticsList -> {"num_examples", "features": {name: {...}}} (first dataset)."""
    if not stats_list.datasets:
        return {"num_examples": 0, "features": {}}
    dataset = stats_list.datasets[0]
    out = {"num_examples": int(dataset.num_examples), "features": {}}
    for feature in dataset.features:
        kind = feature.WhichOneof("stats")
        entry: dict = {"type": kind.replace("_stats", "") if kind else "unknown"}
        if kind == "num_stats":
            s = feature.num_stats
            common = s.common_stats
            entry.update(mean=s.mean, std=s.std_dev, min=s.min, max=s.max, zeros=int(s.num_zeros))
        elif kind == "string_stats":
            s = feature.string_stats
            common = s.common_stats
            entry["unique"] = int(s.unique)
            if s.unique <= MAX_CATEGORIES and _feature_name(feature) not in NO_VALUE_LIST:
                entry["top_values"] = {v.value: int(v.frequency) for v in s.top_values[:MAX_TOP_VALUES]}
        elif kind == "bytes_stats":
            s = feature.bytes_stats
            common = s.common_stats
            entry.update(unique=int(s.unique), avg_bytes=s.avg_num_bytes, max_bytes=s.max_num_bytes)
        else:
            common = None
        if common is not None:
            total = common.num_missing + common.num_non_missing
            entry["missing"] = int(common.num_missing)
            entry["missing_fraction"] = (common.num_missing / total) if total else 0.0
        out["features"][_feature_name(feature)] = entry
    return out


def read_statistics(pipeline_root: str) -> Optional[dict]:
    """{"uri", "splits": {split: summary}} of the newest StatisticsGen output, or None."""
    uri = newest_execution(pipeline_root, STATISTICS[0], STATISTICS[1])
    if uri is None:
        return None
    import tensorflow_data_validation as tfdv

    splits = {}
    for split, path in _splits(uri):
        file = os.path.join(path, STATISTICS[2])
        if os.path.isfile(file):
            splits[split] = summarize_statistics(tfdv.load_stats_binary(file))
    return {"uri": uri, "splits": splits}


def read_anomalies(pipeline_root: str) -> Optional[dict]:
    """{"uri", "splits": {split: ["feature: description", ...]}} of the newest ExampleValidator, or None."""
    uri = newest_execution(pipeline_root, ANOMALIES[0], ANOMALIES[1])
    if uri is None:
        return None
    from covid_cxr.components.schema_gate import read_split_anomalies

    splits = {split: read_split_anomalies(path) for split, path in _splits(uri)}
    return {"uri": uri, "splits": splits}


def _evaluation_of_model(pipeline_root: str, model_uri: str) -> Optional[str]:
    """From the run's default SQLite ML Metadata, when there is one (pipeline/metadata.py); ValueError in
    one line when it cannot be read. An empty file is SQLite's new database: nothing recorded, no store."""
    path = os.path.join(pipeline_root, "metadata.sqlite")
    if not model_uri or not os.path.isfile(path) or not os.path.getsize(path):
        return None
    from covid_cxr.pipeline import metadata

    try:
        return metadata.evaluation_of_model(metadata.sqlite_connection(path, read_only=True), model_uri)
    except RuntimeError as e:  # "Error when executing query: <SQLite's reason> query: <a CREATE TABLE statement>"
        found = re.match(r"Error when executing query: (.+?) query:", str(e))
        raise ValueError(f"ML Metadata's store {path!r} cannot be read: {found[1] if found else first_line(e)}") from e


def read_evaluation(pipeline_root: str, model_uri: str = "", evaluation_uri: str = "") -> Optional[dict]:
    """{"uri", "blessed", "metrics", "slices", "failures", "unmeasurable": {slice: metric names}} of `evaluation_uri` (the one a push record
    names), else of the newest Evaluator output that judged `model_uri` (when ML Metadata says), else
    of the newest one; None when there is none."""
    uri = (evaluation_uri if evaluation_uri and os.path.isdir(evaluation_uri) else None) \
        or _evaluation_of_model(pipeline_root, model_uri) or newest_execution(pipeline_root, EVALUATION[0], EVALUATION[1])
    if uri is None:
        return None
    from covid_cxr.evaluation import gate_report

    execution = os.path.basename(uri)
    blessing_dir = os.path.join(pipeline_root, BLESSING[0], BLESSING[1], execution)
    blessed = os.path.isfile(os.path.join(blessing_dir, "BLESSED"))
    report = gate_report.read_gate_report(uri, blessed)
    # TFMA's NaN or 0 for what a slice cannot measure (a rate or AUC of a side it holds no films of)
    unmeasurable = {name: sorted(gate_report.GateReport(blessed, values, [], {}).unmeasurable())
                    for name, values in [("overall", report.metrics), *report.slices.items()]}
    return {"uri": uri, "blessed": blessed, "metrics": report.metrics, "slices": report.slices,
            "failures": list(report.failures), "unmeasurable": unmeasurable}


def gate_decision(model_uri: str) -> Optional[tuple[dict, str]]:
    """(record, its path): the newest gate decision the Pusher recorded for the Trainer model artifact
    ``model_uri`` (``<root>/Trainer/model/<id>``), found under that artifact's own pipeline root;
    None when there is none (not a Trainer artifact, or a run from before decision records).
    ValueError naming the file when a record is not a JSON object."""
    model_dir = os.path.normpath(model_uri)
    parts = model_dir.split(os.sep)
    if parts[-3:-1] != ["Trainer", "model"]:
        return None
    pipeline_root = os.path.dirname(os.path.dirname(os.path.dirname(model_dir)))
    base = os.path.join(pipeline_root, *PUSHED_MODEL)
    if not os.path.isdir(base):
        return None
    for i in sorted((int(n) for n in os.listdir(base) if n.isdigit()), reverse=True):
        path = os.path.join(base, str(i), DECISION_RECORD)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            record = jsonfile.load_object(f, path, "gate decision record")
        # The run may have named the artifact by another path (relative, or its bucket's URI): within
        # one pipeline root "Trainer/model/<id>" names one artifact.
        if str(record.get("model_uri", "")).rstrip("/").split("/")[-3:] == parts[-3:]:
            return record, path
    return None


def newest_history(pipeline_root: str) -> Optional[tuple[dict, str]]:
    """(history, path) from the newest Trainer model_run with a history.json (:func:`read_history`), or None."""
    base = os.path.join(pipeline_root, MODEL_RUN[0], MODEL_RUN[1])
    if not os.path.isdir(base):
        return None
    for i in sorted((int(n) for n in os.listdir(base) if n.isdigit()), reverse=True):
        path = os.path.join(base, str(i), HISTORY_FILE)
        if os.path.isfile(path):
            return read_history(path)
    return None


def read_history(path: str) -> tuple[Optional[dict], str]:
    """(the Trainer's history in ``path``, ``path``); (None, why) for a damaged file: the report goes
    on without training curves, as it does without any other broken artifact."""
    try:
        with open(path, encoding="utf-8") as f:
            return jsonfile.load_object(f, path, "training history"), path
    except (OSError, ValueError) as e:
        return None, f"unreadable: {first_line(e)}"


def under_root(uri: str, pipeline_root: str) -> Optional[bool]:
    """Whether an artifact path lies under this pipeline root (a model pushed from another root does
    not), by its path or with links resolved; None when this machine cannot tell: a bucket's URI, or
    a relative path (the run's, from its working directory: the default root is relative) not found here."""
    if not uri or "://" in uri:
        return None
    if os.path.abspath(uri).startswith(os.path.abspath(pipeline_root) + os.sep) or \
            os.path.realpath(uri).startswith(os.path.realpath(pipeline_root) + os.sep):
        return True
    return False if os.path.isabs(uri) or os.path.exists(uri) else None


def check_pipeline_root(pipeline_root: str) -> None:
    """FileNotFoundError (one line) unless `pipeline_root` holds a run whose artifacts read_pipeline reads."""
    if not os.path.isdir(pipeline_root):
        raise FileNotFoundError(f"pipeline root {pipeline_root!r} does not exist")
    components = ("StatisticsGen", "ExampleValidator", "Evaluator")
    if not any(os.path.isdir(os.path.join(pipeline_root, c)) for c in components):
        raise FileNotFoundError(f"no pipeline run under {pipeline_root!r} (none of {', '.join(components)})")


def read_pipeline(pipeline_root: str, model_uri: str = "", evaluation_uri: str = "") -> dict:
    """Everything above that exists, plus the errors met while reading (one line each).
    `model_uri` / `evaluation_uri`: the Trainer model being evaluated and the evaluation that blessed
    it (from its push record), to show that model's own Evaluator output."""
    check_pipeline_root(pipeline_root)
    # A model pushed from another root names that root's artifacts: not this root's to show.
    foreign = model_uri if under_root(model_uri, pipeline_root) is False else ""
    model_uri, evaluation_uri = (uri if under_root(uri, pipeline_root) else "" for uri in (model_uri, evaluation_uri))
    out: dict = {"root": pipeline_root, "errors": []}
    readers = (("statistics", read_statistics), ("anomalies", read_anomalies),
               ("evaluation", lambda root: read_evaluation(root, model_uri, evaluation_uri)))
    if foreign:  # this root's newest Evaluator output judged another model: its figures are not this one's
        readers = readers[:2]
        out["errors"].append(f"evaluation: not shown: the model was trained under another pipeline root ({foreign}), "
                             "so this root's Evaluator judged another model")
    for key, reader in readers:
        try:
            value = reader(pipeline_root)
        except Exception as e:  # noqa: BLE001 - a broken artifact must not stop the report
            out["errors"].append(f"{key}: {first_line(e, with_type=True)}")
            continue
        if value is not None:
            out[key] = value
    return out
