"""Kermany et al. 2018, Kaggle "Chest X-Ray Images (Pneumonia)": ``train|test|val/NORMAL|PNEUMONIA/*.jpeg``.

NORMAL -> normal; PNEUMONIA (bacterial and viral alike) -> pneumonia. Paediatric films (ages 1-5;
age itself is not published). Also accepts the Kaggle zip's extra ``chest_xray/`` level.

Patient ids are parsed from file names (``patient_id_of``): ``person123_bacteria_456`` -> person123,
``IM-0115-0001`` -> IM-0115, ``NORMAL2-IM-1427-0001`` -> NORMAL2-IM-1427; a name matching none of
these is its own patient (its stem), never dropped. The same id in train and test is one patient.
"""
from __future__ import annotations

import os
import re
from typing import Iterator

from covid_cxr.data import features
from covid_cxr.data.sources.base import Candidate, Source, file_candidate, list_files, subdirs

SPLITS = ("train", "test", "val")
CLASS_FOLDERS = {"NORMAL": features.NORMAL, "PNEUMONIA": features.PNEUMONIA}
_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),
    re.compile(r"^(NORMAL\d*-IM-\d+)-", re.IGNORECASE),
    re.compile(r"^(IM-\d+)-", re.IGNORECASE),
)


def patient_id_of(filename: str) -> str:
    stem = os.path.splitext(os.path.basename(filename))[0]
    for pattern in _PATTERNS:
        m = pattern.match(stem)
        if m:
            return m.group(1)
    return stem


class KermanySource(Source):
    name = "kermany"
    layout = "the Kaggle chest-xray-pneumonia layout: train|test|val/NORMAL|PNEUMONIA/*.jpeg"

    def _base(self) -> str:
        for base in (self.root, os.path.join(self.root, "chest_xray")):
            if os.path.isdir(base) and any(
                os.path.isdir(os.path.join(base, s, c)) for s in SPLITS for c in CLASS_FOLDERS
            ):
                return base
        raise self.layout_error("no train|test|val/NORMAL|PNEUMONIA folder found")

    def validate(self) -> None:
        self._base()

    def candidates(self) -> Iterator[Candidate]:
        base = self._base()
        for split in subdirs(base):
            for folder in subdirs(os.path.join(base, split)):
                finding = CLASS_FOLDERS.get(folder)
                reject = None if split in SPLITS and finding else f"unknown folder: {split}/{folder}"
                for path in list_files(os.path.join(base, split, folder)):
                    yield file_candidate(self, path, finding, reject, patient_id=patient_id_of(path))
