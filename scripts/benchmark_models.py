#!/usr/bin/env python
"""CPU cost of the model families at several image sizes, to size the `full` preset.

For every family x size it builds the real model (augmentation included; transfer families from a
weights FILE so the backbone runs exactly as when pretrained: BN in inference mode), then measures
with batch 16 on synthetic data (Transform size S = model size, no Resizing layer):

  params        total parameters
  p1 ms/img     one training step, phase 1 (frozen backbone) -- or end-to-end for scratch CNNs
  p2 ms/img     one training step, phase 2 (top --fine-tune-layers unfrozen); '-' for scratch
  inf ms/img    inference (predict_on_batch, augmentation off)
  est min       training-time estimate: epochs x train images x p1 + fine-tune epochs x train images
                x p2 + (all epochs) x val images x inf. Excludes graph tracing (~10-40 s per phase
                on 2 cores) and input-pipeline time.

Timings are medians over --steps steps after one warm-up step. Usage:
  python scripts/benchmark_models.py [--families cnn3,mobilenet_v2_035] [--sizes 96,128,160,224]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import covid_cxr  # sets TF_USE_LEGACY_KERAS before TensorFlow loads

covid_cxr.quiet_import_warnings(__name__)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from covid_cxr.trainer import models as M  # noqa: E402
from covid_cxr.trainer import training as T  # noqa: E402

DEFAULT_FAMILIES = (
    "cnn3", "cnn4", "bn_double_conv", "mobilenet_v2_035", "mobilenet_v1_075", "mobilenet_v2", "efficientnet_b0",
    "densenet121",
)


def _median_step_ms(fn, steps: int) -> float:
    fn()  # warm-up (tracing)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _warm_up() -> None:
    """The process's first tf.function pays a one-off start-up cost (~10 s): keep it out of the table."""
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("adam", "binary_crossentropy")
    model.train_on_batch(np.zeros((2, 8, 8, 1), np.float32), np.zeros((2,), np.float32))
    model.predict_on_batch(np.zeros((2, 8, 8, 1), np.float32))


def _pretrained_like(family: str, size: int, hp: M.HParams, tmpdir: str) -> M.BuiltModel:
    """Transfer model loaded from a weights file of random values (speed == pretrained speed)."""
    spec = M.TRANSFER_SPECS[family]
    path = os.path.join(tmpdir, f"{family}_{size}.h5")
    spec.constructor(include_top=False, weights=None, input_shape=(size, size, 3), **spec.kwargs).save_weights(path)
    keras.backend.clear_session()
    built = M.build_model(hp, size, 2, weights=path)
    assert built.pretrained
    return built


def measure(family: str, size: int, batch: int, steps: int, fine_tune_layers: int, tmpdir: str) -> dict:
    keras.backend.clear_session()
    hp = M.HParams(family=family, fine_tune_layers=fine_tune_layers)
    if M.is_transfer(family):
        built = _pretrained_like(family, size, hp, tmpdir)
    else:
        built = M.build_model(hp, size, 2, weights="none")
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(batch, size, size, 1).astype("float32"))
    y = tf.constant(rng.randint(0, 2, batch).astype("int64"))
    row = {"family": built.family, "size": size, "params": M.count_params(built.model)[0]}

    phase1 = M.PHASE_HEAD if built.backbone is not None else M.PHASE_END_TO_END
    T.compile_model(built, hp, 2, phase1)
    row["p1"] = _median_step_ms(lambda: built.model.train_on_batch(x, y), steps) / batch
    row["p1_trainable"] = M.count_params(built.model)[1]
    if built.backbone is not None and fine_tune_layers > 0:
        T.compile_model(built, hp, 2, M.PHASE_FINE_TUNE)
        row["p2"] = _median_step_ms(lambda: built.model.train_on_batch(x, y), steps) / batch
        row["p2_trainable"] = M.count_params(built.model)[1]
    row["inf"] = _median_step_ms(lambda: built.model.predict_on_batch(x), steps) / batch
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES))
    parser.add_argument("--sizes", default="96,128,160,224")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--fine-tune-layers", type=int, default=20)
    parser.add_argument("--train-images", type=int, default=1200)
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=10, help="phase 1 / end-to-end epochs for 'est min'")
    parser.add_argument("--fine-tune-epochs", type=int, default=5, help="phase 2 epochs for 'est min'")
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    sizes = [int(s) for s in args.sizes.split(",")]
    unknown = [f for f in families if f not in M.FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {sorted(M.FAMILIES)}")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# {os.cpu_count()} CPUs, batch {args.batch}, load avg at start {load:.2f}; est min = "
        f"{args.epochs} ep x {args.train_images} train (p1) + {args.fine_tune_epochs} ep x {args.train_images} "
        f"(p2, transfer only) + val {args.val_images}/epoch; tracing excluded",
        flush=True,
    )
    _warm_up()
    header = f"{'family':<18}{'size':>5}{'params':>11}{'p1 ms/img':>11}{'p2 ms/img':>11}{'inf ms/img':>11}{'est min':>9}"
    print(header)
    print("-" * len(header), flush=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        for family in families:
            for size in sizes:
                if M.is_transfer(family) and size < M.TRANSFER_SPECS[family].min_size:
                    continue
                try:
                    r = measure(family, size, args.batch, args.steps, args.fine_tune_layers, tmpdir)
                except Exception as error:  # noqa: BLE001 - keep benchmarking the others
                    print(f"{family:<18}{size:>5}  failed: {type(error).__name__}: {error}", flush=True)
                    continue
                p2 = r.get("p2")
                epochs_p2 = args.fine_tune_epochs if p2 is not None else 0
                est_ms = (
                    args.epochs * args.train_images * r["p1"]
                    + epochs_p2 * args.train_images * (p2 or 0.0)
                    + (args.epochs + epochs_p2) * args.val_images * r["inf"]
                )
                p2_text = f"{p2:>11.1f}" if p2 is not None else f"{'-':>11}"
                print(
                    f"{r['family']:<18}{size:>5}{r['params']:>11,}{r['p1']:>11.1f}{p2_text}{r['inf']:>11.1f}"
                    f"{est_ms / 60000:>9.1f}",
                    flush=True,
                )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# load avg at end {load:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
