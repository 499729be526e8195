#!/usr/bin/env python
"""Test films whose copy or whose patient sits in another split, for curated directories.

For each curated directory: every film's ExampleGen split (its ``group`` dealt as TFX's partition
function deals it, with the pipeline's bucket counts: ``pipeline.split_of``), then the test films that

* have a film in train or eval within perceptual-hash distance ``--threshold`` in another group:
  a re-crop of the same film that the curation's grouping did not join (default: the current
  group threshold, so a curation made before it existed shows what it missed);
* are RSNA films of the shared corpus whose NIH patient has a film in train or eval: RSNA's
  patientId names a film, and curations without RSNA's NIH mapping grouped by it. The NIH patient
  of a curated film is found by its image hash against the corpus's MANIFEST.csv.

It reads manifests, so it can tell how much a curation made before a grouping fix leaked, split by
split. With ``--roots`` (one pipeline root per curated directory, the run trained on it) it also
scores that run's model on its test split and prints sensitivity / specificity at the stored
threshold on every test film and on the films of the groups that did not leak:

    .venv/bin/python scripts/leak_check.py runs37/curated-covid-vs-normal-split5*
    .venv/bin/python scripts/leak_check.py runs37/curated-covid-vs-normal-split52 --roots runs37/root-covid-vs-normal-split52
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import re
import sys

import covid_cxr

covid_cxr.quiet_import_warnings(__name__)

from covid_cxr.data import dedupe, features, images  # noqa: E402
from covid_cxr.data.testing import REAL_DATA, REAL_SOURCE_DIRS  # noqa: E402
from covid_cxr.pipeline.config import DataConfig, user_path  # noqa: E402
from covid_cxr.pipeline.pipeline import split_of  # noqa: E402  (ExampleGen's own deal, pinned to TFX's function)

NIH_FILE = re.compile(r"(\d{8})_\d{3}\.png$")


def nih_patient_by_hash(settings: dict, cache: dict) -> dict[str, str]:
    """{image hash under these curation settings: NIH patient} for the corpus's RSNA-style films."""
    key = (settings["max_side"], settings["crop"], settings["equalize"])
    if key not in cache:
        prefix = f"{REAL_SOURCE_DIRS['rsna']}/"
        with open(REAL_DATA / "MANIFEST.csv", newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["path"].startswith(prefix)]
        found = {}
        for row in rows:
            processed, _ = images.process_job((str(REAL_DATA / row["path"]), *key))
            match = NIH_FILE.search(row["source_path"])
            if processed is not None and match:
                found[processed.phash.hex()] = match.group(1)
        cache[key] = found
    return cache[key]


def check(curated: str, threshold: int, data: DataConfig, cache: dict) -> dict:
    with open(os.path.join(curated, features.MANIFEST), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(curated, features.SUMMARY), encoding="utf-8") as f:
        settings = json.load(f)["settings"]
    split = split_of([r["group"] for r in rows], data)
    test = [i for i, s in enumerate(split) if s == "test"]
    copies = set()
    for i, j, _ in dedupe.near_pairs([bytes.fromhex(r["hash"]) for r in rows], threshold):
        if rows[i]["group"] != rows[j]["group"] and "test" in (split[i], split[j]) and split[i] != split[j]:
            copies.add(i if split[i] == "test" else j)
    patients = set()
    if REAL_DATA.is_dir():
        nih = nih_patient_by_hash(settings, cache)
        patient_of = {i: nih.get(r["hash"]) for i, r in enumerate(rows) if r["source"] == "rsna"}
        trained = {p for i, p in patient_of.items() if p and split[i] != "test"}
        patients = {i for i in test if patient_of.get(i) and patient_of[i] in trained}
    by_label = collections.Counter(rows[i]["label"] for i in copies | patients)
    return {"curated": curated, "test_films": len(test), "test_with_copy_elsewhere": len(copies),
            "test_rsna_patient_elsewhere": len(patients), "leaked_by_label": dict(sorted(by_label.items())),
            "rsna_checked": REAL_DATA.is_dir(), "leaked_groups": sorted({rows[i]["group"] for i in copies | patients})}


def score_without(root: str, leaked_groups: set) -> dict:
    """Sensitivity / specificity of the root's model at its stored threshold on its test split: all
    films, and the films of groups that did not leak."""
    import numpy as np

    from covid_cxr.evaluation import artifacts, metrics
    from covid_cxr.evaluation import evaluate as ev
    from covid_cxr.serving import predict

    model_dir, examples = artifacts.trained_run(root)
    model = predict.load_model(os.path.join(model_dir, "Format-Serving"))
    data = ev.load_tfrecords(os.path.join(examples, "Split-test"))
    covid = data.labels == model.task.positive_index
    called = np.asarray(model.predict_examples(data.serialized)["covid_probability"]).ravel() > model.threshold
    clean = np.array([g not in leaked_groups for g in data.groups])
    out = {}
    for name, keep in (("all", np.ones_like(clean)), ("not leaked", clean)):
        out[name] = {"sensitivity": metrics.proportion(int((called & covid & keep).sum()), int((covid & keep).sum())),
                     "specificity": metrics.proportion(int((~called & ~covid & keep).sum()), int((~covid & keep).sum()))}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("curated", nargs="+", type=user_path, help="curated directories (manifest.csv, summary.json)")
    parser.add_argument("--threshold", type=int, default=dedupe.GROUP_THRESHOLD,
                        help="hash distance under which two films count as one (default: the group threshold)")
    defaults = DataConfig()
    parser.add_argument("--buckets", type=int, nargs=3, metavar=("TRAIN", "EVAL", "TEST"),
                        default=(defaults.train_buckets, defaults.eval_buckets, defaults.test_buckets),
                        help="data.train_buckets / eval_buckets / test_buckets of the runs (default: the config's)")
    parser.add_argument("--roots", nargs="+", default=None, type=user_path, metavar="ROOT",
                        help="the pipeline root trained on each curated directory, in the same order")
    args = parser.parse_args(argv)
    if args.roots is not None and len(args.roots) != len(args.curated):
        parser.error(f"--roots needs one pipeline root per curated directory ({len(args.curated)})")
    if min(args.buckets) < 1:
        parser.error("--buckets must all be at least 1")
    data = DataConfig(**dict(zip(("train_buckets", "eval_buckets", "test_buckets"), args.buckets)))
    cache: dict = {}
    for n, curated in enumerate(args.curated):
        if not os.path.isfile(os.path.join(curated, features.MANIFEST)):
            print(f"{curated}: no {features.MANIFEST}: not a curated directory", file=sys.stderr)
            return 2
        try:
            r = check(curated, args.threshold, data, cache)
        except (OSError, KeyError, ValueError) as e:  # a damaged manifest or summary: name it, no traceback
            print(f"{curated}: cannot check: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        rsna = r["test_rsna_patient_elsewhere"] if r["rsna_checked"] else "not checked (no shared corpus)"
        print(f"{os.path.basename(os.path.normpath(curated))}: {r['test_films']} test films; with a copy "
              f"(distance <= {args.threshold}) in train/eval: {r['test_with_copy_elsewhere']}; RSNA films whose NIH "
              f"patient is in train/eval: {rsna}; by label {r['leaked_by_label']}")
        if args.roots is not None:
            for name, m in score_without(args.roots[n], set(r["leaked_groups"])).items():
                sens, spec = m["sensitivity"], m["specificity"]
                print(f"  {name:10s} test films at the stored threshold: sensitivity {sens['k']}/{sens['n']} = "
                      f"{sens['value']:.3f}, specificity {spec['k']}/{spec['n']} = {spec['value']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
