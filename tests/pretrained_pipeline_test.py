"""The `full` preset's training path through the whole DAG, as `covid-cxr run` takes it.

The default suite's DAG test (pipeline_e2e_test.py) trains the `quick` preset's scratch CNNs. This
one keeps `full` as it is -- pretrained MobileNetV2 1.0 and 0.35 averaged, phase 1 and the Tuner
on cached backbone features, fine-tuning, the reproducible / oneDNN restart -- and only shrinks the
data (synthetic films at 32 px) and the epoch budget. The weight files are random values saved
under the Keras names, so it needs neither the network nor ../shared. About 3.5 minutes on 2 cores;
in the default suite since stop 50, because while it was marked slow it failed unseen for several stops.
"""
import os
import subprocess
import sys

import tf_keras as keras

from covid_cxr.data import synthetic
from covid_cxr.pipeline import config as cfg
from covid_cxr.pipeline import metadata
from covid_cxr.serving import model_metadata, predict
from covid_cxr.trainer import models

TASK = "covid-vs-normal"
SIZE = 32


def _weights_dir(path) -> str:
    """Random MobileNetV2 1.0 / 0.35 weights under the file names `model.weights_dir` looks for."""
    os.makedirs(path)
    for family in ("mobilenet_v2", "mobilenet_v2_035"):
        spec = models.TRANSFER_SPECS[family]
        backbone = spec.constructor(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), **spec.kwargs)
        backbone.save_weights(os.path.join(path, spec.keras_files[0].replace("{rows}", "224")))
        keras.backend.clear_session()
    return str(path)


def _split_records(root, split) -> list[bytes]:
    import glob

    import tensorflow as tf

    files = glob.glob(os.path.join(root, "ImportExampleGen", "examples", "*", f"Split-{split}", "*.gz"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_full_preset_trains_a_pretrained_pair_through_the_dag(tmp_path):
    data_dir = str(tmp_path / "data")
    synthetic.generate(data_dir, TASK, patients_per_class=20, seed=5)
    overrides = {
        "model.image_size": SIZE, "tuner.image_sizes": [SIZE], "model.weights_dir": _weights_dir(tmp_path / "weights"),
        "training.epochs": 2, "training.fine_tune_epochs": 2, "tuner.trials": 1, "tuner.fine_tune_layers": [10],
        "gate.min_sensitivity": 0.0, "gate.min_specificity": 0.0,  # random weights at 32 px: the path is under test, not the figures
        "training.atypical_quantile": 0.6,  # 7 validation films here: too few to place `full`'s 0.95 quantile
        # Random weights at 32 px learn nothing (each member's eval AUC is 0.5): at `full`'s floor (0.6) the
        # second member would be dropped, and the served pair is under test here, not the drop rule.
        "training.member_min_auc": 0.5,
    }
    root, serving = str(tmp_path / "root"), str(tmp_path / "serving")
    args = [sys.executable, "-m", "covid_cxr.cli", "--verbose", "run", "--preset", "full", "--data", data_dir, "--task", TASK,
            "--pipeline-root", root, "--serving-dir", serving]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "restarting with the TensorFlow settings" in result.stdout  # `full` pins threads and oneDNN
    # The Tuner computed the tuned family's backbone features; the Trainer reused them and computed
    # only the other member's.
    logs = result.stdout + result.stderr
    assert logs.count("mobilenet_v2: train backbone features of") == 1, logs[-3000:]
    assert logs.count("mobilenet_v2_035: train backbone features of") == 1
    assert "backbone features already computed in this process (by the Tuner) are reused" in logs

    config = cfg.load_config("full", overrides={"data.data_dir": data_dir, "model.task": TASK,
                                                "runtime.pipeline_root": root, "runtime.serving_dir": serving, **overrides})
    outcome = metadata.latest_outcome(config)
    assert outcome.blessed and outcome.pushed, outcome.report.failures
    trained = model_metadata.read(outcome.destination)
    assert trained["ensemble_members"] == ["mobilenet_v2", "mobilenet_v2_035"]
    for family in trained["ensemble_members"]:  # from the weights_dir files, not a fallback CNN or random init
        assert f"{family}: pretrained weights from file {config.model.weights_dir}" in trained["family_note"], trained["family_note"]
    for fit in trained["training"]:
        # Both phases ran, in order, for both members, and what is served is one of their epochs.
        assert [phase for phase, _ in fit["epochs_run"]] == ["frozen backbone", "fine-tuning"], fit
        assert fit["kept"]["epoch_in_phase"] <= dict(fit["epochs_run"])[fit["kept"]["phase"]], fit
    card = open(os.path.join(outcome.destination, "model_card.md")).read()
    assert "| mobilenet_v2_035 | frozen backbone " in card and "members' probabilities are averaged" in card
    # The atypical-input check: fitted on both members' pooled features, served, described, and it
    # passed through the Evaluator (TFMA reads the same signature).
    check = trained["typicality"]
    assert check["features"] == "pooled features of mobilenet_v2 + mobilenet_v2_035" and check["quantile"] == 0.6
    assert check["dimensions"] == 1280 + 1280  # MobileNetV2 0.35 also ends in 1,280 channels
    assert "atypical-input check: Mahalanobis distance of the pooled features of mobilenet_v2 + mobilenet_v2_035" in card
    served = predict.load_model(outcome.destination).predict_examples(_split_records(root, "test"))
    assert served["atypicality"].shape == served["covid_probability"].shape and served["atypical"].dtype == bool
