"""RSNA Pneumonia Detection Challenge: ``stage_2_train_images/<patientId>.dcm`` + two label CSVs.

* ``stage_2_train_labels.csv`` (patientId, x, y, width, height, Target) has one row per box, so a
  patient with several boxes repeats: each patient gives ONE candidate (its single image).
* ``stage_2_detailed_class_info.csv`` (patientId, class) tells apart the two kinds of Target 0.

Labels: Target 1 / "Lung Opacity" -> pneumonia; Target 0 / "Normal" -> normal;
Target 0 / "No Lung Opacity / Not Normal" -> REJECTED ("abnormal, no lung opacity"): these films are
abnormal (so not normal) but show no opacity (so not other_opacity), and no task class fits them.
Rows whose Target and class disagree are rejected ("inconsistent labels").
Image files without a label row and label rows without an image file are rejected too.

View (ViewPosition), sex and age (PatientAge, "58" or "058Y") come from the DICOM header at load
time. The file name IS the raw patient id, so ``source_ref`` is written with the pseudonym in its
place (``stage_2_train_images/<pseudonym>.dcm``). Only the labelled ``stage_2_train_images`` are
read (the challenge's test images carry no labels).
"""
from __future__ import annotations

import csv
import os
from typing import Iterator

from covid_cxr.data import features
from covid_cxr.data.sources.base import Candidate, Source, list_files

LABELS = "stage_2_train_labels.csv"
CLASSES = "stage_2_detailed_class_info.csv"
IMAGES = "stage_2_train_images"
LUNG_OPACITY = "Lung Opacity"
NORMAL = "Normal"
NOT_NORMAL = "No Lung Opacity / Not Normal"


class RsnaSource(Source):
    name = "rsna"
    layout = f"the RSNA Pneumonia Detection Challenge layout: {IMAGES}/, {LABELS}, {CLASSES}"
    private_names = True

    def validate(self) -> None:
        for name in (LABELS, CLASSES):
            if not os.path.isfile(os.path.join(self.root, name)):
                raise self.layout_error(f"{name} not found")
        if not os.path.isdir(os.path.join(self.root, IMAGES)):
            raise self.layout_error(f"{IMAGES}/ not found")
        for name, columns in ((LABELS, ("patientId", "Target")), (CLASSES, ("patientId", "class"))):
            with open(os.path.join(self.root, name), newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), [])
            missing = [c for c in columns if c not in header]
            if missing:
                raise self.layout_error(f"{name} lacks column(s) {', '.join(missing)}")

    def _read(self, name: str, column: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        with open(os.path.join(self.root, name), newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                pid = (row.get("patientId") or "").strip()
                if pid:
                    out.setdefault(pid, set()).add((row.get(column) or "").strip())
        return out

    def candidates(self) -> Iterator[Candidate]:
        targets = self._read(LABELS, "Target")
        classes = self._read(CLASSES, "class")
        images_dir = os.path.join(self.root, IMAGES)
        files: dict[str, str] = {}
        for path in list_files(images_dir):
            stem, ext = os.path.splitext(os.path.basename(path))
            if os.path.dirname(path) == images_dir and ext.lower() == ".dcm" and stem not in files:
                files[stem] = path
            else:  # a copy in a subfolder, another format: named by the raw id too, so pseudonymized
                yield Candidate(self.name, self.ref(path), path, patient_id=stem, ref_has_patient_id=True,
                                reject=f"not an RSNA image file: expected {IMAGES}/<patientId>.dcm")
        for pid in sorted(set(targets) | set(files)):
            path = files.get(pid)
            ref = self.ref(path) if path else f"{IMAGES}/{pid}.dcm"
            common = dict(patient_id=pid, ref_has_patient_id=True)
            if pid not in targets:
                yield Candidate(self.name, ref, path, reject=f"no label: not in {LABELS}", **common)
                continue
            if path is None:
                yield Candidate(self.name, ref, None, reject="missing image file", **common)
                continue
            finding, reject = _label(targets[pid], classes.get(pid, set()))
            yield Candidate(self.name, ref, path, finding=finding, reject=reject, **common)


def _label(targets: set[str], classes: set[str]):
    """(finding, None) or (None, reason) from a patient's Target values and classes."""
    if len(targets) != 1 or len(classes) > 1:
        return None, f"inconsistent labels: Target {sorted(targets)} class {sorted(classes)}"
    target = next(iter(targets))
    cls = next(iter(classes)) if classes else ""
    if target == "1" and cls in (LUNG_OPACITY, ""):
        return features.PNEUMONIA, None
    if target == "0" and cls == NORMAL:
        return features.NORMAL, None
    if target == "0" and cls == NOT_NORMAL:
        return None, f"abnormal, no lung opacity: RSNA class '{NOT_NORMAL}'"
    if target == "0" and cls == "":
        return None, f"no label: Target 0 without a class in {CLASSES}"
    return None, f"inconsistent labels: Target {target} class {cls or 'none'}"
