"""Real-data quality run: curate the shared corpus, run the whole pipeline, evaluate on held-out data.

For each task: `covid-cxr curate` on ../shared/data, `covid-cxr run --preset full`, then
`covid-cxr evaluate` on the pipeline's own patient-disjoint `test` split (never seen by training,
tuning or threshold choice), plus external checks where the corpus allows one. Prints a markdown
table (with Wilson / bootstrap 95% CIs) and writes OUT/results.json. Not part of the default tests:
it takes ~15-25 minutes per task on 2 CPU cores.

    .venv/bin/python scripts/quality_benchmark.py --tasks covid-vs-normal [--out runs/quality]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "data"))
CLI = [os.path.join(os.path.dirname(sys.executable), "covid-cxr")]

# Kermany's films are paediatric: against adult COVID films "child vs adult" is a shortcut, so the
# headline covid-vs-normal model is trained on adult normals only and Kermany's normals become an
# external specificity check instead.
SOURCES = {
    "covid-vs-normal": ["cohen", "rsna", "radiography"],
    "covid-vs-pneumonia": ["cohen", "rsna", "kermany", "radiography"],
    "covid-vs-noncovid": ["cohen", "rsna", "kermany", "radiography"],
    "three-class": ["cohen", "rsna", "kermany", "radiography"],
}
SOURCE_DIRS = {"cohen": "cohen-covid-chestxray", "rsna": "rsna-pneumonia", "kermany": "chest-xray-pneumonia",
               "radiography": "covid19-radiography"}
EXTERNAL = {"covid-vs-normal": ("kermany normals (paediatric, unseen source)",
                                ["chest-xray-pneumonia/train/NORMAL", "chest-xray-pneumonia/test/NORMAL"])}


def sh(args, log):
    with open(log, "a") as out:
        started = time.time()
        code = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT).returncode
        if code not in (0, 1):
            raise SystemExit(f"{' '.join(args[:3])} failed with code {code}; see {log}")
        return time.time() - started


def evaluate(model, data, out_dir, log):
    os.makedirs(out_dir, exist_ok=True)
    result = subprocess.run(CLI + ["evaluate", "--model", model, "--data", data, "--json", "--out", out_dir],
                            capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"evaluate failed on {data}: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout)


def run_task(task, out, extra_sets):
    log = os.path.join(out, f"{task}.log")
    curated = os.path.join(out, f"curated-{task}")
    if not os.path.exists(os.path.join(curated, "summary.json")):
        args = CLI + ["curate", "--task", task, "--out", curated]
        for source in SOURCES[task]:
            args += ["--source", f"{source}={os.path.join(SHARED, SOURCE_DIRS[source])}"]
        sh(args, log)
    root = os.path.join(out, f"root-{task}")
    serving = os.path.join(out, f"serving-{task}")
    args = CLI + ["run", "--data", curated, "--preset", "full", "--task", task, "--pipeline-root", root,
                  "--serving-dir", serving]
    for item in extra_sets:
        args += ["--set", item]
    seconds = sh(args, log)
    models = sorted(glob.glob(os.path.join(root, "Trainer", "model", "*")), key=os.path.getmtime)
    model = models[-1]
    test_split = sorted(glob.glob(os.path.join(root, "ImportExampleGen", "examples", "*", "Split-test")))[-1]
    result = {"task": task, "pipeline_seconds": round(seconds), "model": model,
              "pushed": bool(glob.glob(os.path.join(serving, "*", "saved_model.pb"))),
              "test": evaluate(model, test_split, os.path.join(out, f"report-{task}"), log)}
    if task in EXTERNAL:
        name, dirs = EXTERNAL[task]
        external = os.path.join(out, f"external-{task}")
        if not os.path.exists(external):
            os.makedirs(os.path.join(external, "NORMAL"))
            for d in dirs:  # a class-per-folder tree of links, read in place
                for path in glob.glob(os.path.join(SHARED, d, "*")):
                    os.symlink(path, os.path.join(external, "NORMAL", d.split("/")[1] + "-" + os.path.basename(path)))
        result["external"] = {"name": name, **evaluate(model, external, os.path.join(out, f"report-{task}-external"), log)}
    return result


def fmt(entry):
    if not isinstance(entry, dict) or entry.get("value") is None:
        return "n/a"
    ci = entry.get("ci95") or entry.get("ci") or [None, None]
    return f"{entry['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else f"{entry['value']:.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override for `run`")
    args = parser.parse_args()
    if not os.path.isdir(SHARED):
        raise SystemExit(f"the real corpus is not at {SHARED}")
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.json")
    results = []
    for task in args.tasks:
        results.append(run_task(task, args.out, args.sets))
        # Keep the other tasks' results from earlier invocations into the same --out.
        earlier = []
        if os.path.exists(results_path):
            with open(results_path) as f:
                earlier = [r for r in json.load(f) if r["task"] not in {x["task"] for x in results}]
        with open(results_path, "w") as f:
            json.dump(earlier + results, f, indent=2)
    print("| task | n test | sensitivity | specificity | AUC | accuracy | pipeline minutes | pushed |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        t = r["test"]
        print(f"| {r['task']} | {t.get('n')} | {fmt(t.get('sensitivity'))} | {fmt(t.get('specificity'))} | "
              f"{fmt(t.get('auc'))} | {fmt(t.get('accuracy'))} | {r['pipeline_seconds'] / 60:.1f} | {r['pushed']} |")
        if "multiclass" in t:
            # The row above is COVID one-vs-rest already; add the three-class summary.
            print(f"| {r['task']} macro-F1 | {t.get('n')} | {t['multiclass']['macro_f1']:.3f} | | | | | |")
        if "external" in r:
            e = r["external"]
            print(f"| {r['task']} external: {e['name']} | {e.get('n')} | {fmt(e.get('sensitivity'))} | "
                  f"{fmt(e.get('specificity'))} | {fmt(e.get('auc'))} | {fmt(e.get('accuracy'))} | | |")


if __name__ == "__main__":
    main()
