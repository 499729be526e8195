#!/usr/bin/env python
"""Quality trade-off of model families x image sizes on curated real data, without the pipeline.

Where `benchmark_models.py` measures what a family COSTS, this measures what it BUYS: for each
family x size it trains exactly as the Trainer does (trainer/training.py: frozen base, then
fine-tuning; class weights; early stopping on val AUC with loss as tie-break) on a patient-disjoint
split of a curated directory, picks the threshold on the validation part
(trainer.training.choose_threshold), and reports on the held-out part: AUC with a bootstrap CI,
sensitivity and specificity at that threshold (Wilson CIs), "spec@sens" -- the specificity the ROC
curve allows at the target sensitivity, i.e. what the best possible threshold could reach -- and
the wall time of training.

Splits hash the curated `group` (patient + near-duplicates) with md5: patient-disjoint, but not
ExampleGen's split. Use this to choose a configuration, and `quality_benchmark.py` (the real
pipeline) for the figures you report.

* default: one 70/15/15 train/validation/test split.
* ``--folds K``: grouped K-fold cross-validation. Fold k is the test part of a model trained on the
  other folds except fold k+1, its validation part (early stopping, threshold). The out-of-fold
  scores of the K models are pooled, so every curated image is tested once and the intervals are
  far narrower than one 15 % test split's -- what it takes to tell configurations 0.01 AUC apart.
  With several families, an ``ensemble`` row averages their out-of-fold scores (threshold: the
  mean of the members' thresholds).
* ``--tta``: each trained model is also scored as the mean over every image and its left-right
  mirror (threshold chosen on the mirrored-and-averaged validation scores): a paired row
  "<family> + mirror TTA" from the same training run, so only the test-time averaging differs.
* ``--set model.augment_rotation_degrees=5`` (repeatable): any augmentation field of the run config
  (AUGMENT_FIELDS) or model.border_crop, read and checked as a run reads it; --contrast, --gamma and
  --border-crop set three of them.

    .venv/bin/python scripts/compare_models.py --data runs/q/curated-covid-vs-normal \\
        --families mobilenet_v2,mobilenet_v2_035 --sizes 160,224 --fine-tune-layers 40 [--folds 5]

Decoded images are cached next to --cache (default /tmp) per size, so the first run pays decoding.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import time

import covid_cxr  # sets TF_USE_LEGACY_KERAS before TensorFlow loads

covid_cxr.quiet_import_warnings(__name__)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from covid_cxr.data import features, writer  # noqa: E402
from covid_cxr.evaluation import metrics  # noqa: E402
from covid_cxr.pipeline import config as C  # noqa: E402
from covid_cxr.trainer import models as M  # noqa: E402
from covid_cxr.trainer import training as T  # noqa: E402
from covid_cxr.transform.preprocessing import decode_image  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS_DIR = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "weights"))
# The run config's augmentation fields (what the Trainer reads, models.augment_config): --set takes these.
AUGMENT_FIELDS = ("model.augment", *(f"model.augment_{field}" for field in M.CONFIGURABLE_AUGMENT_FIELDS))
SET_FIELDS = (*AUGMENT_FIELDS, "model.border_crop")  # the run config's fields this script reads


def run_settings(overrides: list[str], border_crop: float | None = None, contrast: float | None = None,
                 gamma: float | None = None) -> tuple[M.AugmentConfig, float]:
    """(augmentation, border crop) that ``--set model.augment...=VALUE`` / ``model.border_crop=VALUE`` and
    --border-crop / --contrast / --gamma (None when not given) set, read and checked as a run's config reads them
    (ConfigError otherwise); the others keep the config's defaults."""
    values = C.command_line_values(overrides, {"model.border_crop": ("--border-crop", border_crop),
                                               "model.augment_contrast": ("--contrast", contrast),
                                               "model.augment_gamma": ("--gamma", gamma)})
    others = [key for key in values if key not in SET_FIELDS]
    if others:  # applied to the config, they would change nothing this script trains
        raise C.ConfigError(f"--set {others[0]}: only the augmentation and the border crop are set with --set here "
                            f"({', '.join(SET_FIELDS)}); the script's options set the rest")
    model = C.load_config(overrides=values).to_dict()["model"]
    return M.augment_config(model), model["border_crop"]


