"""The films an evaluation got wrong, most confidently wrong first.

Metrics say how often the model errs; a reviewer also needs to see *which* films, to tell a model
fault from a label the pixels do not support (a PCR-positive film with clear lungs, a "normal"
film with a pacemaker and lines). :func:`misclassified` lists them for report.json and the HTML
report; :func:`gallery_png` draws the first ones as captioned thumbnails (errors.png). Films are
named by their record / file reference, plus the curation's keyed patient pseudonym for curated
TFRecords (a folder tree's groups are plain hashes of DICOM PatientIDs: those stay internal).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from covid_cxr.data import features

MAX_LISTED = 50  # report.json / HTML table rows
MAX_GALLERY = 24  # thumbnails in errors.png
ORDER = "most confidently wrong first: P(predicted class) - P(true class), descending"


def misclassified(task: features.Task, labels: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray,
                  groups: Optional[Sequence[str]], refs: Sequence[str],
                  slices: Optional[Mapping[str, Sequence[str]]] = None, limit: int = MAX_LISTED) -> dict:
    """{"n": errors in all, "order": ..., "listed": the first `limit` errors as dicts}; `groups`
    (pseudonymous patient groups to show) may be None."""
    y = np.asarray(labels, np.int64)
    pred = np.asarray(predicted, np.int64)
    prob = np.asarray(probabilities, np.float64)
    wrong = np.flatnonzero(y != pred)
    margin = prob[wrong, pred[wrong]] - prob[wrong, y[wrong]]
    ordered = wrong[np.argsort(-margin, kind="stable")]
    listed = []
    for i in ordered[:limit]:
        entry = {"index": int(i), "ref": refs[i], "true": task.classes[y[i]], "predicted": task.classes[pred[i]],
                 "covid_probability": float(prob[i, task.positive_index])}
        if groups is not None:
            entry["group"] = groups[i]
        entry.update({key: values[i] for key, values in (slices or {}).items()})
        listed.append(entry)
    return {"n": int(wrong.size), "order": ORDER, "listed": listed}


def caption(entry: Mapping) -> str:
    where = " ".join(str(entry[k]) for k in (features.SOURCE, features.VIEW)
                     if entry.get(k) not in (None, features.UNKNOWN))
    return f"{entry['true']} -> {entry['predicted']}\nP(covid) {entry['covid_probability']:.2f}" + (
        f"\n{where}" if where else "")


def gallery_png(encoded_images: Sequence[bytes], errors: Mapping, limit: int = MAX_GALLERY) -> Optional[bytes]:
    """Thumbnails of the first `limit` listed errors with their captions; None when there are none."""
    from covid_cxr.data import images
    from covid_cxr.evaluation import plots

    entries = errors["listed"][:limit]
    if not entries:
        return None
    return plots.gallery_png([images.decode_png(encoded_images[e["index"]]) for e in entries],
                             [caption(e) for e in entries],
                             title=f"Misclassified: {len(entries)} of {errors['n']}, most confidently wrong first")
