"""Tests for covid_cxr.trainer.models: every family's shapes, phases, augmentation, weights, export."""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from covid_cxr.trainer import models as M

SHARED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "weights")
S = 32  # Transform size used in these tests
ALL_FAMILIES = sorted(M.FAMILIES)
_REAL_NETWORK_REACHABLE = M.network_reachable  # the autouse fixture replaces it in every test


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test may download: the network probe says 'unreachable' and the Keras cache is empty."""
    monkeypatch.setattr(M, "network_reachable", lambda *a, **k: False)
    monkeypatch.setattr(M, "KERAS_CACHE_DIRS", (str(tmp_path / "keras_cache"),))


@pytest.fixture(autouse=True, scope="module")
def _fresh_keras_graph():
    keras.backend.clear_session()  # the global Keras graph grows with every build and slows them
    yield


_BUILT: dict = {}


def built_for(family: str, num_classes: int = 2) -> M.BuiltModel:
    """Random-init models, cached per (family, classes): building DenseNet/Xception takes seconds."""
    key = (family, num_classes)
    if key not in _BUILT:
        _BUILT[key] = M.build_model(M.HParams(family=family), S, num_classes, weights="none")
    return _BUILT[key]


def images(n=4, size=S, seed=0):
    return np.random.RandomState(seed).rand(n, size, size, 1).astype("float32")


def trainable_backbone_layers(built):
    return [layer for layer in built.backbone.layers if layer.trainable_weights]


def test_registry_lists_every_family():
    assert set(M.SCRATCH_FAMILIES) == {"cnn3", "cnn4", "bn_double_conv"}
    assert set(M.TRANSFER_FAMILIES) == {
        "xception", "vgg19", "densenet121", "mobilenet_v2", "mobilenet_v2_035", "mobilenet_v1_075", "efficientnet_b0",
    }
    assert set(M.FAMILIES) == set(M.SCRATCH_FAMILIES) | set(M.TRANSFER_FAMILIES)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_output_shapes_binary_and_three_class(family):
    x = images()
    binary, three = built_for(family, 2), built_for(family, 3)
    for built, width, activation in ((binary, 1, "sigmoid"), (three, 3, "softmax")):
        model = built.model
        assert built.family == family and not built.pretrained
        assert model.input_shape == (None, S, S, 1)
        assert model.inputs[0].name.startswith("image_xf")
        assert model.output_shape == (None, width)
        out_layer = model.get_layer(M.OUTPUT_NAME)
        assert out_layer is model.layers[-1]
        assert out_layer.activation.__name__ == activation
        y = model(x, training=False).numpy()
        assert y.shape == (4, width) and np.all((y >= 0) & (y <= 1))
        if width == 3:
            np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    if M.is_transfer(family):
        assert binary.backbone is not None and binary.backbone.input_shape[-1] == 3
        assert binary.backbone.input_shape[1] == max(S, M.TRANSFER_SPECS[family].min_size)
        assert binary.model.get_layer("gray_to_rgb") is not None
    else:
        assert binary.backbone is None
        first_conv = next(l for l in binary.model.layers if isinstance(l, keras.layers.Conv2D))
        assert first_conv.kernel.shape[2] == 1  # scratch CNNs see the 1-channel image


@pytest.mark.parametrize("family", sorted(M.TRANSFER_FAMILIES))
def test_trainable_layers_per_phase(family):
    built = built_for(family)
    backbone_ids = {id(w) for w in built.backbone.weights}
    try:
        M.set_phase(built, M.PHASE_HEAD)
        assert built.backbone.trainable_weights == []
        head = built.model.trainable_weights
        assert head and all(id(w) not in backbone_ids for w in head)
        assert {w.name.split("/")[0] for w in head} >= {M.OUTPUT_NAME}

        n = 5
        chosen = M.set_phase(built, M.PHASE_FINE_TUNE, n)
        trainable = trainable_backbone_layers(built)
        assert len(trainable) == n == len(chosen)
        assert not any(isinstance(l, keras.layers.BatchNormalization) for l in trainable)
        # exactly the top n weighted non-BN layers, in order
        weighted = [l for l in built.backbone.layers
                    if not isinstance(l, keras.layers.BatchNormalization) and l.weights
                    and any(w.trainable for w in l.weights)]
        assert [l.name for l in trainable] == [l.name for l in weighted[-n:]]
        assert all(w.trainable for w in head)  # the head stays trainable in phase 2

        everything = M.set_phase(built, M.PHASE_FINE_TUNE, 10_000)
        assert len(trainable_backbone_layers(built)) == len(weighted) == len(everything)

        M.set_phase(built, M.PHASE_FINE_TUNE, 0)
        assert built.backbone.trainable_weights == []

        M.set_phase(built, M.PHASE_END_TO_END)
        assert len(built.model.trainable_weights) == len(
            [w for w in built.model.weights if w.trainable]
        )  # BN gamma/beta included
    finally:
        M.set_phase(built, M.PHASE_HEAD)


@pytest.mark.parametrize("family", sorted(M.SCRATCH_FAMILIES))
def test_scratch_families_train_everything_in_every_phase(family):
    built = built_for(family)
    n_trainable = len([w for w in built.model.weights if w.trainable])
    for phase in (M.PHASE_END_TO_END, M.PHASE_HEAD, M.PHASE_FINE_TUNE):
        assert M.set_phase(built, phase, 5) == []
        assert len(built.model.trainable_weights) == n_trainable


def test_augmentation_only_in_training():
    built = built_for("cnn3")
    aug = built.model.get_layer(M.AUGMENTATION_NAME)
    assert [l.name for l in aug.layers] == ["aug_flip", "aug_rotation", "aug_shift", "aug_shear", "aug_zoom"]
    x = images(8)
    np.testing.assert_array_equal(aug(x, training=False).numpy(), x)
    a, b = aug(x, training=True).numpy(), aug(x, training=True).numpy()
    assert np.abs(a - x).max() > 0.05 and np.abs(a - b).max() > 0.05
    # The whole model: deterministic at inference, stochastic in training (augmentation + dropout).
    model = built.model
    assert model.get_layer("head_dropout").rate == M.HParams().dropout > 0
    np.testing.assert_array_equal(model(x, training=False).numpy(), model(x, training=False).numpy())
    assert np.abs(model(x, training=True).numpy() - model(x, training=True).numpy()).max() > 0


def test_augment_config_controls_layers():
    off = M.build_model(M.HParams(family="cnn3", augment=M.AugmentConfig(enabled=False)), S, 2, weights="none")
    assert M.AUGMENTATION_NAME not in [l.name for l in off.model.layers]
    cfg = M.AugmentConfig(rotation_degrees=0, shear=0, zoom=0, shift=0.2, horizontal_flip=False)
    some = M.build_model(M.HParams(family="cnn3", augment=cfg), S, 2, weights="none")
    assert [l.name for l in some.model.get_layer(M.AUGMENTATION_NAME).layers] == ["aug_shift"]
    assert some.model.get_layer(M.AUGMENTATION_NAME).layers[0].height_factor == 0.2
    grey = M.build_model(M.HParams(family="cnn3", augment=M.AugmentConfig(gamma=0.3)), S, 2, weights="none")
    assert [l.name for l in grey.model.get_layer(M.AUGMENTATION_NAME).layers][0] == "aug_intensity"


def test_augment_config_maps_to_keras_layer_factors():
    # Keras factors are fractions: rotation of a full turn (15 degrees -> 15/360), shift and zoom of
    # the height AND the width; every geometric layer fills as configured.
    cfg = M.AugmentConfig(rotation_degrees=18, shift=0.15, shear=0.1, zoom=0.2, fill_mode="constant")
    layers = {l.name: l for l in M.augmentation_block(cfg).layers}
    assert layers["aug_rotation"].factor == pytest.approx(18 / 360)
    assert (layers["aug_shift"].height_factor, layers["aug_shift"].width_factor) == (0.15, 0.15)
    assert (layers["aug_zoom"].height_factor, layers["aug_zoom"].width_factor) == (0.2, 0.2)
    assert layers["aug_flip"].mode == "horizontal"
    assert {n: l.fill_mode for n, l in layers.items() if n != "aug_flip"} == dict.fromkeys(
        ("aug_rotation", "aug_shift", "aug_shear", "aug_zoom"), "constant")
    # A flip alone is still augmentation; nothing at all is none.
    flip_only = M.AugmentConfig(rotation_degrees=0, shift=0, shear=0, zoom=0, horizontal_flip=True)
    assert [l.name for l in M.augmentation_block(flip_only).layers] == ["aug_flip"]
    assert M.augmentation_block(dataclasses.replace(flip_only, horizontal_flip=False)) is None


def test_random_shear_geometry():
    layer = M.RandomShear(0.3, fill_mode="constant", interpolation="nearest")
    x = np.zeros((16, 21, 21, 1), np.float32)
    x[:, :, 10, :] = 1.0  # a vertical line through the centre
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)
    y = layer(x, training=True).numpy()
    assert y.shape == x.shape
    # The centre pixel is a fixed point of a shear about the centre; the line's ends move sideways.
    np.testing.assert_array_equal(y[:, 10, 10, 0], 1.0)
    moved = [np.argmax(y[i, 0, :, 0]) != 10 for i in range(16)]
    assert sum(moved) >= 8
    assert M.RandomShear.from_config(layer.get_config()).factor == 0.3


def test_random_shear_turns_both_axes_about_the_centre_of_a_non_square_image():
    layer = M.RandomShear(0.3, fill_mode="constant", interpolation="nearest")
    x = np.zeros((16, 21, 31, 1), np.float32)
    x[:, 10, :, :] = 1.0  # a horizontal line through the centre (row 10 of 21; column 15 of 31)
    y = layer(x, training=True).numpy()
    np.testing.assert_array_equal(y[:, 10, 15, 0], 1.0)  # the centre is (width - 1) / 2, (height - 1) / 2
    moved = [np.argmax(y[i, :, 0, 0]) != 10 for i in range(16)]  # the line's left end moves up or down
    assert sum(moved) >= 8


def test_random_intensity_changes_grey_levels_only_in_training():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (16, 12, 12, 1)).astype(np.float32)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = 0.0, 1.0  # black and white stay black and white under a gamma
    gamma = M.RandomIntensity(gamma=0.5, seed=1)
    np.testing.assert_array_equal(gamma(x, training=False).numpy(), x)
    y = gamma(x, training=True).numpy()
    assert y.min() >= 0.0 and y.max() <= 1.0
    np.testing.assert_allclose(y[:, 0, 0:2, 0], x[:, 0, 0:2, 0], atol=1e-6)
    # A gamma keeps each film's grey-level order and draws one curve per film.
    for film_in, film_out in zip(x, y):
        assert (np.diff(film_out.ravel()[np.argsort(film_in.ravel())]) >= -1e-6).all()
    mid_shift = (y - x)[:, 1:, :, 0].mean(axis=(1, 2))
    assert mid_shift.max() > 0.02 and mid_shift.min() < -0.02
    # Contrast about each film's mean: the mean stays while the spread changes.
    contrast = M.RandomIntensity(contrast=0.5, seed=2)
    inner = x[:, 1:, :, :]
    z = contrast(inner, training=True).numpy()
    np.testing.assert_allclose(z.mean(axis=(1, 2, 3)), inner.mean(axis=(1, 2, 3)), atol=1e-5)
    ratio = z.std(axis=(1, 2, 3)) / inner.std(axis=(1, 2, 3))
    assert ratio.min() < 0.9 and ratio.max() > 1.1 and ((ratio > 0.49) & (ratio < 1.51)).all()
    # Stretched about the mean, black and white films' extremes stay in the Transform's [0, 1] range.
    stretched = contrast(x, training=True).numpy()
    assert stretched.min() == 0.0 and stretched.max() == 1.0
    assert M.RandomIntensity.from_config(contrast.get_config()).contrast == 0.5


@pytest.mark.parametrize("bad", [{"contrast": 1.0}, {"contrast": -0.1}, {"gamma": 1.5}, {"rotation_degrees": 181},
                                 {"shift": 1.0}, {"shear": -0.1}, {"zoom": 1.0}])
def test_augment_config_rejects_out_of_range_sizes(bad):
    with pytest.raises(ValueError, match="augmentation"):
        M.AugmentConfig(**bad)


def test_resizing_when_image_size_differs():
    built = M.build_model(M.HParams(family="mobilenet_v2_035", image_size=48), S, 2, weights="none")
    assert built.model.get_layer("resize").height == 48
    assert built.backbone.input_shape == (None, 48, 48, 3) and built.image_size == 48
    same = built_for("mobilenet_v2_035")
    assert "resize" not in [l.name for l in same.model.layers]
    xcep = built_for("xception")  # 32 < Xception's minimum 71: resized up, with a note
    assert xcep.image_size == 71 and "71" in xcep.note
    small = M.build_model(M.HParams(family="bn_double_conv"), 16, 2, weights="none")  # 5 poolings
    assert small.image_size == 32 and small.model.get_layer("resize").height == 32
    # Down: area (averages, no aliasing of fine texture); up: bilinear.
    down = M.build_model(M.HParams(family="cnn3", image_size=S // 2), S, 2, weights="none").model.get_layer("resize")
    assert (down.height, down.interpolation) == (S // 2, "area")
    assert built.model.get_layer("resize").interpolation == "bilinear"


@pytest.mark.parametrize("family", sorted(M.TRANSFER_FAMILIES))
def test_grayscale_preprocessing_matches_family_preprocess_input(family):
    built = built_for(family)
    to_backbone = keras.Model(built.model.input, built.model.get_layer(M.BACKBONE_PREPROCESS_NAME).output)
    x = images(2)
    if built.image_size != S:  # e.g. Xception's 71 px minimum: compare from the model's own resized input
        x_in = keras.Model(built.model.input, built.model.get_layer("resize").output)(x, training=False).numpy()
    else:
        x_in = x
    rgb255 = np.repeat(x_in, 3, axis=-1) * 255.0
    expected = M.TRANSFER_SPECS[family].preprocess_input(rgb255.copy())
    got = to_backbone(x, training=False).numpy()
    assert got.shape[1] == built.image_size
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_hparams_round_trip():
    hp = M.HParams(family="cnn4", image_size=96, augment=M.AugmentConfig(zoom=0.2))
    d = hp.to_dict()
    assert d["augment"]["zoom"] == 0.2
    assert M.HParams.from_dict(d) == hp
    with pytest.raises(ValueError):
        M.HParams.from_dict({**d, "learning_rte": 1e-3})
    with pytest.raises(ValueError):
        M.HParams(family="resnet50")



# ------------------------------------------------------------------------------------------------
# Weights and fallback
# ------------------------------------------------------------------------------------------------


def _warnings(caplog):
    return [r for r in caplog.records if r.name == M.__name__ and r.levelno == logging.WARNING]


@pytest.mark.parametrize("weights", ["auto", "imagenet", "missing.h5"])
def test_missing_weights_fall_back_to_random_init_with_one_warning(weights, tmp_path, caplog):
    if weights.endswith(".h5"):
        weights = str(tmp_path / weights)
    caplog.set_level(logging.INFO)
    # No wait on the network: the autouse fixture's probe says unreachable, and the message says the
    # download was skipped (test_no_download_is_tried_offline... checks none is tried). No timing here:
    # under a loaded machine building the backbone alone took 35 s.
    built = M.build_model(
        M.HParams(family="mobilenet_v2_035"), S, 2, weights=weights, weights_dir=str(tmp_path), fallback="none"
    )
    assert built.family == "mobilenet_v2_035" and built.backbone is not None
    assert not built.pretrained and built.fell_back
    (record,) = _warnings(caplog)
    assert "mobilenet_v2_035" in record.getMessage() and "\n" not in record.getMessage()
    assert built.model(images(), training=False).shape == (4, 1)


def test_fallback_to_another_family_and_error(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    built = M.build_model(M.HParams(family="densenet121"), S, 3, weights="auto", weights_dir=str(tmp_path))
    assert built.family == "bn_double_conv" and built.requested_family == "densenet121"
    assert built.backbone is None and built.model.output_shape == (None, 3)
    assert built.fell_back and "densenet121" in built.fallback_reason
    assert len(_warnings(caplog)) == 1
    if os.path.isdir(SHARED_WEIGHTS):  # a transfer fallback takes its file from weights_dir
        other = M.build_model(M.HParams(family="densenet121"), S, 2, weights="auto", weights_dir=SHARED_WEIGHTS,
                              fallback="mobilenet_v2_035")
        assert other.family == "mobilenet_v2_035" and other.pretrained
    with pytest.raises(RuntimeError, match="densenet121"):
        M.build_model(M.HParams(family="densenet121"), S, 2, weights="auto", weights_dir=str(tmp_path), fallback="error")
    with pytest.raises(ValueError):
        M.build_model(M.HParams(family="cnn3"), S, 2, fallback="resnet")
    with pytest.raises(ValueError):
        M.build_model(M.HParams(family="cnn3"), S, 2, weights="imagnet")


def test_weights_dir_in_a_bucket_is_read_through_tensorflow_file_systems(tmp_path):
    # A Kubeflow / Vertex run keeps its offline weights in gs://; ram:// is a non-local file system TF ships.
    spec = M.TRANSFER_SPECS["mobilenet_v2_035"]
    made = spec.constructor(include_top=False, weights=None, input_shape=(96, 96, 3), **spec.kwargs)
    name = spec.keras_files[0].replace("{rows}", "96")
    made.save_weights(str(tmp_path / name))
    bucket = "ram://weights-for-models-test"
    tf.io.gfile.makedirs(bucket)
    tf.io.gfile.copy(str(tmp_path / name), f"{bucket}/{name}", overwrite=True)
    assert M.find_weight_file("mobilenet_v2_035", [bucket], 96) == f"{bucket}/{name}"
    built = M.build_model(M.HParams(family="mobilenet_v2_035", image_size=96), S, 2, weights="auto", weights_dir=bucket)
    assert built.pretrained and bucket in built.note
    for a, b in zip(made.get_weights(), built.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_the_weight_file_of_the_input_size_comes_first_then_224(tmp_path):
    pattern = M.TRANSFER_SPECS["mobilenet_v2_035"].keras_files[0]
    for rows in ("128", "224", "96"):
        (tmp_path / pattern.replace("{rows}", rows)).write_bytes(b"")
    assert M.find_weight_file("mobilenet_v2_035", [str(tmp_path)], 96) == str(tmp_path / pattern.replace("{rows}", "96"))
    assert M.find_weight_file("mobilenet_v2_035", [str(tmp_path)], 160) == str(tmp_path / pattern.replace("{rows}", "224"))


def test_no_download_is_tried_offline_and_a_missing_file_is_named(tmp_path, monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(M, "KERAS_CACHE_DIRS", ())
    monkeypatch.setattr(M, "network_reachable", lambda *args, **kwargs: False)

    def download(family, size):
        raise AssertionError("downloaded although the network is unreachable")

    monkeypatch.setattr(M, "_download_imagenet", download)
    backbone, source, failures = M._load_backbone("mobilenet_v2_035", S, "imagenet", None)
    assert (backbone, source) == (None, "")
    assert failures == [f"download skipped: {M.WEIGHTS_HOST[0]}:{M.WEIGHTS_HOST[1]} unreachable"]
    missing = str(tmp_path / "missing.h5")
    assert M._load_backbone("mobilenet_v2_035", S, missing, None) == (None, "", [f"weights file {missing!r} not found"])


def test_corrupt_weight_file_falls_back(tmp_path, caplog):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    built = M.build_model(M.HParams(family="mobilenet_v2_035"), S, 2, weights=str(bad))
    assert not built.pretrained and len(_warnings(caplog)) == 1


def test_weights_none_is_silent_and_scratch_ignores_weights(caplog):
    transfer = M.build_model(M.HParams(family="mobilenet_v2_035"), S, 2, weights="none")
    scratch = M.build_model(M.HParams(family="cnn3"), S, 2, weights="imagenet")
    assert _warnings(caplog) == []
    assert transfer.note == "mobilenet_v2_035: random init (weights='none')"
    assert scratch.note == "cnn3: scratch CNN on 1-channel input" and not scratch.pretrained


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("where", ["bad name", "closed port"])
def test_network_probe_fails_fast(where):
    host, port = ("nonexistent.invalid", 443) if where == "bad name" else ("127.0.0.1", _closed_port())
    start = time.monotonic()
    assert _REAL_NETWORK_REACHABLE(host, port, timeout=1.0) is False
    # The probe gives up after 2 x timeout whatever the resolver does (system DNS timeouts run to 20-30 s);
    # the slack is for a loaded machine, not a speed target.
    assert time.monotonic() - start < 10


def test_pretrained_file_loads_and_backbone_runs_in_inference_mode(tmp_path):
    """A weights file (here: a saved random MobileNetV2-0.35) makes the model 'pretrained'."""
    source = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(S, S, 3))
    path = str(tmp_path / "mnv2_035.h5")
    source.save_weights(path)
    built = M.build_model(M.HParams(family="mobilenet_v2_035"), S, 2, weights=path)
    assert built.pretrained and path in built.note
    for a, b in zip(source.get_weights(), built.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    bn = next(l for l in built.backbone.layers if isinstance(l, keras.layers.BatchNormalization))
    M.set_phase(built, M.PHASE_FINE_TUNE, 1000)
    assert not bn.trainable
    # BatchNorm runs in inference mode even when the model trains and BN is trainable (the backbone
    # is called with training=False): the moving statistics are not updated.
    M.set_phase(built, M.PHASE_END_TO_END)
    assert bn.trainable
    before = [w.numpy().copy() for w in bn.non_trainable_weights]
    built.model(images(8) * 3.0, training=True)
    for a, w in zip(before, bn.non_trainable_weights):
        np.testing.assert_array_equal(a, w.numpy())
    # ...whereas a random-init backbone (BN not baked to inference) does update them.
    rand = M.build_model(M.HParams(family="mobilenet_v2_035"), S, 2, weights="none")
    rbn = next(l for l in rand.backbone.layers if isinstance(l, keras.layers.BatchNormalization))
    before = [w.numpy().copy() for w in rbn.non_trainable_weights]
    rand.model(images(8) * 3.0, training=True)
    assert any(np.abs(a - w.numpy()).max() > 0 for a, w in zip(before, rbn.non_trainable_weights))


def test_efficientnet_from_a_file_is_the_network_keras_builds_for_imagenet(tmp_path, monkeypatch):
    # Keras divides once more by sqrt(ImageNet std) in the stem only for weights="imagenet": built
    # from the same file, the pretrained layers saw inputs at half their scale.
    from tf_keras.src.applications import efficientnet

    source = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(S, S, 3))
    stem = next(l for l in source.layers if isinstance(l, keras.layers.Normalization))
    stem.set_weights([np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225]) ** 2, np.int64(0)])
    path = str(tmp_path / "efficientnetb0_notop.h5")
    source.save_weights(path)
    built = M.build_model(M.HParams(family="efficientnet_b0"), S, 2, weights=path)
    assert built.pretrained and path in built.note
    monkeypatch.setattr(efficientnet.data_utils, "get_file", lambda *a, **k: path)  # "download" that file
    keras_route = keras.applications.EfficientNetB0(include_top=False, weights="imagenet", input_shape=(S, S, 3))
    x = np.random.RandomState(0).rand(2, S, S, 3).astype(np.float32) * 255.0
    ours, theirs = built.backbone(x, training=False).numpy(), keras_route(x, training=False).numpy()
    assert np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max()

    def stem_variance(model):
        return next(l for l in model.layers if isinstance(l, keras.layers.Normalization)).get_weights()[1]

    # Downloaded (weights="imagenet"), Keras divides by itself: the stem is not divided a second time.
    np.testing.assert_array_equal(stem_variance(M._download_imagenet("efficientnet_b0", S)), stem_variance(keras_route))
    # A file saved from the backbone built here (its stem already divided) or from one trained from
    # scratch (stem variance 1) is not Keras' ImageNet file: its stem is left as it is.
    scratch = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(S, S, 3))
    for other in (built.backbone, scratch):
        other.save_weights(path)
        rebuilt = M.build_model(M.HParams(family="efficientnet_b0"), S, 2, weights=path).backbone
        np.testing.assert_array_equal(stem_variance(rebuilt), stem_variance(other))


def test_keras_cache_is_used_before_download(tmp_path, monkeypatch):
    source = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(S, S, 3))
    cache = tmp_path / "cache"
    cache.mkdir()
    source.save_weights(str(cache / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"))
    monkeypatch.setattr(M, "KERAS_CACHE_DIRS", (str(cache),))
    built = M.build_model(M.HParams(family="mobilenet_v2_035"), S, 2, weights="imagenet")
    assert built.pretrained and "Keras cache" in built.note


SHARED_FILES = {
    "mobilenet_v2": "mobilenet_v2_1.0_224_no_top_from_tf2ptq.h5",
    "mobilenet_v2_035": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
    "mobilenet_v1_075": "mobilenet_7_5_224_tf_no_top.h5",
}


@pytest.mark.skipif(not os.path.isdir(SHARED_WEIGHTS), reason="no ../shared/weights")
@pytest.mark.parametrize("family", sorted(SHARED_FILES))
def test_shared_weight_files_load_at_non_224_sizes(family):
    """The offline ImageNet files load (weights identical) into backbones of another input size."""
    path = os.path.join(SHARED_WEIGHTS, SHARED_FILES[family])
    if not os.path.exists(path):
        pytest.skip(f"{path} absent")
    built = M.build_model(M.HParams(family=family, image_size=96), S, 2, weights="auto", weights_dir=SHARED_WEIGHTS)
    assert built.pretrained and SHARED_FILES[family] in built.note and built.image_size == 96
    spec = M.TRANSFER_SPECS[family]
    at_224 = spec.constructor(include_top=False, weights=path, input_shape=(224, 224, 3), **spec.kwargs)
    for a, b in zip(at_224.get_weights(), built.backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    y = built.model(images(), training=False).numpy()
    assert np.all(np.isfinite(y))


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------

_LOAD_WITHOUT_PROJECT = r"""
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"; os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
path, x_path, y_path = sys.argv[1:4]
x, y = np.load(x_path), np.load(y_path)
serve = tf.saved_model.load(path).signatures["serving_default"]
out = serve(image_xf=tf.constant(x))["probabilities"].numpy()
assert np.allclose(out, y, atol=1e-6), (out, y)
import tf_keras as keras
m = keras.models.load_model(path)
assert np.allclose(m.predict(x, verbose=0), y, atol=1e-6)
assert "covid_cxr" not in sys.modules
print("OK")
"""


def test_ensemble_serves_the_mean_of_its_members():
    members = [M.build_model(M.HParams(family=f), S, 2, weights="none") for f in ("cnn3", "cnn4")]
    ensemble = M.average_ensemble(members)
    x = images(3)
    expected = np.mean([m.model.predict(x, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.model.predict(x, verbose=0), expected, atol=1e-6)
    assert ensemble.model.output_names == [M.OUTPUT_NAME] and ensemble.family == "cnn3+cnn4"
    assert ensemble.model.get_layer("covid_cxr_cnn3").get_layer(M.AUGMENTATION_NAME) is not None
    # Each member still augments in training only: at inference the ensemble is deterministic.
    np.testing.assert_allclose(ensemble.model(x, training=False), ensemble.model(x, training=False))
    with pytest.raises(ValueError, match="at least 2"):
        M.average_ensemble(members[:1])
    three_class = M.build_model(M.HParams(family="cnn3"), S, 3, weights="none")
    with pytest.raises(ValueError, match="disagree"):
        M.average_ensemble([members[0], three_class])


def test_ensemble_summarises_its_members():
    # Metadata only (the members' networks are not run): pretrained only when every member is, the
    # largest internal size, each member's requested family and every fallback reason kept.
    member = built_for("cnn3")
    a = dataclasses.replace(member, pretrained=True, image_size=S, requested_family="cnn3")
    b = dataclasses.replace(member, family="cnn4", pretrained=False, image_size=2 * S, requested_family="vgg19",
                            fallback_reason="no vgg19 weights")
    ensemble = M.average_ensemble([a, b])
    assert (ensemble.family, ensemble.requested_family) == ("cnn3+cnn4", "cnn3+vgg19")
    assert not ensemble.pretrained and M.average_ensemble([a, a]).pretrained
    assert ensemble.image_size == 2 * S
    assert ensemble.fallback_reason == "no vgg19 weights" and ensemble.fell_back
    assert M.average_ensemble([a, a]).fallback_reason is None


@pytest.mark.parametrize("ensemble", [False, True], ids=["single", "ensemble"])
def test_saved_model_with_augmentation_serves_without_project_code(ensemble, tmp_path):
    from covid_cxr.trainer import training

    hparams = M.HParams(family="cnn3", augment=M.AugmentConfig(contrast=0.2, gamma=0.2))
    built = M.build_model(hparams, S, 3, weights="none")
    training.compile_model(built, hparams, 3, M.PHASE_END_TO_END)
    if ensemble:
        built = M.average_ensemble([built, M.build_model(M.HParams(family="cnn4"), S, 3, weights="none")])
    training.compile_for_export(built, 3)
    x = images(4)
    y = built.model.predict(x, verbose=0)
    path = str(tmp_path / "serving_model")
    built.model.save(path, save_format="tf")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_PROJECT, path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-2000:]
    # In-process reload keeps the custom layers' classes.
    reloaded = keras.models.load_model(path)
    if ensemble:
        reloaded = reloaded.get_layer("covid_cxr_cnn3")
    assert isinstance(reloaded.get_layer(M.AUGMENTATION_NAME).get_layer("aug_shear"), M.RandomShear)
    assert isinstance(reloaded.get_layer(M.AUGMENTATION_NAME).get_layer("aug_intensity"), M.RandomIntensity)


# ------------------------------------------------------------------------------------------------
# Settings, limits and small builders' details
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, expected", [
    (None, "none"), ("", "none"), ("IMAGENET", "imagenet"), ("Auto", "auto"), ("None", "none"),
    ("/w/mine.h5", "/w/mine.h5"), ("gs://b/Mine.h5", "gs://b/Mine.h5"),
])
def test_normalized_weights_keywords_in_lowercase_and_paths_kept(given, expected):
    assert M.normalized_weights(given) == expected


@pytest.mark.parametrize("given", ["imagnet", "/w/mine.keras", "weights.h5.txt"])
def test_normalized_weights_rejects_what_is_neither_keyword_nor_h5(given):
    with pytest.raises(ValueError, match="weights must be auto, imagenet, none or a path to an .h5 file"):
        M.normalized_weights(given)


@pytest.mark.parametrize("field, value", [
    ("image_size", 8), ("dense_units", 0), ("fine_tune_layers", 0), ("label_smoothing", 0.5),
    ("lr_schedule", "cosine"), ("lr_schedule", "none"), ("dropout", 0.0),
])
def test_hparams_accept_their_limits(field, value):
    assert getattr(M.HParams(**{field: value}), field) == value


@pytest.mark.parametrize("field, value, match", [
    ("image_size", 7, "image_size must be >= 8"), ("dropout", 1.0, "dropout"), ("dense_units", -1, ">= 0"),
    ("fine_tune_layers", -1, ">= 0"), ("learning_rate", 0.0, "> 0"), ("fine_tune_learning_rate", 0.0, "> 0"),
    ("label_smoothing", 0.51, "label_smoothing"), ("lr_schedule", "step", "lr_schedule"),
])
def test_hparams_reject_values_past_their_limits(field, value, match):
    with pytest.raises(ValueError, match=match):
        M.HParams(**{field: value})


def test_hparams_take_their_augmentation_as_a_mapping():
    assert M.HParams(augment={"zoom": 0.2, "gamma": 0.1}).augment == M.AugmentConfig(zoom=0.2, gamma=0.1)
    with pytest.raises(TypeError):
        M.HParams(augment={"zooom": 0.2})


def test_augment_config_limits_and_intensity_alone_is_augmentation():
    assert M.AugmentConfig(contrast=0.99, gamma=1.0).gamma == 1.0  # gamma's upper limit is allowed
    geometry_off = dict(rotation_degrees=0, shift=0, shear=0, zoom=0, horizontal_flip=False)
    assert not M.AugmentConfig(**geometry_off).active
    for grey in ({"contrast": 0.3, "gamma": 0.1}, {"contrast": 0.3}, {"gamma": 0.1}):
        config = M.AugmentConfig(**geometry_off, **grey)
        assert config.active and not dataclasses.replace(config, enabled=False).active
        (layer,) = M.augmentation_block(config).layers
        assert (layer.name, layer.contrast, layer.gamma) == ("aug_intensity", grey.get("contrast", 0.0), grey.get("gamma", 0.0))


def test_random_shear_zero_is_identity_negative_refused_and_config_round_trips():
    x = images(4, 9)
    np.testing.assert_array_equal(M.RandomShear(0.0)(x, training=True).numpy(), x)
    with pytest.raises(ValueError, match="shear factor must be >= 0"):
        M.RandomShear(-0.1)
    layer = M.RandomShear(0.2, fill_mode="constant", interpolation="nearest", fill_value=0.5, seed=3)
    copy = M.RandomShear.from_config(layer.get_config())
    assert (copy.factor, copy.fill_mode, copy.interpolation, copy.fill_value, copy.seed) == (0.2, "constant", "nearest", 0.5, 3)
    gamma = M.RandomIntensity.from_config(M.RandomIntensity(contrast=0.1, gamma=0.4, seed=5).get_config())
    assert (gamma.contrast, gamma.gamma, gamma.seed) == (0.1, 0.4, 5)


def test_random_shear_draws_both_directions():
    layer = M.RandomShear(0.3, fill_mode="constant", interpolation="nearest", seed=0)
    x = np.zeros((32, 21, 21, 1), np.float32)
    x[:, :, 10, :] = 1.0  # a vertical line through the centre: its top end moves left or right
    top = np.argmax(layer(x, training=True).numpy()[:, 0, :, 0], axis=1)
    assert (top < 10).sum() >= 4 and (top > 10).sum() >= 4


SCRATCH_LAYOUT = {  # family: (conv filters bottom to top, dropout rates inside the features, head input)
    "cnn3": ([32, 32, 64], [], "flatten"),
    "cnn4": ([32, 64, 128, 128], [0.25] * 4, "flatten"),
    "bn_double_conv": ([16, 16, 32, 32, 64, 64, 128, 128, 256, 256], [0.2, 0.2], M.FEATURES_NAME),
}


@pytest.mark.parametrize("family", sorted(SCRATCH_LAYOUT))
def test_scratch_families_layout(family):
    filters, dropouts, last = SCRATCH_LAYOUT[family]
    model = built_for(family).model
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == filters
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    # bn_double_conv's convs feed BatchNorm (no bias of their own); the others end in ReLU.
    assert all(c.use_bias == (family != "bn_double_conv") for c in convs)
    assert len([l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]) == (
        len(filters) if family == "bn_double_conv" else 0)
    inner = [l.rate for l in model.layers if isinstance(l, keras.layers.Dropout) and l.name != "head_dropout"]
    assert inner == dropouts
    pools = [l for l in model.layers if isinstance(l, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D))]
    blocks = len(filters) // (2 if family == "bn_double_conv" else 1)  # a 2x2 max-pool ends each block
    assert [(type(p), p.pool_size) for p in pools] == [(keras.layers.MaxPooling2D, (2, 2))] * blocks
    head_dense = model.get_layer("head_dense")
    assert model.layers[model.layers.index(head_dense) - 1].name == last
    if last == M.FEATURES_NAME:  # global average pooling
        assert isinstance(model.get_layer(M.FEATURES_NAME), keras.layers.GlobalAveragePooling2D)


@pytest.mark.parametrize("family, minimum", [("cnn3", 8), ("cnn4", 16), ("bn_double_conv", 32)])
def test_scratch_families_smallest_input_is_raised_to_their_minimum(family, minimum):
    assert M.min_image_size(family) == minimum
    built = M.build_model(M.HParams(family=family), 8, 2, weights="none")
    assert built.image_size == minimum
    assert ("resize" in [l.name for l in built.model.layers]) == (minimum != 8)
    assert built.model(images(2, 8), training=False).shape == (2, 1)
    raised = M.build_model(M.HParams(family=family, image_size=8), S, 2, weights="none")
    assert raised.image_size == minimum
    assert ("raised from 8 to" in raised.note) == (minimum != 8)


def test_head_layers_follow_dense_units_and_dropout():
    bare = M.build_model(M.HParams(family="cnn3", dense_units=0, dropout=0.0), S, 2, weights="none").model
    names = [l.name for l in bare.layers]
    assert "head_dense" not in names and "head_dropout" not in names and names[-2:] == ["flatten", M.OUTPUT_NAME]
    wide = M.build_model(M.HParams(family="cnn3", dense_units=7, dropout=0.3), S, 2, weights="none").model
    assert wide.get_layer("head_dense").units == 7 and wide.get_layer("head_dropout").rate == 0.3
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        M.build_model(M.HParams(family="cnn3"), S, 1, weights="none")


def test_set_phase_rejects_unknown_phases_and_end_to_end_trains_the_whole_backbone():
    built = built_for("mobilenet_v2_035")
    with pytest.raises(ValueError, match="phase must be"):
        M.set_phase(built, 3)
    try:
        assert M.set_phase(built, M.PHASE_END_TO_END) == list(built.backbone.layers)
        assert M.set_phase(built, M.PHASE_HEAD) == []
        total, trainable = M.count_params(built.model)
        backbone_params = int(sum(np.prod(w.shape) for w in built.backbone.weights))
        head_params = int(sum(np.prod(w.shape) for w in built.model.trainable_weights))
        assert (total, trainable) == (backbone_params + head_params, head_params) and trainable < total
    finally:
        M.set_phase(built, M.PHASE_HEAD)


def test_ensemble_names_a_member_without_requested_family_by_its_family_and_joins_every_fallback():
    member = built_for("cnn3")
    plain = dataclasses.replace(member, requested_family="", note="cnn3 note")
    a = dataclasses.replace(member, requested_family="vgg19", fallback_reason="no vgg19", note="vgg note")
    b = dataclasses.replace(member, requested_family="xception", fallback_reason="no xception", note="x note")
    assert M.average_ensemble([plain, a]).requested_family == "cnn3+vgg19"
    both = M.average_ensemble([a, plain, b])
    assert both.fallback_reason == "no vgg19; no xception"
    assert both.note == "mean of 3 models: vgg note | cnn3 note | x note"
    other_input = M.build_model(M.HParams(family="cnn3"), 2 * S, 2, weights="none")  # same output, other input
    with pytest.raises(ValueError, match="disagree"):
        M.average_ensemble([member, other_input])


# ------------------------------------------------------------------------------------------------
# Weight sources in detail
# ------------------------------------------------------------------------------------------------

_SKIPPED = f"download skipped: {M.WEIGHTS_HOST[0]}:{M.WEIGHTS_HOST[1]} unreachable"


def test_a_file_of_another_size_is_found_last_and_the_first_by_name(tmp_path):
    pattern = M.TRANSFER_SPECS["mobilenet_v2_035"].keras_files[0]
    for rows in ("192", "128"):
        (tmp_path / pattern.replace("{rows}", rows)).write_bytes(b"")
    assert M.find_weight_file("mobilenet_v2_035", [str(tmp_path)], 96) == str(tmp_path / pattern.replace("{rows}", "128"))


def test_the_download_has_a_socket_timeout_only_while_it_runs(monkeypatch):
    seen = []

    def create(family, size, weights):
        seen.append((family, size, weights, socket.getdefaulttimeout()))
        raise OSError("offline")

    before = socket.getdefaulttimeout()
    monkeypatch.setattr(M, "_create_backbone", create)
    with pytest.raises(OSError):  # restored also when the download fails
        M._download_imagenet("vgg19", 48)
    assert seen == [("vgg19", 48, "imagenet", M.DOWNLOAD_SOCKET_TIMEOUT_S)] and socket.getdefaulttimeout() == before


@pytest.mark.parametrize("case", ["empty weights_dir", "extra file in the Keras cache", "directory as file"] + [
    f"{name} proxy" for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")])
def test_load_backbone_sources_and_failures(case, tmp_path, monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    downloaded = []

    def download(family, size):
        downloaded.append(family)
        return "a backbone"

    monkeypatch.setattr(M, "_download_imagenet", download)
    family, weights, weights_dir = "mobilenet_v2", "imagenet", None
    if case == "empty weights_dir":
        family, weights, weights_dir = "mobilenet_v2_035", "auto", str(tmp_path)
        expected = (None, "", [f"no mobilenet_v2_035 file in weights_dir {weights_dir!r}", _SKIPPED])
    elif case == "extra file in the Keras cache":  # only the official Keras names are the cache's
        cache = tmp_path / "cache"
        cache.mkdir()
        (cache / M.TRANSFER_SPECS["mobilenet_v2"].extra_files[0]).write_bytes(b"")
        monkeypatch.setattr(M, "KERAS_CACHE_DIRS", (str(cache),))
        expected = (None, "", [_SKIPPED])
    elif case == "directory as file":
        weights = str(tmp_path / "folder.h5")
        os.mkdir(weights)
        expected = (None, "", [f"weights file {weights!r} not found"])
    else:  # behind a proxy the probe cannot tell: the download is tried
        monkeypatch.setenv(case.split()[0], "http://proxy.invalid:3128")
        expected = ("a backbone", "imagenet download", [])
    assert M._load_backbone(family, S, weights, weights_dir) == expected
    assert downloaded == (["mobilenet_v2"] if case.endswith("proxy") else [])


def test_a_transfer_fallback_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "network_reachable", lambda *a, **k: True)
    tried = []

    def download(family, size):
        tried.append(family)
        raise OSError("connection reset")

    monkeypatch.setattr(M, "_download_imagenet", download)
    built = M.build_model(M.HParams(family="densenet121"), S, 2, weights="imagenet", weights_dir=str(tmp_path),
                          fallback="mobilenet_v2_035")
    assert tried == ["densenet121"]
    assert (built.family, built.pretrained, built.requested_family) == ("mobilenet_v2_035", False, "densenet121")
    assert built.fallback_reason == "imagenet download: OSError: connection reset"
    assert built.note.endswith("fallback: family mobilenet_v2_035; mobilenet_v2_035: random init")


@pytest.mark.parametrize("fallback", ["none", "mobilenet_v2_035"])
def test_falling_back_to_the_same_family_is_random_init(fallback, tmp_path):
    built = M.build_model(M.HParams(family="mobilenet_v2_035"), S, 2, weights="auto", weights_dir=str(tmp_path),
                          fallback=fallback)
    assert (built.family, built.pretrained, built.backbone is not None) == ("mobilenet_v2_035", False, True)
    assert built.note == (f"no pretrained weights for mobilenet_v2_035 ({built.fallback_reason}); "
                          "fallback: mobilenet_v2_035 from random init")


def test_transfer_features_are_the_backbone_output_averaged_and_only_pretrained_heads_split():
    built = built_for("mobilenet_v2_035")
    # (numerically: a random-init backbone's features are too tiny and noisy to tell a mean from a max)
    pooled = built.model.get_layer(M.FEATURES_NAME)
    assert isinstance(pooled, keras.layers.GlobalAveragePooling2D)
    assert built.model.layers[built.model.layers.index(pooled) - 1] is built.backbone
    assert M.pooled_features(built_for("cnn3").model) is None
    with pytest.raises(ValueError, match="only a pretrained backbone"):
        M.split_head(built)  # random init: trained end to end, never on fixed features
