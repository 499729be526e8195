"""Writes a curated dataset directory: TFRecord shards, manifest.csv, rejected.csv, summary.json.

Curation and the synthetic generator both write through here, so ExampleGen always reads one format.
Output is deterministic: records are written in the order given, shards are sized by count.
"""
from __future__ import annotations

import collections
import csv
import json
import os
from typing import Iterable, Mapping, Optional

import tensorflow as tf

from covid_cxr.data import features, jsonfile

MANIFEST_FIELDS = ("source", "source_ref", "label", "label_index", "patient_id", "group", "view", "sex", "age", "hash", "note")
REJECTED_FIELDS = ("source", "source_ref", "reason")


class DatasetWriter:
    """Collects accepted records and rejections, then writes the directory in one go on close()."""

    def __init__(self, out_dir: str, task: str, records_per_shard: int = 500):
        self.out_dir = out_dir
        self.task = features.get_task(task)
        self.records_per_shard = records_per_shard
        self._accepted: list[tuple[features.Record, dict]] = []
        self._rejected: list[dict] = []

    def add(self, record: features.Record, source_ref: str, image_hash: str = "", note: str = "") -> None:
        if self.task.classes[record.label_index] != record.label:
            raise ValueError(f"label {record.label!r} is not class {record.label_index} of {self.task.name}")
        row = {
            "source": record.source,
            "source_ref": source_ref,
            "label": record.label,
            "label_index": record.label_index,
            "patient_id": record.patient_id,
            "group": record.group,
            "view": record.view,
            "sex": record.sex,
            "age": record.age,
            "hash": image_hash,
            "note": note,
        }
        self._accepted.append((record, row))

    def reject(self, source: str, source_ref: str, reason: str) -> None:
        self._rejected.append({"source": source, "source_ref": source_ref, "reason": reason})

    def close(self, extra_summary: Optional[Mapping] = None) -> dict:
        os.makedirs(self.out_dir, exist_ok=True)
        self._remove_old_shards()
        n = len(self._accepted)
        num_shards = max(1, -(-n // self.records_per_shard))
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        for shard in range(num_shards):
            path = os.path.join(self.out_dir, f"records-{shard:05d}-of-{num_shards:05d}.tfrecord.gz")
            with tf.io.TFRecordWriter(path, options=options) as out:
                for record, _ in self._accepted[shard * self.records_per_shard : (shard + 1) * self.records_per_shard]:
                    out.write(record.to_example().SerializeToString())
        _write_csv(os.path.join(self.out_dir, features.MANIFEST), MANIFEST_FIELDS, (row for _, row in self._accepted))
        _write_csv(os.path.join(self.out_dir, features.REJECTED), REJECTED_FIELDS, self._rejected)
        summary = self.summary()
        summary.update(extra_summary or {})
        with open(os.path.join(self.out_dir, features.SUMMARY), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
        return summary

    def summary(self) -> dict:
        by_source_class: dict = collections.defaultdict(collections.Counter)
        for record, _ in self._accepted:
            by_source_class[record.source][record.label] += 1
        rejections = collections.Counter(_reason_kind(r["reason"]) for r in self._rejected)
        return {
            "task": self.task.name,
            "classes": list(self.task.classes),
            "accepted": len(self._accepted),
            "rejected": len(self._rejected),
            "per_class": dict(collections.Counter(r.label for r, _ in self._accepted)),
            "per_source_class": {s: dict(c) for s, c in sorted(by_source_class.items())},
            "patients": len({r.patient_id for r, _ in self._accepted}),
            "groups": len({r.group for r, _ in self._accepted}),
            "rejections": dict(rejections),
        }

    def _remove_old_shards(self) -> None:
        # A re-run with fewer shards must not leave stale shards behind for ExampleGen to read.
        for name in os.listdir(self.out_dir):
            if name.startswith("records-") and name.endswith(".tfrecord.gz"):
                os.remove(os.path.join(self.out_dir, name))


def _reason_kind(reason: str) -> str:
    """'unreadable image: truncated file' -> 'unreadable image' (summary groups by kind).

    'near-duplicate of <source>:<ref>' -> 'near-duplicate' (the ref itself may contain ':').
    """
    if reason.startswith("near-duplicate of "):
        return "near-duplicate"
    return reason.split(":", 1)[0].strip()


def _write_csv(path: str, fields: Iterable[str], rows: Iterable[Mapping]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


class CurationMismatch(ValueError):
    """A curated directory that cannot feed the configured task (one-line, user-facing message)."""


def check_fits_task(summary: dict, data_dir: str, task: features.Task) -> None:
    """Raises CurationMismatch unless ``summary`` (of ``data_dir``) was curated for ``task``.

    The reviewed schema covers every task's labels, so data validation cannot tell covid-vs-pneumonia
    data (label_index 0 = pneumonia) from covid-vs-normal data (0 = normal): this check must."""
    if summary.get("task") != task.name:
        raise CurationMismatch(f"{data_dir!r} was curated for task {summary.get('task')!r} but the config asks "
                               f"for {task.name!r}; curate again with --task {task.name}")
    if not summary.get("accepted"):
        raise CurationMismatch(f"{data_dir!r} holds no accepted images")
    foreign = sorted(set(summary.get("per_class") or {}) - set(task.classes))
    if foreign:
        raise CurationMismatch(f"{data_dir!r} holds labels {foreign} that task {task.name!r} does not know "
                               f"({', '.join(task.classes)}); curate again with --task {task.name}")


def read_summary(data_dir: str) -> dict:
    """The summary.json of a curated directory, with a clear error when it is not one."""
    path = os.path.join(data_dir, features.SUMMARY)
    if not tf.io.gfile.isdir(data_dir):  # gfile: gs:// data on Kubeflow/Vertex
        raise FileNotFoundError(f"data directory {data_dir!r} does not exist")
    if not tf.io.gfile.glob(os.path.join(data_dir, features.TFRECORD_PATTERN)):
        raise FileNotFoundError(
            f"no curated TFRecords ({features.TFRECORD_PATTERN}) in {data_dir!r}; "
            "run `covid-cxr curate` (or `covid-cxr demo`) to make some"
        )
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path!r} is missing: {data_dir!r} was not written by covid-cxr curate")
    with tf.io.gfile.GFile(path) as f:
        return jsonfile.load_object(f, path, "curation summary")
