"""Real-data quality run: curate the shared corpus, run the whole pipeline, evaluate on held-out data.

For each task: `covid-cxr curate` on ../shared/data, `covid-cxr run --preset full`, then
`covid-cxr evaluate` on the pipeline's own patient-disjoint `test` split (never seen by training,
tuning or threshold choice), plus external checks where the corpus allows one. Prints a markdown
table (with Wilson / bootstrap 95% CIs) and writes OUT/results.json. Not part of the default tests:
it takes ~10-25 minutes per task (and split) on 2 CPU cores.

    .venv/bin/python scripts/quality_benchmark.py --tasks covid-vs-normal [--out runs/quality] [--splits 3]

``--splits N`` repeats each task on N different patient-disjoint splits: ExampleGen's split hashes
the curated ``group`` pseudonyms, so curating again under a fresh random pseudonym key (never
stored; split 0 uses the user's own key) reshuffles which patients land in train / eval / test.
One 15 % test split holds a few hundred films, so the spread over splits is what tells a real
difference from a lucky split. ``--first-split 1`` leaves split 0 out (a fresh draw only).

``--hold-out SOURCE`` curates with ``covid-cxr curate --hold-out``: that source's films (and any film
sharing a patient or duplicate group with them) are kept out of training, tuning and the
threshold, and the model is evaluated on them as an external test set as well (run names end in
``-without-SOURCE``).

The external checks leave out every film that curation's near-copy rule matches to a film of the run's
curated data (any split; ``curate.copies_of_curated``): one source can carry another's films (the
COVID-19 Radiography Database's normals hold some of Kermany's), and a film the model trained, tuned or
was tested on is no external test. OUT/external-<run>-left-out.csv names each one and its curated film.

``--attention`` runs every evaluation with ``covid-cxr evaluate --attention``: where each split's heat
maps lie (evaluation/attention_audit.py) goes into results.json with the other figures.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import secrets
import shutil
import subprocess
import sys
import time

import covid_cxr

covid_cxr.quiet_import_warnings(__name__)

from covid_cxr.data import curate, pseudonym, testing  # noqa: E402
from covid_cxr.data.testing import REAL_DATA, REAL_SOURCE_DIRS  # noqa: E402
from covid_cxr.evaluation import artifacts  # noqa: E402
from covid_cxr.pipeline.config import user_path  # noqa: E402

SHARED = str(REAL_DATA)
CLI = [os.path.join(os.path.dirname(sys.executable), "covid-cxr")]

# Kermany's films are paediatric: against adult COVID films "child vs adult" is a shortcut, so the
# headline covid-vs-normal model is trained on adult normals only and Kermany's normals become an
# external specificity check instead.
# The same holds for covid-vs-pneumonia: with Kermany's 400 paediatric pneumonias in training, adult
# pneumonias (Cohen, RSNA) were mostly called COVID (7 of 21 right) while the children were 45/45.
SOURCES = {
    "covid-vs-normal": ["cohen", "rsna", "radiography"],
    "covid-vs-pneumonia": ["cohen", "rsna", "radiography"],
    "covid-vs-noncovid": ["cohen", "rsna", "kermany", "radiography"],
    "three-class": ["cohen", "rsna", "kermany", "radiography"],
}
# task -> (name, class folder, corpus folders): films of a source the task's model never saw (less the
# near copies of its curated films that another source carries: without_curated_copies).
EXTERNAL = {
    "covid-vs-normal": ("kermany normals (paediatric, unseen source)", "NORMAL",
                        ["chest-xray-pneumonia/train/NORMAL", "chest-xray-pneumonia/test/NORMAL"]),
    "covid-vs-pneumonia": ("kermany pneumonias (paediatric, unseen source)", "PNEUMONIA",
                           ["chest-xray-pneumonia/train/PNEUMONIA", "chest-xray-pneumonia/test/PNEUMONIA"]),
}


def sh(args, log, env=None):
    with open(log, "a") as out:
        started = time.time()
        code = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        if code not in (0, 1):
            raise SystemExit(f"{' '.join(args[:3])} failed with code {code}; see {log}")
        return time.time() - started


def evaluate(model, data, out_dir, log, options=()):
    os.makedirs(out_dir, exist_ok=True)
    result = subprocess.run(CLI + ["evaluate", "--model", model, "--data", data, "--json", "--out", out_dir, *options],
                            capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"evaluate failed on {data}: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout)


def without_curated_copies(external, folder, curated, name, out):
    """A folder of links to the films of ``external``'s class folder that are not near copies of a film in
    ``curated`` (every split), and what was left out: {"k", "n", "threshold", "file", "unchecked"}. The
    file (CSV) names each film left out and the curated film it copies; nothing is dropped unlisted."""
    films = sorted(os.listdir(os.path.join(external, folder)))
    paths = [os.path.join(external, folder, film) for film in films]
    try:
        # One process: hashing a few hundred 224-px films takes seconds, less than starting workers.
        found = curate.copies_of_curated(paths, curated, workers=1)
    except curate.CurationError as e:
        raise SystemExit(f"quality_benchmark: {e}") from None
    kept = os.path.join(out, f"external-{name}-without-curated-copies")
    shutil.rmtree(kept, ignore_errors=True)  # links only: rebuilt for this run's curated data
    os.makedirs(os.path.join(kept, folder))
    listing = os.path.join(out, f"external-{name}-left-out.csv")
    with open(listing, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["external_film", "reason", "curated_film", "distance_bits"])
        for film, path in zip(films, paths):
            if path in found.copies:
                ref, distance = found.copies[path]
                writer.writerow([film, f"near copy of a curated film (<= {found.threshold} bits)", ref, distance])
            else:
                os.symlink(os.path.realpath(path), os.path.join(kept, folder, film))
    # A film that could not be hashed stays in: evaluate reports it as it does any unreadable film.
    return kept, {"k": len(found.copies), "n": len(films), "threshold": found.threshold, "file": listing,
                  "unchecked": {os.path.basename(p): reason for p, reason in found.unchecked.items()}}


def left_out_line(left):
    """The printed line for :func:`without_curated_copies`'s record."""
    unchecked = f"; kept {len(left['unchecked'])} that could not be hashed" if left["unchecked"] else ""
    return (f"left out {left['k']} of {left['n']} external films: near copies of curated films "
            f"(<= {left['threshold']} bits; {left['file']}){unchecked}")


