"""Runs the pipeline locally with LocalDagRunner on Beam's DirectRunner (thin entry point).

    python -m covid_cxr.local_runner --data DIR [--preset quick]   (or: covid-cxr run ...)
"""
from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import os
import sys

import tensorflow as tf
from tfx import v1 as tfx

from covid_cxr.components import pusher, schema_gate
from covid_cxr.components.schema_gate import DataValidationError
from covid_cxr.data import features, writer
from covid_cxr.messages import first_line
from covid_cxr.pipeline import fingerprints, metadata
from covid_cxr.pipeline.config import ConfigError, PipelineConfig
from covid_cxr.pipeline.pipeline import create_pipeline, split_config, split_of
from covid_cxr.trainer import models, training


@dataclasses.dataclass(frozen=True)
class CheckedData:
    """What :func:`check_data` read: the curation's summary and the films per split (:func:`split_counts`,
    None where unknown), for the run's notes and the run itself, which count nothing again."""

    summary: dict
    split_counts: dict[str, dict[str, int]] | None


def check_data(config: PipelineConfig) -> CheckedData:
    """Fails early, in one line, when the data directory cannot feed this config."""
    if not config.data.data_dir:
        raise ConfigError("no data directory: pass --data DIR (a directory written by `covid-cxr curate`)")
    try:
        summary = writer.read_summary(config.data.data_dir)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    try:
        writer.check_fits_task(summary, config.data.data_dir, config.task)
    except writer.CurationMismatch as e:
        raise ConfigError(str(e)) from None
    counts = split_counts(config, summary)  # manifest.csv, read once per run
    for split, per_class in (counts or {}).items():
        missing = [c for c, n in per_class.items() if not n]
        if missing:  # else found by the Trainer (eval) or only in the gate's report (test), minutes in
            raise ConfigError(f"the {split} split would hold no {' and no '.join(missing)} films ({split} films per "
                              f"class: {_per_class(per_class)}; patients are dealt by hash): add patients of that class, or "
                              f"change data.*_buckets, which deals them anew (now {_buckets(config)})")
    return CheckedData(summary, counts)


def _buckets(config: PipelineConfig) -> str:
    data = config.data
    return f"train/eval/test {data.train_buckets}/{data.eval_buckets}/{data.test_buckets}"


def _per_class(per_class: dict) -> str:
    return ", ".join(f"{c} {n}" for c, n in per_class.items())


def split_counts(config: PipelineConfig, summary: dict) -> dict[str, dict[str, int]] | None:
    """{split: films per class} as ImportExampleGen will deal the curated films, from manifest.csv
    (written with the records, and far cheaper to read than them); None where that cannot be known
    here: a bucket URI (Kubeflow's data), no manifest, or one that does not match the summary."""
    data_dir = config.data.data_dir
    path = os.path.join(data_dir, features.MANIFEST)
    if "://" in data_dir or not os.path.isfile(path):
        return None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(r["group"], r["label"]) for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, KeyError, csv.Error):
        return None  # left to the Trainer's own check
    if dict(collections.Counter(label for _, label in rows)) != summary.get("per_class"):
        return None  # edited by hand: the manifest no longer says what the records hold
    counts = {s.name: dict.fromkeys(config.task.classes, 0) for s in split_config(config.data).splits}
    for split, (_, label) in zip(split_of([g for g, _ in rows], config.data), rows):
        counts[split][label] += 1
    return counts


def split_notes(config: PipelineConfig, counts: dict[str, dict[str, int]] | None) -> list[str]:
    """The films per split and class ExampleGen will write (:func:`split_counts`'s ``counts``), said before
    the run (none where unknown)."""
    if not counts:
        return []
    return [f"films per split ({_buckets(config)} buckets): "
            + "; ".join(f"{split} {_per_class(per_class)}" for split, per_class in counts.items())]


def check_inputs(config: PipelineConfig) -> CheckedData:
    """Everything a run can check before it starts: the data, then :func:`check_settings`."""
    checked = check_data(config)
    check_settings(config)
    return checked


