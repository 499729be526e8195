#!/usr/bin/env python
"""Where a trained model's stored COVID threshold lands, on the eval split that chose it and on test.

For each pipeline root: the newest Trainer model scored (through its serving signature) on the
newest ExampleGen's `eval` and `test` splits, COVID vs the rest (three-class too). A three-class
model exported before three-class had a threshold (it served the argmax) gets the threshold the
Trainer would store now, chosen here on eval by its rule and targets. Printed per root:

* the stored decision threshold, and sensitivity / specificity at it on eval and on test (k/n);
* test AUC;
* "test ROC spec@sens 0.95 / 0.97": the specificity the test ROC curve allows at that sensitivity.
  Descriptive only -- it uses the test labels, so it is what a perfectly placed threshold would
  give, never an operating point to report as a result;
* with ``--tta``: the same model scoring the mean over each film and its left-right mirror, the
  threshold re-chosen on eval by the Trainer's rule (trainer.training.choose_threshold).

It separates "the model ranks badly" (low AUC, low spec@sens) from "the eval-chosen threshold
landed badly" (good spec@sens, test sensitivity far from the eval target).

Threshold rules compared (trainer.training.choose_threshold): "sensitivity only" (the first
``--targets`` sensitivity) and "shared slack S/P" for each ``--targets S P`` (repeatable; default
0.95 0.90, the `full` preset's). Per root, each rule's eval-chosen threshold judged on that root's
own test split against ``--bars``; with several roots, a last table counts the roots whose test
split met both bars under each rule (each root a separate training on fresh patients).

``--resample N`` asks how much of that is the luck of one draw, per rule: the eval and test films
of a root are pooled and dealt again N times into an eval part of the same size and a test part,
whole patient groups at a time; each time each rule chooses its threshold on the eval part and is
judged on the test part against ``--bars``. Printed: mean test sensitivity / specificity and how
often each bar, and both, were met. The model is fixed (scored once), so this is threshold
placement only; pooling also mixes in films the model was not selected on, so it does not see the
eval split's optimism (early stopping and the Tuner pick on eval).

    .venv/bin/python scripts/threshold_check.py runs/q/root-covid-vs-normal runs/q/root-covid-vs-normal-split1 [--tta]
    .venv/bin/python scripts/threshold_check.py runs/q5/root-covid-vs-normal --resample 400
    .venv/bin/python scripts/threshold_check.py runs*/root-covid-vs-normal-split* --targets 0.95 0.90 --targets 0.97 0.90
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import covid_cxr

covid_cxr.quiet_import_warnings(__name__)

import numpy as np  # noqa: E402

from covid_cxr.evaluation import artifacts, metrics  # noqa: E402
from covid_cxr.evaluation import evaluate as ev  # noqa: E402
from covid_cxr.pipeline.config import user_path  # noqa: E402
from covid_cxr.serving import predict  # noqa: E402
from covid_cxr.trainer import training as T  # noqa: E402

ROC_SENSITIVITIES = (0.95, 0.97)


def mirrored(encoded: bytes) -> bytes:
    import tensorflow as tf

    image = tf.io.decode_image(encoded, expand_animations=False)
    return tf.io.encode_png(tf.image.flip_left_right(image)).numpy()


def counts_at(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Sensitivity and specificity of ``scores > threshold`` (the export's rule) as proportions with k/n."""
    m = metrics.binary_metrics(y, scores > threshold)
    return {"sensitivity": m["sensitivity"], "specificity": m["specificity"]}


def describe(y_eval, eval_scores, y_test, test_scores, threshold) -> dict:
    row = {"threshold": float(threshold), "eval": counts_at(y_eval, eval_scores, threshold),
           "test": counts_at(y_test, test_scores, threshold),
           "test_auc": metrics.auc_with_ci(y_test, test_scores, n_boot=1000)["value"]}
    for target in ROC_SENSITIVITIES:
        ideal = T.choose_threshold(y_test, test_scores, target)
        row[f"test_roc_spec_at_sens_{target:.2f}"] = T.sensitivity_specificity(y_test, test_scores, ideal)[1]
    return row


