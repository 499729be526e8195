"""The curated-record contract: feature names, label vocabularies and tasks.

Everything that writes TFRecords (curation, the synthetic generator) and everything that reads them
(schema, Transform, Trainer, Evaluator, serving) takes names from here, so the format is defined once.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import tensorflow as tf

# Raw feature keys of a curated tf.Example.
IMAGE = "image"  # PNG bytes, 8-bit grayscale, bounded size, borders already cropped
LABEL = "label"  # task class name, e.g. b"covid"
LABEL_INDEX = "label_index"  # index of LABEL in the task's class vocabulary
PATIENT_ID = "patient_id"  # pseudonymous (keyed hash); never a raw source id
GROUP = "group"  # split group: the patient merged with every near-duplicate of its images
SOURCE = "source"  # source adapter name, e.g. b"cohen"
VIEW = "view"  # "PA", "AP", "AP Supine" or "unknown"
SEX = "sex"  # "M", "F" or "unknown"
AGE = "age"  # whole years, -1 when unknown, 90 for any age over 89 (dicom.reportable_age)

UNKNOWN = "unknown"
UNKNOWN_AGE = -1
SLICE_FEATURES = (SOURCE, VIEW, SEX)  # the categorical record features reports and the gate slice by
SEXES = ("M", "F", UNKNOWN)
VIEWS = ("PA", "AP", "AP Supine", UNKNOWN)

# Findings are what a source says an image shows; a task maps findings to its classes.
COVID = "covid"
NORMAL = "normal"
PNEUMONIA = "pneumonia"  # non-COVID pneumonia (bacterial, viral, other)
OTHER_OPACITY = "other_opacity"  # non-COVID lung opacity that is not labelled pneumonia
FINDINGS = (COVID, NORMAL, PNEUMONIA, OTHER_OPACITY)


@dataclasses.dataclass(frozen=True)
class Task:
    """A classification task: its class vocabulary and which finding becomes which class."""

    name: str
    classes: tuple[str, ...]  # index in this tuple == label_index
    finding_to_class: Mapping[str, str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 2

    @property
    def positive_index(self) -> int:
        """Index of the COVID class (the class whose recall is 'sensitivity')."""
        return self.classes.index(COVID)

    def class_of(self, finding: str) -> Optional[str]:
        """The task class of a finding, or None when the task does not use that finding."""
        return self.finding_to_class.get(finding)


# Binary tasks put COVID at index 1 so label_index is directly the 0/1 target of a sigmoid.
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("covid-vs-normal", (NORMAL, COVID), {COVID: COVID, NORMAL: NORMAL}),
        Task("covid-vs-pneumonia", (PNEUMONIA, COVID), {COVID: COVID, PNEUMONIA: PNEUMONIA}),
        Task(
            "covid-vs-noncovid",
            ("noncovid", COVID),
            {COVID: COVID, NORMAL: "noncovid", PNEUMONIA: "noncovid", OTHER_OPACITY: "noncovid"},
        ),
        Task(
            "three-class",
            (NORMAL, PNEUMONIA, COVID),
            {COVID: COVID, NORMAL: NORMAL, PNEUMONIA: PNEUMONIA},
        ),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


@dataclasses.dataclass(frozen=True)
class Record:
    """One curated image, ready to serialize. Carries nothing else from the source's headers."""

    png: bytes
    label: str
    label_index: int
    patient_id: str
    group: str
    source: str
    view: str = UNKNOWN
    sex: str = UNKNOWN
    age: int = UNKNOWN_AGE

    def to_example(self) -> tf.train.Example:
        def b(value: str) -> tf.train.Feature:
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))

        def i(value: int) -> tf.train.Feature:
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

        return tf.train.Example(
            features=tf.train.Features(
                feature={
                    IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[self.png])),
                    LABEL: b(self.label),
                    LABEL_INDEX: i(self.label_index),
                    PATIENT_ID: b(self.patient_id),
                    GROUP: b(self.group),
                    SOURCE: b(self.source),
                    VIEW: b(self.view),
                    SEX: b(self.sex),
                    AGE: i(self.age),
                }
            )
        )


# Curated output directory layout.
TFRECORD_PATTERN = "records-*.tfrecord.gz"  # ImportExampleGen input_base glob
MANIFEST = "manifest.csv"
REJECTED = "rejected.csv"
SUMMARY = "summary.json"  # includes "task": the task the records were labelled for
