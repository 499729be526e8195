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

``--across-splits`` takes runs whose test splits differ (fresh curations with their own keys, so
records and pseudonyms differ too). A film is then recognised by its curated image bytes, which
the same source file and curation settings reproduce exactly. Printed: how often the films held
out more than once were wrong ("2 of 3"), per true class the errors that fell on films wrong every
time they were held out, and those films. A film that every model trained without it gets wrong
limits what a split's test figures can reach whenever it lands in `test`.

    .venv/bin/python scripts/error_overlap.py runs/a/root-covid-vs-normal runs/b/root-covid-vs-normal --out wrong.png
    .venv/bin/python scripts/error_overlap.py runs/*/root-covid-vs-normal-split* --across-splits --out hard.png
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections import Counter
from typing import Optional

import covid_cxr

covid_cxr.quiet_import_warnings(__name__)

from covid_cxr.evaluation import artifacts, errors  # noqa: E402
from covid_cxr.evaluation import evaluate as ev  # noqa: E402
from covid_cxr.pipeline.config import user_path  # noqa: E402
from covid_cxr.serving import predict  # noqa: E402


def run_errors(model_dir: str, data) -> tuple[dict, Optional[float], str]:
    """(the run's misclassified test films {index: entry}, most confidently wrong first; its threshold
    or None; its task)."""
    model = predict.load_model(os.path.join(model_dir, "Format-Serving"))
    task = ev.task_of(model, data)
    outputs = model.predict_examples(data.serialized)
    wrong = errors.misclassified(task, data.labels, outputs["label_index"], outputs["probabilities"],
                                 data.groups, data.refs, data.slices, limit=data.n, threshold=model.threshold)
    return {e["index"]: e for e in wrong["listed"]}, model.threshold, task.name


def _scored_runs(roots: list[str], same_test_split: bool):
    """(root, its test split, its misclassified films by index, its threshold) for each root."""
    first, tasks = None, []
    for root in roots:
        model_dir, examples = artifacts.trained_run(root)
        data = ev.load_tfrecords(os.path.join(examples, "Split-test"))
        if first is None:
            first = data
        elif same_test_split and data.serialized != first.serialized:
            raise ValueError(f"{root}: its test split is not {roots[0]}'s; compare runs of the same curated data and split"
                             " (or pass --across-splits)")
        wrong, threshold, task = run_errors(model_dir, data)
        if tasks and task != tasks[0]:  # one film's label means another class in another task
            raise ValueError(f"{root}: a {task} model; {roots[0]}'s is {tasks[0]}: compare runs of one task")
        tasks.append(task)
        yield root, data, wrong, threshold


def _run_row(root: str, threshold: Optional[float], wrong: dict) -> dict:
    return {"root": root, "threshold": threshold, "misclassified": len(wrong),
            "by_true_class": dict(Counter(e["true"] for e in wrong.values()))}


def overlap(roots: list[str]) -> tuple[dict, list]:
    """(summary for printing / JSON, the test images by index)."""
    runs, first = [], None
    for root, data, wrong, threshold in _scored_runs(roots, same_test_split=True):
        if first is None:
            first = data
        runs.append({"root": root, "threshold": threshold, "wrong": wrong})
    times_wrong = Counter(i for run in runs for i in run["wrong"])
    # In the first run's order (most confidently wrong first); its entry stands for the film.
    persistent = [i for i in runs[0]["wrong"] if times_wrong[i] == len(runs)]
    summary = {
        "test_films": first.n,
        "runs": [_run_row(r["root"], r["threshold"], r["wrong"]) for r in runs],
        "films_by_runs_wrong": {k: n for k, n in sorted(Counter(times_wrong.values()).items())},
        "wrong_in_every_run": [dict(runs[0]["wrong"][i], covid_probability_per_run=[
            r["wrong"][i]["covid_probability"] for r in runs]) for i in persistent],
    }
    return summary, first.images


def across_splits(roots: list[str]) -> tuple[dict, list]:
    """(summary for printing / JSON, the images its entries' indices point at): films matched by
    their curated image bytes over runs whose test splits differ."""
    films: dict[str, dict] = {}  # image digest -> {"held_out", "wrong": [(run number, entry)], "image": index}
    runs, images = [], []
    for number, (root, data, wrong, threshold) in enumerate(_scored_runs(roots, same_test_split=False)):
        runs.append(_run_row(root, threshold, wrong))
        for i, image in enumerate(data.images):
            film = films.setdefault(hashlib.sha256(image).hexdigest(), {"held_out": 0, "wrong": [], "image": len(images)})
            if film["image"] == len(images):
                images.append(image)
            film["held_out"] += 1
            if i in wrong:
                film["wrong"].append((number, wrong[i]))
    repeated = [f for f in films.values() if f["held_out"] > 1 and f["wrong"]]
    always = sorted((f for f in repeated if len(f["wrong"]) == f["held_out"]),
                    key=lambda f: (-f["held_out"], f["wrong"][0][1]["true"]))
    errors_by_class = Counter(e["true"] for f in films.values() for _, e in f["wrong"])
    always_by_class = Counter(e["true"] for f in always for _, e in f["wrong"])
    summary = {
        "runs": runs,
        "note": None if len(roots) < 2 or any(f["held_out"] > 1 for f in films.values()) else (
            "no film was held out in two runs: films are matched by their curated image bytes, so runs whose "
            "curations used other settings (max side, crop, equalization) never match"),
        "distinct_films": len(films),
        "held_out_more_than_once": sum(f["held_out"] > 1 for f in films.values()),
        "wrong_of_held_out": {k: n for k, n in sorted(Counter(
            f"{len(f['wrong'])} of {f['held_out']}" for f in repeated).items())},
        "errors_by_true_class": {c: {"errors": n, "on_films_wrong_whenever_held_out": always_by_class[c],
                                     "films_wrong_whenever_held_out": sum(f["wrong"][0][1]["true"] == c for f in always)}
                                 for c, n in sorted(errors_by_class.items())},
        # The first run's entry stands for the film, its index pointing into `images`.
        "wrong_whenever_held_out": [dict(f["wrong"][0][1], index=f["image"], ref=f"film {f['image']}",
                                         held_out=f["held_out"], runs=[roots[n] for n, _ in f["wrong"]],
                                         covid_probability_per_run=[e["covid_probability"] for _, e in f["wrong"]])
                                    for f in always],
    }
    return summary, images


def _print_runs(runs: list[dict]) -> None:
    for run in runs:
        threshold = f"threshold {run['threshold']:.3f}" if run["threshold"] is not None else "argmax"
        by_class = ", ".join(f"true {c} {n}" for c, n in sorted(run["by_true_class"].items()))
        print(f"  {run['root']}: {threshold}, misclassified {run['misclassified']} ({by_class})")


def _print_films(entries: list[dict]) -> None:
    for e in entries:
        probabilities = " ".join(f"{p:.2f}" for p in e["covid_probability_per_run"])
        place = f", {errors.where(e)}" if errors.where(e) else ""
        print(f"  {e['ref']} group {e['group']}: {e['true']} -> {e['predicted']}{place}, P(covid) {probabilities}")


def _print_overlap(summary: dict) -> None:
    print(f"{summary['test_films']} test films")
    _print_runs(summary["runs"])
    print("films by how many runs got them wrong: "
          + ", ".join(f"{k} run(s): {n}" for k, n in summary["films_by_runs_wrong"].items()))
    print(f"wrong in every run: {len(summary['wrong_in_every_run'])}")
    _print_films(summary["wrong_in_every_run"])


def _print_across_splits(summary: dict) -> None:
    print(f"{len(summary['runs'])} runs, {summary['distinct_films']} distinct test films, "
          f"{summary['held_out_more_than_once']} held out more than once")
    _print_runs(summary["runs"])
    if summary["note"]:
        print(f"note: {summary['note']}")
    print("films held out more than once and wrong at least once, wrong / held out: "
          + (", ".join(f"{k}: {n}" for k, n in summary["wrong_of_held_out"].items()) or "none"))
    for c, row in summary["errors_by_true_class"].items():
        print(f"true {c}: {row['errors']} errors, {row['on_films_wrong_whenever_held_out']} of them on the "
              f"{row['films_wrong_whenever_held_out']} films wrong every time they were held out (2 times or more)")
    print(f"wrong whenever held out: {len(summary['wrong_whenever_held_out'])} films (group as the first of these runs"
          " pseudonymized it; P(covid) in each run)")
    _print_films(summary["wrong_whenever_held_out"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=user_path, help="pipeline roots of finished runs of one task: on the same curated data "
                                                 "and split, or with --across-splits on splits of one curation setting")
    parser.add_argument("--across-splits", action="store_true",
                        help="the runs' test splits differ (fresh curations): match films by their image bytes")
    parser.add_argument("--out", metavar="PNG", type=user_path, help="write the films wrong in every run (or whenever held out) "
                                                      "as a thumbnail gallery")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    with ev.one_line_errors("error_overlap.py"):
        if args.across_splits:
            summary, images = across_splits(args.roots)
            shown = summary["wrong_whenever_held_out"]
            title = f"Wrong whenever held out (2 times or more) over {len(args.roots)} runs: {len(shown)} films"
        else:
            summary, images = overlap(args.roots)
            shown = summary["wrong_in_every_run"]
            title = f"Wrong in all {len(args.roots)} runs: {len(shown)} of {summary['test_films']} test films"
        if args.out:
            png = errors.gallery_png(images, shown, title=title + (
                f" (first {errors.MAX_GALLERY} shown)" if len(shown) > errors.MAX_GALLERY else ""))
            if png:
                with open(args.out, "wb") as f:
                    f.write(png)
            summary["gallery"] = args.out if png else None
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    (_print_across_splits if args.across_splits else _print_overlap)(summary)
    if args.out:
        print(f"gallery: {summary['gallery'] or 'none written (no film was wrong every time)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