def check_settings(config: PipelineConfig) -> None:
    """All but the data: the schema and weights files, where ML Metadata is kept and where the run
    writes (`demo` checks these before it generates its data)."""
    if config.data.schema_file:
        content = fingerprints.file_content(config.data.schema_file)  # read once: readable here, and a Schema
        if content is None:
            raise ConfigError(f"data.schema_file {config.data.schema_file!r} cannot be read (no such file, or no access)")
        schema_gate.check_schema_file(config.data.schema_file, content)
    weights = config.model.weights
    # A named file that is not there is a typo: found by the Trainer, the run would go on with the
    # fallback family (as it does for `auto` with no file), which is not what was asked for.
    if weights and weights.lower() not in models.WEIGHT_KEYWORDS:
        try:
            is_file = models.is_weights_file(weights)  # as the Trainer reads it
        except tf.errors.OpError as e:  # e.g. a file system scheme this TensorFlow cannot read
            raise ConfigError(f"model.weights {weights!r} cannot be read: {first_line(e)}") from None
        if not is_file:
            raise ConfigError(f"model.weights {weights!r} is not a file (or: auto, imagenet, none)")
    runtime = config.runtime
    try:
        writer.check_writable(runtime.pipeline_root, "runtime.pipeline_root (--pipeline-root)")
        writer.check_writable(runtime.serving_dir, "runtime.serving_dir (--serving-dir)")
        if runtime.metadata_path:
            writer.check_writable(os.path.dirname(runtime.metadata_path), "the folder of runtime.metadata_path")
            if os.path.isdir(runtime.metadata_path):
                raise writer.OutputError(f"runtime.metadata_path {runtime.metadata_path!r} is a directory: name the "
                                         "SQLite file ML Metadata keeps, e.g. .../metadata.sqlite")
    except writer.OutputError as e:
        raise ConfigError(str(e)) from None
    other = pusher.other_task_served(runtime.serving_dir, config.task.name)
    if other:  # a push would swap what its clients get for another task's model
        served, version = other
        raise ConfigError(f"runtime.serving_dir (--serving-dir) {runtime.serving_dir!r} serves a {served} model "
                          f"(version {version}); this run's {config.task.name} model would replace it: choose "
                          "another --serving-dir")
    metadata.check_connection(config)


def settings_notes(config: PipelineConfig) -> list[str]:
    """What the run will do differently from what the config seems to ask, said before it starts."""
    model = config.model
    transfer = any(models.is_transfer(f) for f in [*model.families, *model.ensemble_with])
    if model.weights.lower() != "auto" or not model.weights_dir or not transfer:
        return []
    try:
        there = tf.io.gfile.isdir(model.weights_dir)
    except tf.errors.OpError:
        there = False
    if there:
        return []
    # Legitimate (the `full` preset names ../shared/weights, which a user's machine may not have),
    # but a mistyped folder would otherwise show only in the Trainer's log and the model card.
    offline = {"error": "the run stops", "none": "the same families train from random weights"}.get(
        model.fallback, f"{model.fallback} trains instead")
    return [f"model.weights_dir {model.weights_dir!r} is not a folder here: `auto` downloads ImageNet weights "
            f"instead; without network access {offline} (model.fallback)"]


class PipelineRunError(RuntimeError):
    """A component failed while the pipeline ran (not a mistake in the user's input)."""


@contextlib.contextmanager
def _argv_of_program_only():
    """Hides this process's command line from TFX while the DAG runs.

    TFX's Beam executors parse ``sys.argv`` as absl flags (``base_beam_executor.py``), and absl reads
    ``-v`` as its ``--verbosity``: ``covid-cxr -v run ...`` failed in ImportExampleGen with
    "flag --verbosity=run". The command line is parsed already; the DAG needs none of it.
    """
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def run(config: PipelineConfig, checked: CheckedData | None = None) -> metadata.RunOutcome:
    """Runs the DAG. ``checked``: what this process found checking its inputs already (`covid-cxr run`:
    :func:`check_inputs`, whose counts its notes print; `demo`: its settings before it generated the data,
    :func:`check_data` after); without it, :func:`check_inputs` runs here."""
    if checked is None:
        check_inputs(config)
    training.require_process_env(config.to_dict()["training"])  # before the DAG, not only when the Tuner gets there
    connection = metadata.connection_config(config)
    # Built before the try: no component ran yet, so an error here is not blamed on the newest
    # failed execution in the store (an earlier run's).
    pipeline = create_pipeline(config, connection)
    try:
        with _argv_of_program_only():
            tfx.orchestration.LocalDagRunner().run(pipeline)
    except DataValidationError:
        raise
    except Exception as e:  # noqa: BLE001 - say which component failed; the cause stays chained
        try:
            failed = metadata.failed_component(connection, config.runtime.pipeline_name)
        except Exception:  # noqa: BLE001 - an unreadable store must not hide the run's own error
            failed = metadata.UNKNOWN_COMPONENT
        if failed in ("ImportExampleGen", "Transform"):
            # Their errors on a damaged shard, a record that is no tf.Example or an image that does
            # not decode name no file: find and name it (raises UnreadableDataError), a user error
            # like `evaluate`'s on the same file.
            try:
                for _ in writer.read_examples(writer.record_files(config.data.data_dir)):
                    pass
            except tf.errors.OpError:  # the folder itself cannot be listed: say what failed, as below
                pass
        raise PipelineRunError(f"{failed} failed: {first_line(e, with_type=True)}") from e
    return metadata.latest_outcome(config)


if __name__ == "__main__":
    from covid_cxr import cli

    cli.main(["run", *sys.argv[1:]])
