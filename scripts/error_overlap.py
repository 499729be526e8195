#!/usr/bin/env python
"""Which held-out films stay wrong from run to run, across pipeline roots trained on the same data.

Each root's newest Trainer model scores its newest ExampleGen `test` split through the serving
signature, at its own stored threshold (argmax for older three-class models). All roots must hold the very same
test records (the same curated data and split; e.g. repeated runs, or one `--set` change each), or
the script stops. Printed: each run's misclassified count, how many films were wrong in 1, 2, ...
of the runs, and the films wrong in every run, most confidently wrong first. ``--out`` draws those
films as captioned thumbnails (evaluation/errors.py's gallery).

A film wrong in every run is what retraining does not fix: look at it before changing the model.
Films are named by record number, the curation's keyed patient pseudonym, source, view and sex.

    .venv/bin/python scripts/error_overlap.py runs/a/root-covid-vs-normal runs/b/root-covid-vs-normal --out wrong.png
"""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from typing import Optional

from covid_cxr.evaluation import artifacts, errors
from covid_cxr.evaluation import evaluate as ev
from covid_cxr.serving import predict


def run_errors(model_dir: str, data) -> tuple[dict, Optional[float]]:
    """(the run's misclassified test films {index: entry}, most confidently wrong first; its threshold or None)."""
    model = predict.load_model(os.path.join(model_dir, "Format-Serving"))
    task = ev.task_of(model, data)
    outputs = model.predict_examples(data.serialized)
    wrong = errors.misclassified(task, data.labels, outputs["label_index"], outputs["probabilities"],
                                 data.groups, data.refs, data.slices, limit=data.n, threshold=model.threshold)
    return {e["index"]: e for e in wrong["listed"]}, model.threshold


def overlap(roots: list[str]) -> tuple[dict, list]:
    """(summary for printing / JSON, the test images by index)."""
    runs, first = [], None
    for root in roots:
        model_dir, examples = artifacts.trained_run(root)
        data = ev.load_tfrecords(os.path.join(examples, "Split-test"))
        if first is None:
            first = data
        elif data.serialized != first.serialized:
            raise ValueError(f"{root}: its test split is not {roots[0]}'s; compare runs of the same curated data and split")
        wrong, threshold = run_errors(model_dir, first)
        runs.append({"root": root, "threshold": threshold, "wrong": wrong})
    times_wrong = Counter(i for run in runs for i in run["wrong"])
    # In the first run's order (most confidently wrong first); its entry stands for the film.
    persistent = [i for i in runs[0]["wrong"] if times_wrong[i] == len(runs)]
    summary = {
        "test_films": first.n,
        "runs": [{"root": r["root"], "threshold": r["threshold"], "misclassified": len(r["wrong"]),
                  "by_true_class": dict(Counter(e["true"] for e in r["wrong"].values()))} for r in runs],
        "films_by_runs_wrong": {k: n for k, n in sorted(Counter(times_wrong.values()).items())},
        "wrong_in_every_run": [dict(runs[0]["wrong"][i], covid_probability_per_run=[
            r["wrong"][i]["covid_probability"] for r in runs]) for i in persistent],
    }
    return summary, first.images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", help="pipeline roots of finished runs on the same curated data")
    parser.add_argument("--out", metavar="PNG", help="write the films wrong in every run as a thumbnail gallery")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    with ev.one_line_errors("error_overlap.py"):
        summary, test_images = overlap(args.roots)
        persistent = summary["wrong_in_every_run"]
        if args.out:
            png = errors.gallery_png(test_images, persistent, title=(
                f"Wrong in all {len(args.roots)} runs: {len(persistent)} of {summary['test_films']} test films"
                + (f" (first {errors.MAX_GALLERY} shown)" if len(persistent) > errors.MAX_GALLERY else "")))
            if png:
                with open(args.out, "wb") as f:
                    f.write(png)
            summary["gallery"] = args.out if png else None
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{summary['test_films']} test films")
    for run in summary["runs"]:
        threshold = f"threshold {run['threshold']:.3f}" if run["threshold"] is not None else "argmax"
        by_class = ", ".join(f"true {c} {n}" for c, n in sorted(run["by_true_class"].items()))
        print(f"  {run['root']}: {threshold}, misclassified {run['misclassified']} ({by_class})")
    print("films by how many runs got them wrong: "
          + ", ".join(f"{k} run(s): {n}" for k, n in summary["films_by_runs_wrong"].items()))
    print(f"wrong in every run: {len(persistent)}")
    for e in persistent:
        probabilities = " ".join(f"{p:.2f}" for p in e["covid_probability_per_run"])
        place = f", {errors.where(e)}" if errors.where(e) else ""
        print(f"  {e['ref']} group {e['group']}: {e['true']} -> {e['predicted']}{place}, P(covid) {probabilities}")
    if args.out:
        print(f"gallery: {summary['gallery'] or 'none written (no film was wrong in every run)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
