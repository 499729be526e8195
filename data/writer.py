"""Writes a curated dataset directory: TFRecord shards, manifest.csv, rejected.csv, summary.json.

Curation and the synthetic generator both write through here, so ExampleGen always reads one format.
Output is deterministic: records are written in the order given, shards are sized by count.
Records stream to disk as they are added (a shard is named with the shard count once it is known,
on close), so memory holds the manifest rows only, whatever the corpus size.
"""
from __future__ import annotations

import collections
import csv
import json
import os
import re
import tempfile
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import tensorflow as tf

from covid_cxr.data import features, jsonfile
from covid_cxr.messages import first_line

MANIFEST_FIELDS = ("source", "source_ref", "label", "label_index", "patient_id", "group", "view", "sex", "age", "hash", "note")
REJECTED_FIELDS = ("source", "source_ref", "reason")


class DatasetWriter:
    """Streams accepted records into shards, collects rejections, and completes the directory on
    close(); discard() removes what an unfinished writer wrote."""

    def __init__(self, out_dir: str, task: str, records_per_shard: int = 500):
        self.out_dir = out_dir
        self.task = features.get_task(task)
        self.records_per_shard = records_per_shard
        self._accepted: list[dict] = []  # manifest rows
        self._rejected: list[dict] = []
        self._partials: list[str] = []  # shards written so far, under names ExampleGen does not read
        self._shard: Optional[tf.io.TFRecordWriter] = None

    def add(self, record: features.Record, source_ref: str, image_hash: str = "", note: str = "") -> None:
        classes = self.task.classes
        # A negative index would pass as a class counted from the end and be written as a negative label.
        if not 0 <= record.label_index < len(classes) or classes[record.label_index] != record.label:
            raise ValueError(f"label {record.label!r} is not class {record.label_index} of {self.task.name} "
                             f"({', '.join(classes)})")
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
        if len(self._accepted) % self.records_per_shard == 0:
            self._next_shard()
        self._shard.write(record.to_example().SerializeToString())
        self._accepted.append(row)

    def _next_shard(self) -> None:
        self._close_shard()
        os.makedirs(self.out_dir, exist_ok=True)
        self._partials.append(os.path.join(self.out_dir, f".records-{len(self._partials):05d}.partial"))
        self._shard = tf.io.TFRecordWriter(self._partials[-1], options=tf.io.TFRecordOptions(compression_type="GZIP"))

    def _close_shard(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()

    def discard(self) -> None:
        """Removes the partial shards of a writer that will not be closed (curation failed)."""
        self._close_shard()
        for path in self._partials:
            if os.path.exists(path):
                os.remove(path)
        self._partials = []

    def reject(self, source: str, source_ref: str, reason: str) -> None:
        self._rejected.append({"source": source, "source_ref": source_ref, "reason": reason})

    def close(self, extra_summary: Optional[Mapping] = None) -> dict:
        if not self._partials:  # nothing accepted: still one (empty) shard, as before
            self._next_shard()
        self._close_shard()
        # summary.json is written last and marks a finished directory: an older one goes first, so
        # that an interrupt from here on leaves a directory `run` refuses, not new shards under an
        # old summary.
        summary_path = os.path.join(self.out_dir, features.SUMMARY)
        if os.path.exists(summary_path):
            os.remove(summary_path)
        self._remove_old_shards()
        num_shards = len(self._partials)
        for shard, path in enumerate(self._partials):
            os.replace(path, os.path.join(self.out_dir, f"records-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"))
        self._partials = []
        _write_csv(os.path.join(self.out_dir, features.MANIFEST), MANIFEST_FIELDS, self._accepted)
        _write_csv(os.path.join(self.out_dir, features.REJECTED), REJECTED_FIELDS, self._rejected)
        summary = self.summary()
        summary.update(extra_summary or {})
        with open(summary_path, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, sort_keys=True)
        return summary

    def summary(self) -> dict:
        by_source_class: dict = collections.defaultdict(collections.Counter)
        for row in self._accepted:
            by_source_class[row["source"]][row["label"]] += 1
        rejections = collections.Counter(reason_kind(r["reason"]) for r in self._rejected)
        return {
            "task": self.task.name,
            "classes": list(self.task.classes),
            "accepted": len(self._accepted),
            "rejected": len(self._rejected),
            "per_class": dict(collections.Counter(r["label"] for r in self._accepted)),
            "per_source_class": {s: dict(c) for s, c in sorted(by_source_class.items())},
            "patients": len({r["patient_id"] for r in self._accepted}),
            "groups": len({r["group"] for r in self._accepted}),
            "rejections": dict(rejections),
        }

    def _remove_old_shards(self) -> None:
        # A re-run with fewer shards must not leave stale shards behind for ExampleGen to read.
        # Partial shards of an earlier run that was killed go too.
        for name in os.listdir(self.out_dir):
            path = os.path.join(self.out_dir, name)
            if ((name.startswith("records-") and name.endswith(".tfrecord.gz"))
                    or (name.startswith(".records-") and name.endswith(".partial") and path not in self._partials)):
                os.remove(path)


def reason_kind(reason: str) -> str:
    """'unreadable image: truncated file' -> 'unreadable image' (summary.json and curation's per-source
    counts group rejections by kind).

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
    per_class = summary.get("per_class") or {}
    if not isinstance(per_class, dict):  # a string's letters read as its labels
        raise CurationMismatch(f"{data_dir!r}: its {features.SUMMARY}'s per_class is {per_class!r}, not a count per "
                               "class; curate again")
    foreign = sorted(set(per_class) - set(task.classes))
    if foreign:
        raise CurationMismatch(f"{data_dir!r} holds labels {foreign} that task {task.name!r} does not know "
                               f"({', '.join(task.classes)}); curate again with --task {task.name}")
    missing = [c for c in task.classes if not per_class.get(c)]
    if missing:  # nothing to learn the class from, and no sensitivity or specificity to gate on
        raise CurationMismatch(f"{data_dir!r} holds no {' and no '.join(missing)} images: task {task.name!r} "
                               f"trains on {', '.join(task.classes)}; add a source with them and curate again")


class UnreadableDataError(ValueError):
    """Curated data that cannot be read as it is: no access, no credentials, a damaged file."""


class OutputError(ValueError):
    """An output location that cannot be written (one line)."""


def check_writable(path: str, name: str) -> None:
    """OutputError unless ``path`` is, or can be made, a directory here, checked before the work:
    found after training, a serving directory that is a file loses the whole run. Leaves nothing
    behind; bucket URIs are left to the run."""
    if not path or "://" in path:
        return
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputError(f"{name} {path!r} cannot be a directory: {existing!r} is a file")
    # Tried, not asked (os.access): for root it says yes to read-only mounts and to /proc.
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        # The system's reason alone misleads: /proc says "No such file or directory" of a folder that exists.
        said = f"(the system says: {e.strerror or first_line(e)})"
        if existing == os.path.abspath(path):
            raise OutputError(f"{name} {path!r} cannot be written: no file can be made in it {said}") from None
        raise OutputError(f"{name} {path!r} cannot be created: no folder can be made in {existing!r} {said}") from None


def read_summary(data_dir: str) -> dict:
    """The summary.json of a curated directory, with a clear error when it is not one."""
    path = os.path.join(data_dir, features.SUMMARY)
    try:
        if not tf.io.gfile.isdir(data_dir):  # gfile: gs:// data on Kubeflow/Vertex
            raise FileNotFoundError(f"data directory {data_dir!r} is a file, not a directory"
                                    if tf.io.gfile.exists(data_dir) else f"data directory {data_dir!r} does not exist")
        if not record_files(data_dir):
            raise FileNotFoundError(
                f"no curated TFRecords ({features.TFRECORD_PATTERN}) in {data_dir!r}; "
                "run `covid-cxr curate` (or `covid-cxr demo`) to make some"
            )
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{path!r} is missing: {data_dir!r} was not written by covid-cxr curate")
        with tf.io.gfile.GFile(path) as f:
            return jsonfile.load_object(f, path, "curation summary")
    except (tf.errors.PermissionDeniedError, tf.errors.UnauthenticatedError, tf.errors.FailedPreconditionError,
            tf.errors.UnimplementedError) as e:  # no access, no credentials, an unknown scheme: the user's to fix
        raise UnreadableDataError(f"cannot read the data directory {data_dir!r}: {first_line(e)}") from None


def record_files(data_dir: str) -> list[str]:
    """The curated TFRecord shards of ``data_dir``, in order (the files ImportExampleGen reads)."""
    return sorted(tf.io.gfile.glob(os.path.join(data_dir, features.TFRECORD_PATTERN)))


def read_records(files: Sequence[str]) -> Iterator[bytes]:
    """The serialized records of gzip TFRecord ``files``, in order; a damaged file is named."""
    for path in files:
        try:
            for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                yield record.numpy()
        except tf.errors.OpError as e:  # truncated, not gzip, not TFRecords
            # TensorFlow's message without its "{{function_node ...}}" prefix and "[Op:...]" suffix
            # and its unpaired quote ("truncated record at 193491' failed with EOF reached")
            reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", e.message or "").split("\n")[0]
            reason = re.sub(r"(?<=\d)'", "", reason).strip(" '") or type(e).__name__
            raise UnreadableDataError(
                f"{path}: not a readable gzip TFRecord file ({type(e).__name__}: {reason})") from None


# The first bytes of what the Transform decodes (tf.io.decode_image with one channel: PNG, JPEG; it
# refuses one-channel GIF and BMP).
DECODABLE_IMAGE_STARTS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def read_examples(files: Sequence[str]) -> Iterator[tuple[bytes, tf.train.Example]]:
    """(serialized, parsed) curated examples of gzip TFRecord ``files``, in order. A record that is
    not one is named by file and position: not a tf.Example, not exactly one image and one integer
    label index, or an image the Transform cannot decode (judged by its first bytes)."""
    for path in files:
        for i, raw in enumerate(read_records([path])):
            def bad(what: str) -> UnreadableDataError:
                return UnreadableDataError(f"{path}: record {i} {what}: not a curated covid-cxr dataset")

            try:
                example = tf.train.Example.FromString(raw)
            except Exception:  # protobuf's DecodeError, whichever implementation is loaded
                raise bad("is not a tf.Example") from None
            feats = example.features.feature
            images = feats[features.IMAGE].bytes_list.value if features.IMAGE in feats else []
            labels = feats[features.LABEL_INDEX].int64_list.value if features.LABEL_INDEX in feats else []
            if len(images) != 1 or len(labels) != 1:
                raise bad(f"has no single {features.IMAGE} (bytes) and {features.LABEL_INDEX} (int64)")
            if not images[0].startswith(DECODABLE_IMAGE_STARTS):
                raise bad(f"has an {features.IMAGE} that is not PNG or JPEG data")
            yield raw, example
