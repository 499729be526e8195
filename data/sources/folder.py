"""Any class-per-subfolder tree: ``ROOT/<class folder>/**/<image>`` with a user class map.

``class_map`` maps folder names to findings, e.g. ``{"COVID": "covid", "healthy": "normal"}``
(CLI: ``--class-map COVID=covid,healthy=normal``). Without a map, folders named like a finding
(``covid``, ``normal``, ``pneumonia``, ``other_opacity``, any case) map to it. Files in unmapped
folders are rejected ("unmapped class folder", the folder written as ``folder-<pseudonym>``); image files directly under ROOT are rejected
("not in a class folder"); other top-level files (README, CSV ...) are not inputs.

DICOM files are welcome anywhere: their PatientID (pseudonymized) groups a patient's images; other
files are each their own patient. The tree may be a hospital export (``private_names``): curation
writes every file's ``source_ref`` as its class folder and a pseudonym (``curate._public_ref``).
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Mapping, Optional

from covid_cxr.data import features, images
from covid_cxr.data.sources.base import Candidate, Source, SourceError, file_candidate, list_files, subdirs


def parse_class_map(text: str) -> dict[str, str]:
    """"COVID=covid,healthy=normal" -> {"COVID": "covid", "healthy": "normal"}; ValueError if malformed."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        folder, sep, finding = item.partition("=")
        folder, finding = folder.strip(), finding.strip().lower()
        if not sep or not folder or not finding:
            raise ValueError(f"bad class map entry {item.strip()!r}: expected FOLDER=FINDING")
        if finding not in features.FINDINGS:
            raise ValueError(f"bad class map entry {item.strip()!r}: finding must be one of {', '.join(features.FINDINGS)}")
        if folder in out:
            raise ValueError(f"bad class map: folder {folder!r} is mapped twice")
        out[folder] = finding
    if not out:
        raise ValueError("empty class map: expected FOLDER=FINDING[,FOLDER=FINDING...]")
    return out


def mapped_finding(class_map: Mapping[str, str], folder: str) -> Optional[str]:
    """The finding a ``--class-map`` gives ``folder``: by its exact name, case included, in curation and
    `covid-cxr evaluate` alike, so one map picks the same films in both (a map is explicit; folder
    names without one are matched in any case)."""
    return class_map.get(folder)


def unmatched_names(class_map: Mapping[str, str], folders: Iterable[str]) -> list[str]:
    """The map's folder names that :func:`mapped_finding` matches to none of ``folders``: a typo, not an
    empty class."""
    present = set(folders)
    return [name for name in class_map if name not in present]


def _not_shown(folders: list[str]) -> str:
    return f"{len(folders)} top folder(s) there, not shown: they may be patients' names"


class FolderSource(Source):
    name = "folder"
    layout = "one subfolder per class, mapped to findings with --class-map FOLDER=FINDING,..."
    private_names = True

    def __init__(self, root: str, class_map: Optional[Mapping[str, str]] = None):
        self.class_map = dict(class_map) if class_map else None
        super().__init__(root)

    def validate(self) -> None:
        folders = subdirs(self.root)
        if not folders:
            raise self.layout_error("no class subfolders")
        if self.class_map is not None:
            bad = [f for f in self.class_map.values() if f not in features.FINDINGS]
            if bad:
                raise SourceError(f"folder source: class map finding(s) {', '.join(bad)} not in {', '.join(features.FINDINGS)}")
            missing = unmatched_names(self.class_map, folders)
            if missing:  # the map's own names only: the tree's may be patients' (README: "not shown")
                raise SourceError(f"folder source at {self.root}: class map names folder(s) {', '.join(missing)} "
                                  f"that do not exist (exact names, case included; {_not_shown(folders)})")
        elif not any(f.lower() in features.FINDINGS for f in folders):
            raise SourceError(f"folder source at {self.root}: no folder is named like a finding "
                              f"({', '.join(features.FINDINGS)}, any case) and no --class-map ({_not_shown(folders)})")

    def finding_of(self, folder: str) -> Optional[str]:
        if self.class_map is not None:
            return mapped_finding(self.class_map, folder)
        return folder.lower() if folder.lower() in features.FINDINGS else None

    def names_a_class(self, folder: str) -> bool:
        return self.finding_of(folder) is not None

    def candidates(self) -> Iterator[Candidate]:
        for name in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, name)
            if os.path.isfile(path) and not name.startswith(".") and images.is_image_file(path):
                yield Candidate(self.name, self.ref(path), path, reject="not in a class folder")
        for folder in subdirs(self.root):
            finding = self.finding_of(folder)
            # Not named: an unmapped folder may be named by patient (its refs show a pseudonym of it).
            reject = None if finding else "unmapped class folder: neither named like a finding nor in --class-map"
            for path in list_files(os.path.join(self.root, folder)):
                # patient_id None: a DICOM's PatientID, else the file is its own patient.
                yield file_candidate(self, path, finding, reject)
