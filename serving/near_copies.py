"""Perceptual fingerprints of the films a model trained and validated on, and evaluate's check of them.

The Trainer hashes every train and eval film as the model saw it (Transform's ``image_xf``: the
decoded film, ``model.border_crop`` cut off, area-resized to ``model.image_size`` squared, stretched
to [0, 1]) with the curation hash (``images.perceptual_hash``, 256 bits) and stores them, as hex, in
the model's metadata asset under ``film_hashes``. ``covid-cxr evaluate`` puts each evaluated film
through the same decode (``preprocessing.decode_image``, same size and crop) and hash, so a film and
its curated, resized or re-encoded copy land within curation's near-copy threshold
(``dedupe.DEFAULT_THRESHOLD``). Reporting only: the figures are not changed.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from covid_cxr.data import dedupe, images

KEY = "film_hashes"  # metadata key: {"hashes": [hex], "image_size", "border_crop", "threshold"}


def hash_batch(batch) -> list[bytes]:
    """[N, size, size, 1] (or [N, size, size]) images in [0, 1] -> N perceptual hashes."""
    array = np.asarray(batch, dtype=np.float32)
    return [images.perceptual_hash(image.reshape(image.shape[0], image.shape[1])) for image in array]


def fingerprints(hashes: Iterable[bytes], image_size: int, border_crop: float) -> dict:
    """The metadata entry for films of these hashes (:func:`hash_batch` of their transformed images)."""
    return {"hashes": [h.hex() for h in hashes], "image_size": int(image_size), "border_crop": float(border_crop),
            "threshold": dedupe.DEFAULT_THRESHOLD}


def hash_encoded(encoded: Sequence[bytes], image_size: int, border_crop: float) -> list[bytes]:
    """Encoded films -> their hashes, through the Transform graph's own decode."""
    from covid_cxr.transform import preprocessing

    return [images.perceptual_hash(preprocessing.decode_image(e, image_size, border_crop).numpy()[..., 0])
            for e in encoded]


def check(metadata: Mapping, encoded: Sequence[bytes], refs: Sequence[str]) -> dict:
    """report["near_copies"]: which evaluated films (``refs``, their shown names) are near copies of a
    film the model trained or validated on; ``checked`` False, with a note, for a model without fingerprints."""
    stored = (metadata or {}).get(KEY)
    if ((metadata or {}).get("data_summary") or {}).get("synthetic"):
        # The generator draws every film from one template: different synthetic films fall within the
        # near-copy distance of each other (the demo's 64 px films: 16-62 bits apart), so flags would be false.
        return {"checked": False, "note": "the model was trained on synthetic films, which all look alike to the "
                                          "near-copy hash: not checked"}
    if not stored or not stored.get("hashes"):
        return {"checked": False, "note": "the model carries no fingerprints of its training films (exported before "
                                          "they were stored): evaluated films could not be checked for near copies"}
    threshold = int(stored.get("threshold", dedupe.DEFAULT_THRESHOLD))
    trained = [bytes.fromhex(h) for h in stored["hashes"]]
    evaluated = hash_encoded(encoded, int(stored["image_size"]), float(stored.get("border_crop", 0.0)))
    _, distance = dedupe.nearest(evaluated, trained)
    flagged = [i for i in range(len(encoded)) if distance[i] <= threshold]
    return {"checked": True, "n": len(encoded), "copies": len(flagged), "threshold": threshold,
            "trained_films": len(stored["hashes"]), "films": [refs[i] for i in flagged]}


def warning_text(result: Optional[Mapping]) -> Optional[str]:
    """The WARNING line when evaluated films are near copies of training/validation films."""
    if not result or not result.get("checked") or not result.get("copies"):
        return None
    return (f"{result['copies']} of {result['n']} films are near copies of films the model trained or validated on: "
            "the figures overstate it (reporting only: the figures include them)")


def summary_line(result: Optional[Mapping]) -> Optional[str]:
    """One line for the terminal, the HTML report and the model card: the warning, or the note."""
    if not result:
        return None
    if not result.get("checked"):
        return "near-copy check: " + result["note"]
    return "WARNING: " + warning_text(result) if result.get("copies") else None