def load(data_dir: str, size: int, cache_dir: str, border_crop: float = 0.0):
    """(images [N, S, S, 1], labels, groups, sources) through the Transform's own decode_image."""
    key = hashlib.md5(os.path.abspath(data_dir).encode()).hexdigest()[:8]
    cache = os.path.join(cache_dir, f"covid_cxr_compare_{key}_{size}_crop{border_crop:g}.npz")
    if os.path.exists(cache):
        z = np.load(cache)
        return z["x"].astype(np.float32), z["y"], z["g"], z["s"]
    xs, ys, gs, ss = [], [], [], []
    files = writer.record_files(data_dir)
    if not files:
        raise SystemExit(f"no {features.TFRECORD_PATTERN} in {data_dir}: run `covid-cxr curate` first")
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        f = tf.train.Example.FromString(record.numpy()).features.feature
        xs.append(decode_image(f[features.IMAGE].bytes_list.value[0], size, border_crop).numpy().astype(np.float16))
        ys.append(f[features.LABEL_INDEX].int64_list.value[0])
        gs.append(f[features.GROUP].bytes_list.value[0].decode())
        ss.append(f[features.SOURCE].bytes_list.value[0].decode())
    x, y, g, s = np.stack(xs), np.array(ys), np.array(gs), np.array(ss)
    np.savez(cache, x=x, y=y, g=g, s=s)
    return x.astype(np.float32), y, g, s


def _buckets(groups: np.ndarray, n: int) -> np.ndarray:
    return np.array([int(hashlib.md5(g.encode()).hexdigest(), 16) % n for g in groups])


def splits(groups: np.ndarray, folds: int):
    """[(train, val, test) boolean masks]: one 70/15/15 split, or ``folds`` grouped CV rounds."""
    if folds <= 1:
        bucket = _buckets(groups, 20)
        return [(bucket < 14, (bucket >= 14) & (bucket < 17), bucket >= 17)]
    fold = _buckets(groups, folds)
    return [(~np.isin(fold, (k, (k + 1) % folds)), fold == (k + 1) % folds, fold == k) for k in range(folds)]


TTA = " + mirror TTA"  # row suffix of the test-time-augmented variant of a model


def _variants(model, x, val, test, y, args) -> dict[str, tuple[np.ndarray, float]]:
    """{variant: (test scores, threshold chosen on validation)}: the plain model and, with ``--tta``,
    the same trained model scoring the mean over each image and its left-right mirror."""
    def scores(part, mirrored=False):
        images = x[part][:, :, ::-1] if mirrored else x[part]
        return model.predict(images, verbose=0).ravel()

    val_scores, test_scores = scores(val), scores(test)
    variants = {"": (val_scores, test_scores)}
    if args.tta:
        variants[TTA] = ((val_scores + scores(val, True)) / 2, (test_scores + scores(test, True)) / 2)
    return {name: (t, T.choose_threshold(y[val], v, args.target_sensitivity)) for name, (v, t) in variants.items()}


