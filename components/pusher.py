"""VersionedPusher: copies a BLESSED model into `<serving_dir>/<version>/`, as TF Serving expects.

Unlike TFX's stock Pusher it never pushes the same model twice: a re-run whose Evaluator re-blesses
an unchanged (cached) model finds the model's content fingerprint already at the newest version and
records "already serving". An unblessed model is never copied, so the serving directory keeps the
previous blessed version. A model card is written beside every pushed version.

Every decision, blessed or not, is also written into the Pusher's own PushedModel artifact
(``<pipeline_root>/VersionedPusher/pushed_model/<id>/covid_cxr_decision.json``: the gate's verdict,
its failures, the test metrics and the gate's thresholds), never into the serving directory, whose
version folders TF Serving reads: a refused model's decision is on file too (`run` names the file,
and `covid-cxr evaluate` on the refused Trainer artifact finds it for the model card).

A blessed model is never pushed over another task's model: when the newest version in the serving
directory is a model of another task (one serving directory set for two tasks' pipelines), the
component fails with :class:`ServingDirError` before copying anything. That is a misconfiguration,
not a gate decision, so it stops the run like any other component error, and writes no decision
record: a failed execution publishes no PushedModel artifact to hold one (on a local run TFX even
deletes its output folder), and "blessed, not pushed" would read as a gate outcome.
`run` and `demo` make the same check before the run (local_runner.check_settings).
"""

import hashlib
import json
import os
import time

import tensorflow as tf
from tfx import v1 as tfx
from tfx.utils import path_utils

from covid_cxr.evaluation import artifacts, gate_report, model_card
from covid_cxr.evaluation.artifacts import PUSH_RECORD
from covid_cxr.serving import model_metadata


def fingerprint(model_dir: str) -> str:
    """Content hash of a SavedModel directory (paths and bytes), independent of timestamps."""
    digest = hashlib.sha256()
    for root, _, files in sorted(tf.io.gfile.walk(model_dir)):
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, model_dir).encode())
            with tf.io.gfile.GFile(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def versions(serving_dir: str) -> list[int]:
    """Numeric version directories present in `serving_dir`, oldest first."""
    if not tf.io.gfile.isdir(serving_dir):
        return []
    return sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(serving_dir) if n.rstrip("/").isdigit())


def served_task(serving_dir: str):
    """(task, version) of the newest version in `serving_dir` (what TF Serving serves), else (None, None)."""
    existing = versions(serving_dir)
    if not existing:
        return None, None
    try:
        task = model_metadata.read(os.path.join(serving_dir, str(existing[-1]))).get("task")
    except ValueError:  # a damaged metadata file: no task to compare
        task = None
    return task, existing[-1]


class ServingDirError(RuntimeError):
    """The serving directory serves another task's model: a push would swap what its clients get."""


def other_task_served(serving_dir: str, task):
    """(task, version) of the newest version in `serving_dir` when it is a model of another task than
    `task`, else None: a task-less or damaged version, or an unknown `task`, blocks nothing. The one rule
    for the Pusher and for `run` / `demo`'s check before the run (local_runner.check_settings)."""
    served, version = served_task(serving_dir)
    return (served, version) if served and task and served != task else None


def check_served_task(serving_dir: str, task) -> None:
    """ServingDirError when the newest version in `serving_dir` is a model of another task than `task`."""
    other = other_task_served(serving_dir, task)
    if other:
        served, version = other
        raise ServingDirError(f"runtime.serving_dir {serving_dir!r} serves a {served} model (version {version}); "
                              f"this {task} model was not pushed over it: use a per-task serving directory")


GRAPH_FILE = "saved_model.pb"


def _relative_files(src: str) -> list[str]:
    """Every file under ``src`` as a "/"-separated relative path, the SavedModel graph last."""
    files = []
    for root, _, names in tf.io.gfile.walk(src):
        rel = os.path.relpath(root, src)
        # Never "./name": object stores keep "/./" in object names, where TF Serving finds nothing.
        files.extend(name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}" for name in names)
    return sorted(files, key=lambda f: (f == GRAPH_FILE, f))


