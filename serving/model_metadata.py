"""The metadata asset every exported covid-cxr model carries, and the decision rule it records.

``assets/covid_cxr.json`` in the SavedModel (written by serving/export.py from what trainer/task.py
stores: task, classes, threshold, decision rule, training and data summaries). It is read by the
Pusher, ``covid-cxr predict`` / ``evaluate`` and the model card; this module needs no TensorFlow
for local paths, so those commands can describe a model before (or without) loading it.
"""
from __future__ import annotations

import functools
import os
from typing import Mapping

from covid_cxr.data import jsonfile

ASSET = "covid_cxr.json"
# ``decision_rule`` of a three-class model that serves "COVID when P(covid) > threshold, else the more
# probable other class". A three-class model exported without it (before that rule) serves the argmax
# and ignores its stored threshold; binary models always serve "P(covid) > threshold".
COVID_THRESHOLD_RULE = "covid_threshold"


def version_text(version) -> str:
    """How predict and evaluate name a model's version. A model without one has no push record (e.g. the
    run's refused Trainer artifact, which `run` names for --model): "version ?" did not say no gate passed it."""
    return f"version {version}" if version is not None else "no push record, so no gate approval on file"


def asset_path(model_dir: str) -> str:
    return os.path.join(model_dir, "assets", ASSET)


def read(model_dir: str) -> dict:
    """The metadata of the SavedModel in ``model_dir`` ({} when it has none; ValueError naming the
    file when it is not JSON). Bucket paths (``gs://...``) are read through TensorFlow's file
    system; local ones without importing it."""
    path = asset_path(model_dir)
    if "://" in path:
        import tensorflow as tf  # only for remote file systems

        exists, opener = tf.io.gfile.exists, tf.io.gfile.GFile
    else:
        exists, opener = os.path.isfile, functools.partial(open, encoding="utf-8")
    if not exists(path):
        return {}
    with opener(path) as f:
        metadata = jsonfile.load_object(f, path, "covid-cxr metadata file")
    # A hand-edited value of the wrong kind would fail far from here ("'int' object is not iterable").
    for key, kinds, what in (("classes", list, "a list of class names"), ("task", str, "a task name"),
                             ("curation", dict, "an object"), ("data_summary", dict, "an object")):
        value = metadata.get(key)
        if value is not None and (not isinstance(value, kinds) or
                                  (key == "classes" and not all(isinstance(c, str) for c in value))):
            raise ValueError(f"{path}: {key!r} must be {what}, got {value!r}")
    return metadata


def completed(metadata: Mapping, served: Mapping) -> dict:
    """The model's metadata, where it is silent (a SavedModel exported elsewhere, or one storing no threshold)
    completed from what the model served: its task, its classes, the threshold its graph output. Described from
    the metadata alone, a binary model without classes read as an argmax one, and a three-class one naming the
    threshold rule without a threshold read as if it had none, though its graph applies one."""
    missing = [key for key in ("task", "classes", "threshold") if metadata.get(key) in (None, "", [])]
    return dict(metadata, **{key: served[key] for key in missing if served.get(key) is not None})


def threshold_applies(metadata: Mapping) -> bool:
    """Whether the model's label uses its stored threshold on P(covid) (binary tasks always do)."""
    return len(metadata.get("classes") or []) == 2 or metadata.get("decision_rule") == COVID_THRESHOLD_RULE


def decision_note(metadata: Mapping) -> str:
    """How the model's label is chosen, in one line."""
    if not threshold_applies(metadata):
        return "three-class: the predicted class is the argmax; the stored threshold is unused"
    if len(metadata.get("classes") or []) == 2:
        return "the model's stored decision threshold (COVID probability > threshold)"
    return "COVID when its probability > the stored threshold, else the more probable other class"