def run_task(task, out, extra_sets, split=0, hold_out=None, evaluate_options=()):
    name = task + (f"-without-{hold_out}" if hold_out else "") + (f"-split{split}" if split else "")
    log = os.path.join(out, f"{name}.log")
    curated = os.path.join(out, f"curated-{name}")
    held_out = os.path.join(out, f"heldout-{name}")
    if not os.path.exists(os.path.join(curated, "summary.json")):
        args = CLI + ["curate", "--task", task, "--out", curated]
        for source in SOURCES[task]:
            # RSNA through its NIH mapping (built from the corpus's MANIFEST.csv): one NIH patient's
            # films are one patient, as with RSNA's own mapping file. (Without the corpus, curation
            # fails on the missing sources anyway.)
            path = (str(testing.real_rsna_with_nih_mapping(os.path.join(out, "rsna-with-nih-mapping")))
                    if source == "rsna" and (REAL_DATA / "MANIFEST.csv").is_file()
                    else os.path.join(SHARED, REAL_SOURCE_DIRS[source]))
            args += ["--source", f"{source}={path}"]
        if hold_out:
            args += ["--hold-out", f"{hold_out}={held_out}"]
        # Through the environment, not argv, so the key never shows in a process listing.
        sh(args, log, env={**os.environ, pseudonym.ENV_VAR: secrets.token_hex(32)} if split else None)
    root = os.path.join(out, f"root-{name}")
    serving = os.path.join(out, f"serving-{name}")
    args = CLI + ["run", "--data", curated, "--preset", "full", "--task", task, "--pipeline-root", root,
                  "--serving-dir", serving]
    # The wall time is a result: a re-run answered from TFX's cache would record seconds, not minutes.
    for item in ["runtime.enable_cache=false", *extra_sets]:
        args += ["--set", item]
    seconds = sh(args, log)
    # The newest model and examples by execution id, a number ("12" after "9"), as `covid-cxr evaluate
    # --pipeline-root` finds them (a file's time is not the run's order: a copied root's are the copy's).
    try:
        model, examples = artifacts.trained_run(root)
    except ValueError as e:  # the run stopped before a model: its log says why; no traceback
        print(f"quality_benchmark: {e}; see {log}", file=sys.stderr)
        raise SystemExit(2) from None

    def evaluated(data, report_suffix=""):
        return evaluate(model, data, os.path.join(out, f"report-{name}{report_suffix}"), log, evaluate_options)

    result = {"task": task, "split": split, "hold_out": hold_out, "pipeline_seconds": round(seconds), "model": model,
              "pushed": bool(glob.glob(os.path.join(serving, "*", "saved_model.pb"))),
              "test": evaluated(os.path.join(examples, "Split-test"))}
    if hold_out:
        result["held_out"] = {"name": f"{hold_out} (held out of training: an unseen source)",
                              **evaluated(held_out, "-heldout")}
    if task in EXTERNAL:
        external_name, folder, dirs = EXTERNAL[task]
        external = os.path.join(out, f"external-{task}")  # every film, the same for every split
        if not os.path.exists(external):
            os.makedirs(os.path.join(external, folder))
            for d in dirs:  # a class-per-folder tree of links, read in place
                for path in glob.glob(os.path.join(SHARED, d, "*")):
                    os.symlink(path, os.path.join(external, folder, d.split("/")[1] + "-" + os.path.basename(path)))
        kept, left_out = without_curated_copies(external, folder, curated, name, out)
        print(f"quality_benchmark: {name}: {left_out_line(left_out)}", file=sys.stderr)
        result["external"] = {"name": external_name, "left_out": left_out, **evaluated(kept, "-external")}
    return result