def _copy_files(src: str, dst: str, files: list[str]) -> None:
    for rel in files:
        target = f"{dst.rstrip('/')}/{rel}"
        tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
        tf.io.gfile.copy(f"{src.rstrip('/')}/{rel}", target, overwrite=True)


def push(model_dir: str, serving_dir: str, card: str, record: dict) -> tuple:
    """Pushes unless the newest version already holds this model. Returns (pushed, version dir, why)."""
    digest = fingerprint(model_dir)
    existing = versions(serving_dir)
    if existing:
        newest = os.path.join(serving_dir, str(existing[-1]))
        record_path = os.path.join(newest, PUSH_RECORD)
        # The graph too: a push to a bucket cut short by an older version of this code left a record
        # without one, and that version can never be served.
        if tf.io.gfile.exists(record_path) and tf.io.gfile.exists(os.path.join(newest, GRAPH_FILE)):
            with tf.io.gfile.GFile(record_path) as f:
                if json.load(f).get("fingerprint") == digest:
                    return False, newest, "this model is already the newest served version"
    version = max(int(time.time()), existing[-1] + 1 if existing else 0)
    final = f"{serving_dir.rstrip('/')}/{version}"
    files = _relative_files(model_dir)
    record_text = json.dumps(dict(record, fingerprint=digest, version=version), indent=2, sort_keys=True)
    if "://" in serving_dir:
        # A bucket has no atomic directory rename: copy in place, the graph last. A server polling
        # the bucket sees no loadable version until the graph lands (TF Serving retries failed loads).
        # The push record comes after it, so a push cut short is pushed again, never taken as done.
        _copy_files(model_dir, final, files[:-1])
        _write(final, model_card.FILE_NAME, card)
        _copy_files(model_dir, final, files[-1:])
        _write(final, PUSH_RECORD, record_text)
    else:
        staging = os.path.join(serving_dir, f".staging-{version}")  # non-numeric: TF Serving skips it
        try:
            _copy_files(model_dir, staging, files)
            _write(staging, model_card.FILE_NAME, card)
            _write(staging, PUSH_RECORD, record_text)
            tf.io.gfile.rename(staging, final)  # atomic on a local disk: never a half-copied version
        except BaseException:  # a full disk, Ctrl-C, SIGTERM: no model-sized leftover that no re-run reuses
            if tf.io.gfile.exists(staging):
                tf.io.gfile.rmtree(staging)
            raise
    return True, final, "pushed"


def _write(version_dir: str, name: str, text: str) -> None:
    with tf.io.gfile.GFile(f"{version_dir}/{name}", "w") as f:
        f.write(text)


@tfx.dsl.components.component
def VersionedPusher(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    model_blessing: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    evaluation: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelEvaluation],
    pushed_model: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.PushedModel],
    serving_dir: tfx.dsl.components.Parameter[str],
    gate: tfx.dsl.components.Parameter[str],  # the GateConfig as JSON, for the model card
) -> None:
    blessed = bool(model_blessing.get_int_custom_property("blessed"))
    model_dir = path_utils.serving_model_path(model.uri)
    metadata = model_metadata.read(model_dir)
    report = gate_report.read_gate_report(evaluation.uri, blessed, metadata.get("classes"))
    record = {"model_uri": model.uri, "evaluation_uri": evaluation.uri, "metrics": report.metrics,
              "intervals": report.intervals(), "gate": json.loads(gate)}
    if not blessed:
        pushed, destination, why = False, "", "NOT BLESSED: " + ("; ".join(report.failures) or "see the evaluation")
    else:
        check_served_task(serving_dir, metadata.get("task"))
        card = model_card.render(dict(metadata, gate=record["gate"]), report)
        pushed, destination, why = push(model_dir, serving_dir, card, record)
    decision = dict(record, blessed=blessed, failures=list(report.failures), pushed=pushed,
                    pushed_destination=destination, reason=why)
    tf.io.gfile.makedirs(pushed_model.uri)
    _write(pushed_model.uri, artifacts.DECISION_RECORD, json.dumps(decision, indent=2, sort_keys=True))
    pushed_model.set_int_custom_property("pushed", int(pushed))
    pushed_model.set_string_custom_property("pushed_destination", destination)
    pushed_model.set_string_custom_property("reason", why)