def train_and_score(family, size, x, y, parts, args) -> tuple[dict[str, tuple[np.ndarray, float]], float]:
    """Trains one model; returns ({variant: (test scores, validation threshold)}, training minutes)."""
    train, val, test = parts
    hp = M.HParams(family=family, learning_rate=args.learning_rate, fine_tune_learning_rate=args.learning_rate / 10,
                   dropout=0.2, dense_units=128, fine_tune_layers=args.fine_tune_layers,
                   early_stopping_patience=args.patience, augment=args.augment)
    train_ds = (tf.data.Dataset.from_tensor_slices((x[train], y[train]))
                .shuffle(4096, seed=args.seed).repeat().batch(args.batch_size).prefetch(2))
    val_ds = tf.data.Dataset.from_tensor_slices((x[val], y[val])).batch(args.batch_size)
    started = time.time()
    built = M.build_model(hp, size, 2, weights="auto", weights_dir=args.weights_dir)
    T.fit(built, hp, train_ds, val_ds, epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs,
          steps_per_epoch=-(-int(train.sum()) // args.batch_size), validation_steps=None,
          class_weight=T.class_weights(np.bincount(y[train], minlength=2)), seed=args.seed, verbose=0)
    minutes = (time.time() - started) / 60
    variants = _variants(built.model, x, val, test, y, args)
    keras.backend.clear_session()  # K models in one process must not pile up graphs
    return variants, minutes


def score(y, scores, thresholds, target_sensitivity) -> dict:
    """Pooled held-out figures; ``thresholds`` holds each example's own model threshold."""
    at_thresholds = metrics.binary_metrics(y, scores > thresholds)
    oracle = T.choose_threshold(y, scores, target_sensitivity)
    return {
        "test_auc": metrics.auc_with_ci(y, scores, n_boot=1000),
        "sensitivity": at_thresholds["sensitivity"],
        "specificity": at_thresholds["specificity"],
        "spec_at_sens": T.sensitivity_specificity(y, scores, oracle)[1],
    }


def evaluate(family, size, x, y, rounds, args) -> list[dict]:
    """Per variant: out-of-fold scores and thresholds of ``family`` over all rounds, plus the pooled figures."""
    pooled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    minutes = []
    for parts in rounds:
        test = parts[2]
        variants, m = train_and_score(family, size, x, y, parts, args)
        minutes.append(m)
        for name, (test_scores, threshold) in variants.items():
            scores, thresholds = pooled.setdefault(name, (np.full(len(y), np.nan), np.full(len(y), np.nan)))
            scores[test], thresholds[test] = test_scores, threshold
    results = []
    for name, (scores, thresholds) in pooled.items():
        held_out = ~np.isnan(scores)
        results.append({"family": family + name, "variant": name, "size": size, "minutes": float(np.mean(minutes)),
                        "held_out": held_out, "scores": scores, "thresholds": thresholds,
                        **score(y[held_out], scores[held_out], thresholds[held_out], args.target_sensitivity)})
    return results


def fmt(entry) -> str:
    ci = entry.get("ci95") or [float("nan")] * 2
    return f"{entry['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=C.user_path, help="a binary-task directory written by `covid-cxr curate`")
    parser.add_argument("--families", default="mobilenet_v2")
    parser.add_argument("--sizes", default="224")
    parser.add_argument("--epochs", type=int, default=4, help="frozen-base phase")
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    parser.add_argument("--fine-tune-layers", type=int, default=40)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights-dir", default=WEIGHTS_DIR, type=C.user_path)
    parser.add_argument("--cache", default="/tmp", type=C.user_path)
    parser.add_argument("--border-crop", type=float, default=None,
                        help="as --set model.border_crop=VALUE: fraction cut off each side")
    parser.add_argument("--contrast", type=float, default=None, help="as --set model.augment_contrast=VALUE")
    parser.add_argument("--gamma", type=float, default=None, help="as --set model.augment_gamma=VALUE")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="an augmentation field of the run config or its border crop (repeatable; the others "
                             "keep its defaults): " + ", ".join(SET_FIELDS))
    parser.add_argument("--tta", action="store_true", help="score each image as the mean over it and its mirror")
    parser.add_argument("--folds", type=int, default=0, help="grouped K-fold CV with pooled out-of-fold scores (0: one split)")
    args = parser.parse_args()
    try:  # built once, and checked before any data is read
        args.augment, args.border_crop = run_settings(args.overrides, args.border_crop, args.contrast, args.gamma)
    except C.ConfigError as e:
        parser.error(str(e))

    print(f"| family | size | train min{' / fold' if args.folds > 1 else ''} | n held out | test AUC | sensitivity "
          f"| specificity | spec@sens {args.target_sensitivity:.2f} |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        x, y, groups, _ = load(args.data, size, args.cache, args.border_crop)
        if set(np.unique(y)) - {0, 1}:
            raise SystemExit("compare_models.py handles binary tasks only")
        rounds = splits(groups, args.folds)
        families = args.families.split(",")
        results = [r for family in families for r in evaluate(family, size, x, y, rounds, args)]
        ensembles = []
        variants = dict.fromkeys(r["variant"] for r in results) if len(families) > 1 else {}
        for variant in variants:  # one ensemble row per variant (plain, mirror TTA)
            members = [r for r in results if r["variant"] == variant]
            held_out = members[0]["held_out"]
            scores = np.mean([r["scores"] for r in members], axis=0)[held_out]
            thresholds = np.mean([r["thresholds"] for r in members], axis=0)[held_out]
            ensembles.append({"family": "ensemble (mean)" + variant, "size": size, "held_out": held_out,
                              "minutes": sum(r["minutes"] for r in members),
                              **score(y[held_out], scores, thresholds, args.target_sensitivity)})
        for r in results + ensembles:
            print(f"| {r['family']} | {size} | {r['minutes']:.1f} | {int(r['held_out'].sum())} | {fmt(r['test_auc'])} | "
                  f"{fmt(r['sensitivity'])} | {fmt(r['specificity'])} | {r['spec_at_sens']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
