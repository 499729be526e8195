#!/usr/bin/env python
"""Does one training step give the same weights every time? Replays a few steps from one saved state.

Builds the `full` preset's main member by default (MobileNetV2 1.0, offline ImageNet weights,
in-model augmentation, head dropout) in its frozen-base phase, takes ``--batches`` real batches of
Radiography films, and ``--reps`` times restores every weight, optimizer slot and random-generator
state and trains on those batches again. Prints one hash of all weights per repetition and the
number of distinct outcomes: 1 means the steps repeat to the bit.

``--warm N`` first executes the training function N more times (on the first batch) before the
state is saved. TensorFlow's executor starts every kernel as "expensive" (an estimate of 1e8
cycles, moved a tenth of the way to the measured cost per execution) and runs kernels found cheap
inline instead of queuing them on the inter-op pool; the estimate of a cheap kernel falls under the
threshold after about 90 executions. The repetitions show when that happens (docs/results.md,
stop 18). Run with the thread settings of ``training.reproducible``:

    TF_NUM_INTEROP_THREADS=1 TF_NUM_INTRAOP_THREADS=1 OMP_NUM_THREADS=1 \
        .venv/bin/python scripts/step_determinism.py --reps 30 [--warm 40] [--no-augment]
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os

import covid_cxr  # sets TF_USE_LEGACY_KERAS before TensorFlow loads

covid_cxr.quiet_import_warnings(__name__)

import numpy as np  # noqa: E402

from covid_cxr.pipeline.config import user_path  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_IMAGES = os.path.join(HERE, "..", "..", "shared", "data", "covid19-radiography", "*", "*.png")
DEFAULT_WEIGHTS = os.path.join(HERE, "..", "..", "shared", "weights")


def load_batches(pattern: str, batches: int, batch_size: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    files = sorted(glob.glob(pattern))
    if len(files) < batch_size * batches:
        raise SystemExit(f"need {batch_size * batches} images matching {pattern!r}, found {len(files)}")
    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[: batch_size * batches]]
    x = np.stack([np.asarray(Image.open(f).convert("L").resize((size, size)), np.float32) / 255.0 for f in files])
    y = np.array([os.path.basename(os.path.dirname(f)).upper() == "COVID" for f in files], np.float32)
    return x[..., None], y


def generator_states(model) -> list:
    """The state variables of the random generators behind augmentation and dropout."""
    states = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        generator = getattr(getattr(layer, "_random_generator", None), "_generator", None)
        if generator is not None:
            states.append(generator.state)
    return states


def weights_hash(model) -> str:
    return hashlib.md5(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()[:10]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--family", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warm", type=int, default=0, help="extra executions of the training function before the state is saved")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--images", default=DEFAULT_IMAGES, type=user_path, help="glob of PNG films in <label>/ folders (COVID = positive)")
    parser.add_argument("--weights-dir", default=DEFAULT_WEIGHTS, type=user_path)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from covid_cxr.trainer import models, training

    x, y = load_batches(args.images, args.batches, args.batch_size, args.size)
    n = args.batch_size
    tf.keras.utils.set_random_seed(7)
    # Generator-backed random layers keep their state in variables, so a repetition can restore it.
    tf.keras.backend.experimental.enable_tf_random_generator()
    hparams = models.HParams(family=args.family, dropout=0.2, dense_units=128,
                             augment=models.AugmentConfig(enabled=not args.no_augment))
    built = models.build_model(hparams, args.size, 2, weights="auto", weights_dir=args.weights_dir)
    print(built.note)
    phase = models.PHASE_HEAD if built.pretrained else models.PHASE_END_TO_END
    model = training.compile_model(built, hparams, 2, phase=phase)
    for _ in range(1 + args.warm):  # the first call also creates the optimizer's slots
        model.train_on_batch(x[:n], y[:n])
    state = [(v, v.numpy()) for v in model.variables + model.optimizer.variables() + generator_states(model)]

    executions = 1 + args.warm
    outcomes: dict[str, int] = {}
    for rep in range(args.reps):
        for variable, value in state:
            variable.assign(value)
        for b in range(args.batches):
            model.train_on_batch(x[b * n:(b + 1) * n], y[b * n:(b + 1) * n])
        executions += args.batches
        digest = weights_hash(model)
        outcomes[digest] = outcomes.get(digest, 0) + 1
        print(f"rep {rep:3d}  train-function executions so far {executions:4d}  weights {digest}", flush=True)
    print(f"distinct outcomes: {len(outcomes)} of {args.reps} {sorted(outcomes.values(), reverse=True)}")
    return len(outcomes)


if __name__ == "__main__":
    main()