def deal_by_group(groups: np.ndarray, n_eval: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean eval mask over the films: whole groups in random order until ``n_eval`` films."""
    names, index = np.unique(groups, return_inverse=True)
    sizes = np.bincount(index)
    order = rng.permutation(names.size)
    taken = order[: int(np.searchsorted(np.cumsum(sizes[order]), n_eval, side="right"))]
    return np.isin(index, taken)


def rules_for(targets: list) -> dict:
    """Rule name -> (target sensitivity, target specificity) for choose_threshold."""
    rules = {"sensitivity only": (targets[0][0], 0.0)}
    rules.update({f"shared slack {sens:g}/{spec:g}": (sens, spec) for sens, spec in targets})
    return rules


def judge(y_eval, eval_scores, y_test, test_scores, rule: tuple, bars: tuple) -> tuple:
    """(threshold chosen on eval by ``rule``, test sensitivity, test specificity, each bar met, both met)."""
    threshold = T.choose_threshold(y_eval, eval_scores, *rule)
    sens, spec = T.sensitivity_specificity(y_test, test_scores, threshold)
    return threshold, sens, spec, sens >= bars[0], spec >= bars[1], sens >= bars[0] and spec >= bars[1]


def resample(y: np.ndarray, scores: np.ndarray, groups: np.ndarray, n_eval: int, n: int,
             rules: dict, bars: tuple, seed: int = 0) -> dict:
    """Per rule: mean test sensitivity / specificity and the share of deals meeting each bar."""
    rng = np.random.default_rng(seed)
    outcomes = {name: [] for name in rules}
    for _ in range(n):
        is_eval = deal_by_group(groups, n_eval, rng)
        if y[is_eval].sum() == 0 or y[~is_eval].sum() == 0 or (y[~is_eval] == 0).sum() == 0:
            continue  # a deal with no COVID film on a side, or no negative in test, judges nothing
        for name, rule in rules.items():
            outcomes[name].append(judge(y[is_eval], scores[is_eval], y[~is_eval], scores[~is_eval], rule, bars)[1:])
    result = {"deals": len(outcomes["sensitivity only"]), "rules": {k: list(v) for k, v in rules.items()},
              "bars": list(bars)}
    for name, rows in outcomes.items():
        a = np.asarray(rows, dtype=float).reshape(-1, 5)
        result[name] = dict(zip(("mean_sensitivity", "mean_specificity", "sensitivity_bar_met", "specificity_bar_met",
                                 "both_met"), (float(v) for v in a.mean(axis=0)))) if len(a) else {}
    return result


def check_root(root: str, rules: dict, bars: tuple, tta: bool = False, resample_n: int = 0) -> dict:
    model_dir, examples = artifacts.trained_run(root)
    model = predict.load_model(os.path.join(model_dir, "Format-Serving"))
    if model.task is None:
        raise SystemExit(f"{root}: the model does not name a covid-cxr task ({model.task_name})")
    data = {split: ev.load_tfrecords(os.path.join(examples, f"Split-{split}")) for split in ("eval", "test")}
    y = {split: (d.labels == model.task.positive_index).astype(int) for split, d in data.items()}
    plain = {split: np.asarray(model.predict_examples(d.serialized)["covid_probability"]).ravel()
             for split, d in data.items()}
    targets = (float(model.metadata.get("target_sensitivity", 0.95)), float(model.metadata.get("target_specificity", 0.0)))
    threshold = model.threshold
    if threshold is None:  # a three-class argmax export: the threshold the Trainer stores now
        threshold = T.choose_threshold(y["eval"], plain["eval"], *targets)
    result = {"root": root, "model": model_dir, "threshold_chosen_here": model.threshold is None,
              "stored": describe(y["eval"], plain["eval"], y["test"], plain["test"], threshold), "rules": {}}
    for name, rule in rules.items():
        chosen, *_, both = judge(y["eval"], plain["eval"], y["test"], plain["test"], rule, bars)
        result["rules"][name] = {"threshold": chosen, "test": counts_at(y["test"], plain["test"], chosen),
                                 "both_met": bool(both)}
    if resample_n:
        result["resample"] = resample(np.concatenate([y["eval"], y["test"]]),
                                      np.concatenate([plain["eval"], plain["test"]]),
                                      np.asarray(data["eval"].groups + data["test"].groups), len(y["eval"]),
                                      resample_n, rules, bars)
    if tta:
        averaged = {split: (plain[split] + np.asarray(model.predict_images([mirrored(e) for e in d.images])
                                                      ["covid_probability"]).ravel()) / 2
                    for split, d in data.items()}
        tta_threshold = T.choose_threshold(y["eval"], averaged["eval"], *targets)
        result["mirror_tta"] = describe(y["eval"], averaged["eval"], y["test"], averaged["test"], tta_threshold)
    return result


def kn(entry: dict) -> str:
    return f"{entry['k']}/{entry['n']}"


def line(name: str, row: dict) -> str:
    roc = " / ".join(f"{row[f'test_roc_spec_at_sens_{t:.2f}']:.3f}" for t in ROC_SENSITIVITIES)
    return (f"{name:<44} {row['threshold']:.3f}  eval {kn(row['eval']['sensitivity'])} {kn(row['eval']['specificity'])}"
            f"  test {kn(row['test']['sensitivity'])} {kn(row['test']['specificity'])}"
            f"  AUC {row['test_auc']:.3f}  test ROC spec@sens {roc}")


def rule_line(name: str, row: dict) -> str:
    return (f"    {name:<28} thr {row['threshold']:.3f}  test {kn(row['test']['sensitivity'])} "
            f"{kn(row['test']['specificity'])}  {'both bars met' if row['both_met'] else 'not met'}")


def summary_lines(results: list) -> list:
    """Per rule over the roots: how many test splits met both bars; mean resample share when resampled."""
    lines = [f"over {len(results)} roots (each its own training and test split):"]
    for name in results[0]["rules"]:
        rows = [r["rules"][name] for r in results]
        sens = np.mean([row["test"]["sensitivity"]["value"] for row in rows])
        spec = np.mean([row["test"]["specificity"]["value"] for row in rows])
        text = (f"  {name:<28} both bars met on {sum(row['both_met'] for row in rows)} of {len(rows)} test splits,"
                f" mean test sens {sens:.3f} spec {spec:.3f}")
        if all(r.get("resample", {}).get(name) for r in results):
            text += f", mean re-deal both met {np.mean([r['resample'][name]['both_met'] for r in results]):.2f}"
        lines.append(text)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=user_path, help="pipeline roots of finished runs")
    parser.add_argument("--tta", action="store_true", help="also score the mean over each film and its mirror")
    parser.add_argument("--resample", type=int, default=0, metavar="N",
                        help="deal the pooled eval+test films again N times and compare threshold rules")
    parser.add_argument("--targets", type=float, nargs=2, action="append", metavar=("SENS", "SPEC"),
                        help="eval targets of a shared-slack rule; repeat to compare several (default 0.95 0.90; "
                             "the sensitivity-only rule uses the first SENS)")
    parser.add_argument("--bars", type=float, nargs=2, default=(0.95, 0.90), metavar=("SENS", "SPEC"),
                        help="what a test split must meet")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    targets = args.targets or [(0.95, 0.90)]
    if args.resample < 0:
        parser.error(f"--resample must be 0 or more, got {args.resample}")
    for option, pairs in (("targets", targets), ("bars", [args.bars])):  # outside [0, 1]: never met, or always
        for pair in pairs:
            if not all(0.0 <= v <= 1.0 for v in pair):
                parser.error(f"--{option} must be two proportions in [0, 1], got {' '.join(map(str, pair))}")
    rules = rules_for(targets)
    with ev.one_line_errors("threshold_check.py"):
        results = [check_root(root, rules, tuple(args.bars), args.tta, args.resample) for root in args.roots]
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"{'model':<44} thr    eval sens spec    test sens spec    (k/n)")
    for r in results:
        print(line(os.path.basename(os.path.normpath(r["root"])), r["stored"]))
        if r["threshold_chosen_here"]:
            print("  (the model served the argmax; threshold chosen here on eval by the Trainer's rule)")
        if "mirror_tta" in r:
            print(line("  + mirror TTA, threshold re-chosen on eval", r["mirror_tta"]))
        print(f"  threshold rules chosen on eval, judged on test against bars {list(args.bars)}:")
        for name, row in r["rules"].items():
            print(rule_line(name, row))
        if "resample" in r:
            rs = r["resample"]
            print(f"  {rs['deals']} re-deals of eval+test by patient group, bars {rs['bars']}:")
            for name in rules:
                m = rs[name]
                if m:
                    print(f"    {name:<28} mean test sens {m['mean_sensitivity']:.3f} spec {m['mean_specificity']:.3f}"
                          f"  sens bar met {m['sensitivity_bar_met']:.2f}  spec bar met {m['specificity_bar_met']:.2f}"
                          f"  both {m['both_met']:.2f}")
    if len(results) > 1:
        print("\n".join(summary_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