def fmt(entry):
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "n/a"
    ci = entry.get("ci95") or entry.get("ci") or [None, None]
    return f"{entry['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else f"{entry['value']:.3f}"


def _at_least_one(text: str) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--out", default="runs/quality", type=user_path)
    parser.add_argument("--splits", type=_at_least_one, default=1, help="repeat each task on this many patient-disjoint splits")
    parser.add_argument("--first-split", type=int, default=0,
                        help="number the splits from here; 1 and up skip split 0 (the user's key) and use fresh keys only")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override for `run`")
    parser.add_argument("--hold-out", choices=sorted({s for sources in SOURCES.values() for s in sources}),
                        help="keep this source out of training and evaluate on it as an external test set")
    parser.add_argument("--attention", action="store_true",
                        help="evaluate --attention on every split: where the heat maps lie goes into results.json "
                             "(about a second per film)")
    args = parser.parse_args()
    if args.first_split < 0:
        parser.error(f"--first-split must be 0 or more, got {args.first_split}")
    if not os.path.isdir(SHARED):
        raise SystemExit(f"the real corpus is not at {SHARED}")
    for task in args.tasks:  # before any run: a late task must not fail after hours of the others
        if args.hold_out and args.hold_out not in SOURCES[task]:
            raise SystemExit(f"--hold-out {args.hold_out}: {task} is not curated from it ({', '.join(SOURCES[task])})")
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.json")
    results = []
    for task in args.tasks:
        for split in range(args.first_split, args.first_split + args.splits):
            results.append(run_task(task, args.out, args.sets, split, args.hold_out,
                                    ["--attention"] if args.attention else []))
        # Keep the other tasks' (and splits') results from earlier invocations into the same --out.
        earlier = []
        if os.path.exists(results_path):
            with open(results_path) as f:
                done = {(x["task"], x["split"], x["hold_out"]) for x in results}
                earlier = [r for r in json.load(f) if (r["task"], r.get("split", 0), r.get("hold_out")) not in done]
        with open(results_path, "w") as f:
            json.dump(earlier + results, f, indent=2)
    # "atypical": films the served atypical-input check flagged (serving/typicality.py).
    print("| task | split | n test | sensitivity | specificity | AUC | accuracy | atypical | pipeline minutes | pushed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t = r["test"]
        print(f"| {r['task']} | {r['split']} | {t.get('n')} | {fmt(t.get('sensitivity'))} | {fmt(t.get('specificity'))} | "
              f"{fmt(t.get('auc'))} | {fmt(t.get('accuracy'))} | {fmt(t.get('atypical'))} | "
              f"{r['pipeline_seconds'] / 60:.1f} | {r['pushed']} |")
        if "multiclass" in t:
            # The row above is COVID one-vs-rest already; add the three-class summary.
            print(f"| {r['task']} macro-F1 | {r['split']} | {t.get('n')} | {t['multiclass']['macro_f1']:.3f} | | | | | | |")
        for key in ("held_out", "external"):
            if key in r:
                e = r[key]
                print(f"| {r['task']} external: {e['name']} | {r['split']} | {e.get('n')} | {fmt(e.get('sensitivity'))} | "
                      f"{fmt(e.get('specificity'))} | {fmt(e.get('auc'))} | {fmt(e.get('accuracy'))} | "
                      f"{fmt(e.get('atypical'))} | | |")
    for r in results:  # under the table: a line inside it would end it
        if "left_out" in r.get("external", {}):
            print(f"\n{r['task']} split {r['split']} external: {left_out_line(r['external']['left_out'])}")


if __name__ == "__main__":
    main()
