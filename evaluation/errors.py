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
from covid_cxr.evaluation import metrics

MAX_LISTED = 50  # report.json / HTML table rows
MAX_GALLERY = 24  # thumbnails in a gallery
BINARY_ORDER = "most confidently wrong first: distance of P(covid) from the decision threshold in log-odds, descending"
MULTICLASS_ORDER = "most confidently wrong first: P(predicted class) - P(true class), descending"
THREE_CLASS_THRESHOLD_ORDER = ("most confidently wrong first, in log-odds, descending: a COVID film missed or a film "
                               "called COVID by the distance of P(covid) from the decision threshold; normal and "
                               "pneumonia confused by log(P(predicted) / P(true))")


def misclassified(task: features.Task, labels: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray,
                  groups: Optional[Sequence[str]], refs: Sequence[str],
                  slices: Optional[Mapping[str, Sequence[str]]] = None, limit: int = MAX_LISTED,
                  threshold: Optional[float] = None) -> dict:
    """{"n": errors in all, "order": ..., "listed": the first `limit` errors as dicts}.

    `groups` (pseudonymous patient groups to show) may be None. `threshold` is the model's decision
    threshold on P(covid) when its label uses one (binary tasks; three-class exported with the COVID
    threshold rule), else None. How wrong a film is, is how far it is from the decision it got:
    whether COVID was called is P(covid) against `threshold` (log-odds, so 0.99 vs 0.9 counts like
    0.1 vs 0.01); a three-class pneumonia called normal (or back) lost to the more probable of the
    two, by log(P(predicted) / P(true)), also log-odds. Without a threshold (an argmax), the gap
    P(predicted) - P(true)."""
    y = np.asarray(labels, np.int64)
    pred = np.asarray(predicted, np.int64)
    prob = np.asarray(probabilities, np.float64)
    wrong = np.flatnonzero(y != pred)
    if threshold is None:
        order = MULTICLASS_ORDER
        confidence = prob[wrong, pred[wrong]] - prob[wrong, y[wrong]]
    else:
        order = BINARY_ORDER if task.is_binary else THREE_CLASS_THRESHOLD_ORDER
        covid = task.positive_index
        confidence = np.abs(metrics.logit(prob[wrong, covid]) - metrics.logit(threshold))
        between_others = (y[wrong] != covid) & (pred[wrong] != covid)  # never in a binary task
        log_prob = np.log(np.clip(prob, 1e-7, 1.0))  # clipped as metrics.logit clips: 0 stays finite
        confidence[between_others] = (log_prob[wrong, pred[wrong]] - log_prob[wrong, y[wrong]])[between_others]
    ordered = wrong[np.argsort(-confidence, kind="stable")]
    listed = []
    for i in ordered[:limit]:
        entry = {"index": int(i), "ref": refs[i], "true": task.classes[y[i]], "predicted": task.classes[pred[i]],
                 "covid_probability": float(prob[i, task.positive_index])}
        if not task.is_binary:  # P(covid) alone says little about a pneumonia called normal
            entry["probabilities"] = {c: float(p) for c, p in zip(task.classes, prob[i])}
        if groups is not None:
            entry["group"] = groups[i]
        entry.update({key: values[i] for key, values in (slices or {}).items()})
        listed.append(entry)
    return {"n": int(wrong.size), "order": order, "listed": listed}


def where(entry: Mapping) -> str:
    """"cohen PA": the film's known source and view."""
    return " ".join(str(entry[k]) for k in (features.SOURCE, features.VIEW)
                    if entry.get(k) not in (None, features.UNKNOWN))


def odds(entry: Mapping) -> str:
    """"P(covid) 0.12"; three-class: "P(pneumonia) 0.20 P(normal) 0.70" (true class, then predicted)."""
    if "probabilities" in entry:
        return " ".join(f"P({c}) {entry['probabilities'][c]:.2f}" for c in (entry["true"], entry["predicted"]))
    return f"P(covid) {entry['covid_probability']:.2f}"


def caption(entry: Mapping) -> str:
    """"covid -> normal / P(covid) 0.12 / cohen PA", one item per line."""
    text = f"{entry['true']} -> {entry['predicted']}\n{odds(entry)}"
    return text + (f"\n{where(entry)}" if where(entry) else "")


def gallery_png(encoded_images: Sequence[bytes], entries: Sequence[Mapping], title: str,
                limit: int = MAX_GALLERY) -> Optional[bytes]:
    """Thumbnails of the first `limit` entries (``encoded_images[entry["index"]]``) with their
    captions, under `title`; None when there are none."""
    from covid_cxr.data import images
    from covid_cxr.evaluation import plots

    entries = list(entries)[:limit]
    if not entries:
        return None
    return plots.gallery_png([images.decode_png(encoded_images[e["index"]]) for e in entries],
                             [caption(e) for e in entries], title=title)
