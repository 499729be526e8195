#!/usr/bin/env python
"""How often a served model's atypical-input check flags films it was never meant to see.

Every input goes the way `covid-cxr predict` takes it (curation's preparation, then the served
`predict_image` signature), so the figures are those of the served flag. Sets, from the shared corpus
(``--shared``, default ../shared/data) where present:

* Cohen's CT slices and Cohen's lateral films (curation refuses both; as PNG/JPEG they carry no
  header that could say so, so only the check can catch them);
* Kermany's paediatric normals and pneumonias (never trained on by the adult tasks' models);
* the single DICOM samples (one is an abdominal film);
and, always, synthetic pictures with no chest in them (uniform noise, smooth ramps).

How many films *like the training films* are flagged is in `covid-cxr evaluate`'s report on the
pipeline's test split (``atypical``); it is about 1 - ``training.atypical_quantile`` by construction.

    .venv/bin/python scripts/atypical_check.py --model runs/q/serving-covid-vs-normal [--json]
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys

import covid_cxr

covid_cxr.quiet_import_warnings(__name__)

import numpy as np  # noqa: E402

from covid_cxr.data import images  # noqa: E402
from covid_cxr.data.testing import REAL_DATA  # noqa: E402
from covid_cxr.evaluation import metrics  # noqa: E402
from covid_cxr.pipeline.config import user_path  # noqa: E402
from covid_cxr.serving import predict, typicality  # noqa: E402

SYNTHETIC_COUNT = 8


def corpus_sets(shared: str) -> dict[str, list[str]]:
    """Set name -> files, for the sources present under ``shared``."""
    sets: dict[str, list[str]] = {}
    cohen = os.path.join(shared, "cohen-covid-chestxray")
    if os.path.isfile(os.path.join(cohen, "metadata.csv")):
        with open(os.path.join(cohen, "metadata.csv"), newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        path = lambda row: os.path.join(cohen, row.get("folder") or "images", row["filename"])  # noqa: E731
        sets["Cohen CT slices"] = [path(r) for r in rows if r.get("modality") == "CT"]
        sets["Cohen lateral films"] = [path(r) for r in rows if r.get("modality") == "X-ray" and r.get("view") == "L"]
    kermany = os.path.join(shared, "chest-xray-pneumonia")
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted(glob.glob(os.path.join(kermany, "*", label, "*")))
        if files:
            sets[f"Kermany paediatric {label.lower()}"] = files
    samples = sorted(glob.glob(os.path.join(shared, "dicom-samples", "*.dcm")))
    if samples:
        sets["DICOM samples"] = samples
    return {name: files for name, files in sets.items() if files}


def synthetic_pictures(seed: int = 0) -> dict[str, list[bytes]]:
    """Pictures with no chest in them, as curated PNG bytes."""
    rng = np.random.default_rng(seed)
    noise = [images.encode_png(rng.integers(0, 256, (256, 256), dtype=np.uint8)) for _ in range(SYNTHETIC_COUNT)]
    ramps = []
    for i in range(SYNTHETIC_COUNT):
        angle = np.pi * i / SYNTHETIC_COUNT
        y, x = np.mgrid[0:256, 0:256]
        ramp = np.cos(angle) * x + np.sin(angle) * y
        ramps.append(images.encode_png(np.uint8(255 * (ramp - ramp.min()) / max(np.ptp(ramp), 1))))
    return {"uniform noise": noise, "smooth ramps": ramps}


def flag_rows(model: predict.ServingModel, name: str, pngs: list[bytes], unreadable: int = 0) -> dict:
    outputs = model.predict_images(pngs) if pngs else {}
    atypicality = np.asarray(outputs.get(typicality.ATYPICALITY_OUTPUT, []), dtype=np.float64)
    flagged = np.asarray(outputs.get(typicality.ATYPICAL_OUTPUT, []), dtype=bool)
    return {"set": name, "n": len(pngs), "refused_or_unreadable": unreadable,
            "atypical": metrics.proportion(int(flagged.sum()), len(pngs)),
            "median_atypicality": float(np.median(atypicality)) if len(pngs) else None}


def check(model_path: str, shared: str) -> list[dict]:
    model = predict.load_model(model_path)
    if not model.metadata.get("typicality"):
        raise SystemExit(f"atypical_check: the model at {model.path} was exported without the atypical-input "
                         "check (trained before it, with training.atypical_quantile=0, or a family without "
                         "pooled features)")
    preparation = predict.Preparation.from_metadata(model.metadata)
    rows = []
    for name, files in corpus_sets(shared).items():
        pngs, unreadable = [], 0
        for file in files:
            try:
                pngs.append(predict.prepare(file, preparation))
            except images.ImageError:  # e.g. a DICOM whose header says lateral or CT: refused before the model
                unreadable += 1
        rows.append(flag_rows(model, name, pngs, unreadable))
    rows += [flag_rows(model, name, pngs) for name, pngs in synthetic_pictures().items()]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| set | scored | refused before the model | atypical (95% CI) | median atypicality |",
             "|---|---|---|---|---|"]
    for row in rows:
        a = row["atypical"]
        share = f"{a['k']}/{a['n']} = {a['value']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]" if a["n"] else "-"
        median = f"{row['median_atypicality']:.2f}" if row["median_atypicality"] is not None else "-"
        lines.append(f"| {row['set']} | {row['n']} | {row['refused_or_unreadable']} | {share} | {median} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=user_path, help="serving dir, pushed version or exported SavedModel")
    parser.add_argument("--shared", default=str(REAL_DATA), type=user_path, help="the shared corpus (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        rows = check(args.model, args.shared)
    except predict.ModelNotFound as e:
        raise SystemExit(f"atypical_check: {e.format_message()}") from None
    except ValueError as e:  # e.g. a hand-edited metadata asset whose curation settings cannot be repeated
        raise SystemExit(f"atypical_check: {e}") from None
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
