"""ieee8023/covid-chestxray-dataset (Cohen et al.): ``metadata.csv`` + ``images/``.

One candidate per metadata row (a file listed twice, under two patients, gives two candidates: the
second is rejected as a near-duplicate and the two patients share a group), plus a rejection for each
file of the image folder that no row names. Checks, in order:

* ``modality`` must be ``X-ray`` -> else ``not an X-ray: CT``;
* ``view`` must be frontal: ``PA``, ``AP``, ``AP Supine`` (``AP Erect`` and other ``AP ...`` -> AP)
  -> ``L``/lateral: ``lateral view: L``; blank: ``unknown view: blank``; ``?``: ``unknown view: ?``;
* ``finding`` (both snapshot styles: ``COVID-19`` / ``Pneumonia/Viral/COVID-19``, with extras such
  as ``, ARDS``): see ``finding_of``.

Patient id: ``patientid``; sex/age from the ``sex``/``age`` columns.
"""
from __future__ import annotations

import os
import re
from typing import Iterator, Optional

from covid_cxr.data import dicom, features, images
from covid_cxr.data.sources.base import Candidate, Source, list_files, read_csv

REQUIRED_COLUMNS = ("patientid", "finding", "view", "modality", "filename")

# Components of a finding string (split on "/" and ",") that mean a non-COVID pneumonia.
PNEUMONIA_TERMS = frozenset(
    {
        "pneumonia", "viral", "bacterial", "fungal", "lipoid", "aspiration",
        "sars", "mers", "mers-cov", "influenza", "h1n1", "varicella", "herpes", "rsv",
        "pneumocystis", "aspergillosis", "candida", "histoplasmosis", "cryptococcus",
        "streptococcus", "staphylococcus", "mrsa", "klebsiella", "legionella", "mycoplasma",
        "mycoplasma bacterial pneumonia", "chlamydophila", "nocardia", "e.coli", "e. coli",
        "haemophilus", "pseudomonas", "moraxella",
    }
)
# Lung opacities that are labelled but are not a pneumonia.
OTHER_OPACITY_TERMS = frozenset({"ards", "tuberculosis"})
UNLABELLED = frozenset({"", "todo", "unknown"})


def finding_of(text: str) -> tuple[Optional[str], Optional[str]]:
    """Cohen ``finding`` -> (finding, None) or (None, rejection reason).

    COVID-19 anywhere -> covid ("COVID-19", "COVID-19, ARDS", "Pneumonia/Viral/COVID-19");
    "No Finding" -> normal; any pneumonia or pneumonia pathogen (SARS, MERS, Pneumocystis,
    Streptococcus, Klebsiella, Legionella, Mycoplasma, E.Coli, Varicella, Influenza, Lipoid, Bacterial,
    "Pneumonia/..." ...) -> pneumonia; ARDS / Tuberculosis alone -> other_opacity;
    "todo"/"Unknown"/blank -> "unlabelled"; anything else -> "unrecognised finding" (never guessed).
    """
    raw = (text or "").strip()
    low = raw.lower()
    if low in UNLABELLED:
        return None, f"unlabelled: {raw or 'blank'}"
    parts = {p.strip() for p in re.split(r"[/,]", low) if p.strip()}
    if any(p in ("covid-19", "covid19", "covid", "sars-cov-2") for p in parts):
        return features.COVID, None
    if low == "no finding":
        return features.NORMAL, None
    if parts & PNEUMONIA_TERMS or "pneumonia" in low:
        return features.PNEUMONIA, None
    if parts and parts <= OTHER_OPACITY_TERMS:
        return features.OTHER_OPACITY, None
    return None, f"unrecognised finding: {raw}"


def view_of(text: str) -> tuple[Optional[str], Optional[str]]:
    """Cohen ``view`` -> (record view, None) or (None, rejection reason)."""
    raw = (text or "").strip()
    low = raw.lower()
    if low == "pa":
        return "PA", None
    if low == "ap supine":
        return "AP Supine", None
    if low == "ap" or low.startswith("ap "):
        return "AP", None
    if low in ("l", "lateral", "ll", "rl"):
        return None, f"lateral view: {raw}"
    if low in ("", "?"):
        return None, f"unknown view: {raw or 'blank'}"
    return None, f"not a frontal view: {raw}"


def age_of(text: str) -> int:
    try:
        age = int(float((text or "").strip()))
    except (ValueError, OverflowError):  # OverflowError: "inf", "1e400" (a float, but no whole number of years)
        return features.UNKNOWN_AGE
    return dicom.reportable_age(age)


def sex_of(text: str) -> str:
    s = (text or "").strip().upper()
    return s if s in ("M", "F") else features.UNKNOWN


class CohenSource(Source):
    name = "cohen"
    layout = "the ieee8023/covid-chestxray-dataset layout: metadata.csv + images/"

    def names_a_class(self, folder: str) -> bool:
        # metadata.csv's `folder` column: the repository's own image folders. Any other name is kept for
        # a public image, but a DICOM file's folder may be a hospital's (named by patient or study).
        return folder in ("images", "volumes")

    def validate(self) -> None:
        path = os.path.join(self.root, "metadata.csv")
        if not os.path.isfile(path):
            raise self.layout_error("metadata.csv not found")
        header, _ = read_csv(path)
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise self.layout_error(f"metadata.csv lacks column(s) {', '.join(missing)}")
        if not os.path.isdir(os.path.join(self.root, "images")):
            raise self.layout_error("images/ not found")

    def candidates(self) -> Iterator[Candidate]:
        _, rows = read_csv(os.path.join(self.root, "metadata.csv"))
        out: list[tuple[str, int, Candidate]] = []
        named: set[str] = set()
        for n, row in enumerate(rows):
            folder = (row.get("folder") or "images").strip() or "images"
            filename = (row.get("filename") or "").strip()
            ref = f"{folder}/{filename}"
            path = os.path.normpath(os.path.join(self.root, folder, filename))
            if None in row or None in row.values():  # more or fewer fields than the header
                which = "more" if None in row else "fewer"
                out.append((ref, n, Candidate(self.name, f"metadata.csv row {n + 1}", None,
                                              reject=f"malformed metadata.csv row: {which} fields than the header")))
                continue
            named.add(path)
            inside = path.startswith(self.root + os.sep)
            exists = bool(filename) and inside and os.path.isfile(path)
            view, reject = None, None
            modality = (row.get("modality") or "").strip()
            if not inside:
                reject = "outside the source: metadata.csv names a file outside its folder"
            elif modality.lower() not in ("x-ray", "xray", "cxr"):
                reject = f"not an X-ray: {modality or 'blank'}"
            else:
                view, reject = view_of(row.get("view", ""))
            finding = None
            if reject is None:
                finding, reject = finding_of(row.get("finding", ""))
            if reject is None and not exists:  # a named pipe or a broken link is not opened either
                finding, reject = None, images.not_regular(path) or "missing image file"
            out.append((ref, n, Candidate(
                self.name, ref, path if exists else None, finding=finding, reject=reject,
                patient_id=(row.get("patientid") or "").strip() or None,
                view=view or features.UNKNOWN, sex=sex_of(row.get("sex", "")), age=age_of(row.get("age", "")),
            )))
        for path in list_files(os.path.join(self.root, "images")):
            if os.path.normpath(path) not in named:
                ref = self.ref(path)
                out.append((ref, len(rows), Candidate(self.name, ref, path, reject="not in metadata.csv")))
        out.sort(key=lambda t: (t[0], t[1]))
        for _, _, c in out:
            yield c
