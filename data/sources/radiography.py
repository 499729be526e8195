"""Kaggle "COVID-19 Radiography Database": one folder per class.

Folders (case-insensitive): ``COVID`` / ``COVID-19`` -> covid, ``Normal`` -> normal,
``Viral Pneumonia`` -> pneumonia, ``Lung_Opacity`` -> other_opacity. Later releases keep the films in
``<class>/images/`` beside ``<class>/masks/`` (lung masks, not inputs: counted, not read); the ``*.metadata.xlsx``
files at the top level are not inputs either. No patient ids are published: every file is its own
patient (its near-duplicates are still merged into one group by curation). Its COVID class re-uses
Cohen images resized to 224 px, and its Normal/Viral Pneumonia classes re-use RSNA and Kermany films:
curation's cross-source duplicate detection is what keeps them apart.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional

from covid_cxr.data import features
from covid_cxr.data.sources.base import Candidate, Source, file_candidate, list_files, subdirs

CLASS_FOLDERS = {
    "covid": features.COVID,
    "covid-19": features.COVID,
    "normal": features.NORMAL,
    "viral pneumonia": features.PNEUMONIA,
    "lung_opacity": features.OTHER_OPACITY,
    "lung opacity": features.OTHER_OPACITY,
}
MASKS = "lung-mask files not read (masks/ holds masks, not films)"


def not_a_film(ref: str) -> Optional[str]:
    """Why the image file at ``ref`` ("/"-separated, relative to the tree's root) is not a film: MASKS
    for one in a ``masks/`` folder (this layout's lung masks), else None. Curation and ``covid-cxr
    evaluate``'s folder walk both count such files, not read."""
    return MASKS if "masks" in ref.split("/")[:-1] else None


class RadiographySource(Source):
    name = "radiography"
    layout = "the COVID-19 Radiography Database layout: COVID/, Normal/, Viral Pneumonia/, Lung_Opacity/"

    def validate(self) -> None:
        if not any(d.lower() in CLASS_FOLDERS for d in subdirs(self.root)):
            raise self.layout_error("no class folder found")

    def candidates(self) -> Iterator[Candidate]:
        for folder in subdirs(self.root):
            finding = CLASS_FOLDERS.get(folder.lower())
            reject = None if finding else f"unknown class folder: {folder}"
            directory = os.path.join(self.root, folder)
            if os.path.isdir(os.path.join(directory, "images")):
                directory = os.path.join(directory, "images")  # masks/ beside it are not inputs
            for path in list_files(directory):
                if self.not_an_input(path):  # a class with masks/ but no images/: still not films
                    continue
                # No patient ids: the file is its own patient (patient_id=ref).
                yield file_candidate(self, path, finding, reject, patient_id=self.ref(path))

    def not_an_input(self, path: str) -> Optional[str]:
        return not_a_film(self.ref(path))
