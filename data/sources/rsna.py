"""RSNA Pneumonia Detection Challenge: ``stage_2_train_images/<patientId>.dcm`` + two label CSVs.

* ``stage_2_train_labels.csv`` (patientId, x, y, width, height, Target) has one row per box, so a
  patient with several boxes repeats: each patient gives ONE candidate (its single image).
* ``stage_2_detailed_class_info.csv`` (patientId, class) tells apart the two kinds of Target 0.

Labels: Target 1 / "Lung Opacity" -> pneumonia; Target 0 / "Normal" -> normal;
Target 0 / "No Lung Opacity / Not Normal" -> REJECTED ("abnormal, no lung opacity"): these films are
abnormal (so not normal) but show no opacity (so not other_opacity), and no task class fits them.
Rows whose Target and class disagree are rejected ("inconsistent labels").
Image files without a label row, label rows without an image file and rows with a blank patientId
("malformed stage_2_train_labels.csv row", ref ``<csv> row <n>``) are rejected too.

View (ViewPosition), sex and age (PatientAge, "58" or "058Y") come from the DICOM header at load
time. The file name IS the raw patientId, so ``source_ref`` is written with its pseudonym in its
place (``stage_2_train_images/<pseudonym>.dcm``). Only the labelled ``stage_2_train_images`` are
read (the challenge's test images carry no labels).

Patients: despite its name, RSNA's patientId is one per FILM. The films are NIH ChestX-ray8 films,
and one NIH patient's follow-up films got several patientIds, so grouping by patientId can deal one
patient into train and test (the shared corpus: 100 normals of 54 NIH patients, one with 11 films).
RSNA published the link, ``pneumonia-challenge-dataset-mappings_2018.json`` (``subset_img_id`` =
patientId, ``img_id`` = NIH image ``<patient>_<follow-up>.png``): placed beside the CSVs, it makes the
NIH patient the patient. Without it each film is its own patient, and the summary says so.
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Optional

from covid_cxr.data import features, images
from covid_cxr.data.sources.base import Candidate, Source, list_files, read_csv

LABELS = "stage_2_train_labels.csv"
CLASSES = "stage_2_detailed_class_info.csv"
IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"  # unlabelled: its files are rejected as outside the layout
LUNG_OPACITY = "Lung Opacity"
NORMAL = "Normal"
NOT_NORMAL = "No Lung Opacity / Not Normal"
NIH_MAPPING = "pneumonia-challenge-dataset-mappings_2018.json"


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
            header, _ = read_csv(os.path.join(self.root, name))
            missing = [c for c in columns if c not in header]
            if missing:
                raise self.layout_error(f"{name} lacks column(s) {', '.join(missing)}")
        self._nih_patient = self._read_nih_mapping()

    def names_a_class(self, folder: str) -> bool:
        return folder in (IMAGES, TEST_IMAGES)

    def _read_nih_mapping(self) -> Optional[dict[str, str]]:
        """{patientId: NIH patient number} from RSNA's mapping file beside the CSVs; None without it."""
        path = os.path.join(self.root, NIH_MAPPING)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                entries = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self.layout_error(f"{NIH_MAPPING} is not readable JSON ({type(e).__name__})") from None
        mapping: dict[str, str] = {}
        for n, entry in enumerate(entries if isinstance(entries, list) else [None]):
            film = entry.get("subset_img_id") if isinstance(entry, dict) else None
            nih = entry.get("img_id") if isinstance(entry, dict) else None
            patient = os.path.splitext(nih.strip())[0].split("_", 1)[0] if isinstance(nih, str) else ""  # 00001684_000.png
            if not (isinstance(film, str) and film.strip() and patient):
                # The entry's values are patient ids: only its position is said.
                raise self.layout_error(f"{NIH_MAPPING} entry {n + 1} lacks a subset_img_id or an NIH img_id "
                                        "(RSNA's file is a list of objects with both)")
            if mapping.setdefault(film.strip(), patient) != patient:
                raise self.layout_error(f"{NIH_MAPPING} entry {n + 1} maps a patientId listed before to another "
                                        "NIH patient")
        return mapping

    def _patient_of(self, pid: str) -> str:
        """The raw id that ties a film to its patient: the NIH patient when mapped, else the film's own."""
        nih = (self._nih_patient or {}).get(pid)
        return f"nih:{nih}" if nih else pid

    def _read(self, name: str, column: str, blank: list[Candidate]) -> dict[str, set[str]]:
        """{patientId: values of ``column``}; a row without a patientId is appended to ``blank``, rejected."""
        out: dict[str, set[str]] = {}
        for n, row in enumerate(read_csv(os.path.join(self.root, name))[1]):
            pid = (row.get("patientId") or "").strip()
            if pid:
                out.setdefault(pid, set()).add((row.get(column) or "").strip())
            else:  # its label belongs to no film: said, not dropped (numbered as Cohen's metadata rows)
                blank.append(Candidate(self.name, f"{name} row {n + 1}", None,
                                       reject=f"malformed {name} row: blank patientId"))
        return out

    def candidates(self) -> Iterator[Candidate]:
        blank: list[Candidate] = []
        targets = self._read(LABELS, "Target", blank)
        classes = self._read(CLASSES, "class", blank)
        yield from blank
        images_dir = os.path.join(self.root, IMAGES)
        files: dict[str, str] = {}
        for path in list_files(images_dir):
            stem, ext = os.path.splitext(os.path.basename(path))
            if os.path.dirname(path) == images_dir and ext.lower() == ".dcm" and stem not in files:
                files[stem] = path
            else:  # a copy in a subfolder, another format: named by the raw id too, so pseudonymized
                yield Candidate(self.name, self.ref(path), path, patient_id=self._patient_of(stem), ref_id=stem,
                                reject=f"not an RSNA image file: expected {IMAGES}/<patientId>.dcm")
        ids = sorted(set(targets) | set(files))
        if self._nih_patient is None:
            self.patient_grouping = (f"one per film: RSNA's patientIds name films, not patients; put RSNA's {NIH_MAPPING} "
                                     "beside the CSVs to keep each NIH patient's films in one split")
        else:
            mapped = sum(pid in self._nih_patient for pid in ids)
            self.patient_grouping = (f"NIH patients from {NIH_MAPPING}: {mapped} of {len(ids)} patientIds mapped "
                                     f"({len(ids) - mapped} unmapped, each its own patient)")
        for pid in ids:
            path = files.get(pid)
            ref = self.ref(path) if path else f"{IMAGES}/{pid}.dcm"
            common = dict(patient_id=self._patient_of(pid), ref_id=pid)
            if pid not in targets:
                yield Candidate(self.name, ref, path, reject=f"no label: not in {LABELS}", **common)
                continue
            if path is None:  # a named pipe or a broken link is not listed as a file: say which
                yield Candidate(self.name, ref, None, reject=images.not_regular(os.path.join(self.root, ref))
                                or "missing image file", **common)
                continue
            finding, reject = _label(targets[pid], classes.get(pid, set()))
            yield Candidate(self.name, ref, path, finding=finding, reject=reject, **common)


def _shown(value: str) -> str:
    """A label value as a reason may quote it: RSNA's own values only (a CSV cell may hold anything)."""
    return value if value in ("0", "1", LUNG_OPACITY, NORMAL, NOT_NORMAL, "") else "an unknown value"


def _label(targets: set[str], classes: set[str]):
    """(finding, None) or (None, reason) from a patient's Target values and classes."""
    if len(targets) != 1 or len(classes) > 1:
        return None, (f"inconsistent labels: Target {sorted(map(_shown, targets))} class "
                      f"{sorted(map(_shown, classes))}")
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
    return None, f"inconsistent labels: Target {_shown(target)} class {_shown(cls) or 'none'}"
