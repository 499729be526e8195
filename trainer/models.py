"""Model families for the COVID-19 chest X-ray classifier (GitHub issue 4, model half).

Every model takes the Transform output ``image_xf`` -- float32 ``[S, S, 1]`` grayscale in [0, 1] --
and ends in a layer named ``probabilities``: ONE sigmoid unit for the binary tasks (COVID is class
index 1) or a softmax over the classes for ``three-class``.

Layout of every model::

    image_xf [S,S,1] -> augmentation (training only) -> Resizing (only if image_size != S)
      scratch:  -> conv blocks on the 1-channel image -> head
      transfer: -> gray_to_rgb (repeat x3) -> imagenet_preprocess (the family's own preprocess_input,
                   applied to [0,255]) -> backbone(training=False if pretrained) -> GAP -> head
    head: [Dense(dense_units, relu)] -> Dropout(dropout) -> Dense(probabilities)

Only stock Keras layers plus two small registered layers (:class:`RandomShear`, built from the same
TF image op as ``RandomRotation``, and :class:`RandomIntensity`) are used, so the exported SavedModel
needs no Python code.

Pretrained weights are resolved by :func:`build_model` (``weights="auto" | "imagenet" | "none" |
path``); when none can be obtained, a transfer family falls back (``fallback``) with one warning line
and never raises or hangs.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
import threading
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from covid_cxr.messages import first_line
from covid_cxr.transform.preprocessing import IMAGE_XF

logger = logging.getLogger(__name__)

OUTPUT_NAME = "probabilities"
INPUT_NAME = IMAGE_XF
AUGMENTATION_NAME = "augmentation"
FEATURES_NAME = "gap"  # the pooled backbone features; the head starts right after this layer
BACKBONE_PREPROCESS_NAME = "imagenet_preprocess"

# Where Keras caches downloaded application weights (tf_keras get_file uses ~/.keras, or /tmp/.keras
# when the home directory is not writable).
KERAS_CACHE_DIRS = (os.path.join(os.path.expanduser("~"), ".keras", "models"), "/tmp/.keras/models")
WEIGHTS_HOST = ("storage.googleapis.com", 443)
WEIGHT_KEYWORDS = ("auto", "imagenet", "none")  # any other `weights` value is an .h5 file


def normalized_weights(weights: Optional[str]) -> str:
    """A `weights` setting as the builders use it (a keyword in lowercase, "" as none, else an .h5
    path); ValueError for anything else. The config checks with this before a run starts."""
    weights = weights or "none"
    if weights.lower() in WEIGHT_KEYWORDS:
        return weights.lower()
    if not weights.endswith(".h5"):
        raise ValueError(f"weights must be {', '.join(WEIGHT_KEYWORDS)} or a path to an .h5 file, got {weights!r}")
    return weights
# A failing download must fail fast: reachability probe first, then a socket timeout on the download.
NETWORK_PROBE_TIMEOUT_S = 5.0
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0


# ----------------------------------------------------------------------------------------------
# Hyperparameters
# ----------------------------------------------------------------------------------------------


# (low, high, high included) of each geometric AugmentConfig field, checked here and by the pipeline's
# config (model.augment_<field>). Rotation: half a turn either way is every orientation. Shift and zoom
# stop short of 1: a film shifted by its whole width leaves the frame, a zoom factor of 1 can scale
# it to nothing. A shear factor of 1 is 45 degrees.
GEOMETRY_LIMITS = {"rotation_degrees": (0.0, 180.0, True), "shift": (0.0, 1.0, False),
                   "shear": (0.0, 1.0, True), "zoom": (0.0, 1.0, False)}
# The AugmentConfig fields a run's config sets, as model.augment_<field> (fill_mode stays the studies').
CONFIGURABLE_AUGMENT_FIELDS = (*GEOMETRY_LIMITS, "horizontal_flip", "contrast", "gamma")


@dataclasses.dataclass
class AugmentConfig:
    """In-model augmentation (Keras preprocessing layers: active only when ``training=True``).

    Defaults follow the source studies' ``ImageDataGenerator`` settings: rotation 15 degrees, width/
    height shift 0.1, zoom 0.1, horizontal flip. ``shear`` is a shear *factor* (x' = x + s*y, drawn
    in [-s, s] independently for both axes; 0.1 ~ 5.7 degrees). The studies' ``shear_range=0.2`` was
    in degrees for ImageDataGenerator, i.e. almost no shear, so that number is not copied literally.
    """

    enabled: bool = True
    rotation_degrees: float = 15.0
    shift: float = 0.1  # fraction of height/width
    shear: float = 0.1  # shear factor
    zoom: float = 0.1  # +-fraction: 0.1 -> scale in [0.9, 1.1]
    horizontal_flip: bool = True
    fill_mode: str = "nearest"  # ImageDataGenerator's default
    # Grey-level augmentation (not in the studies): sources differ in their film curves, which the
    # Transform's per-film min/max stretch does not equalise. See :class:`RandomIntensity`.
    contrast: float = 0.0  # contrast factor in [1 - c, 1 + c] about the film's mean
    gamma: float = 0.0  # gamma in [exp(-g), exp(g)]

    def __post_init__(self) -> None:
        for name, (low, high, high_included) in GEOMETRY_LIMITS.items():
            value = getattr(self, name)
            if not (low <= value <= high if high_included else low <= value < high):
                raise ValueError(f"augmentation {name} must be in [{low}, {high}{']' if high_included else ')'}, got {value}")
        if not 0.0 <= self.contrast < 1.0:
            raise ValueError(f"augmentation contrast must be in [0, 1), got {self.contrast}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"augmentation gamma must be in [0, 1], got {self.gamma}")

    @property
    def active(self) -> bool:
        return self.enabled and (
            self.rotation_degrees > 0
            or self.shift > 0
            or self.shear > 0
            or self.zoom > 0
            or self.horizontal_flip
            or self.contrast > 0
            or self.gamma > 0
        )


def augment_config(model_config: Mapping[str, Any]) -> AugmentConfig:
    """The augmentation a run's ``model`` config section (as a dict) sets: model.augment and model.augment_<field>
    for each CONFIGURABLE_AUGMENT_FIELDS field."""
    return AugmentConfig(enabled=bool(model_config["augment"]), **{
        field: model_config[f"augment_{field}"] for field in CONFIGURABLE_AUGMENT_FIELDS})


@dataclasses.dataclass
class HParams:
    """Everything that defines one model and its training schedule (config- or Tuner-chosen)."""

    family: str = "mobilenet_v2_035"
    # Model-internal input size; None = the Transform size S. A Resizing layer is added when it
    # differs from S. Raised to the family's minimum (Xception: 71) with a note.
    image_size: Optional[int] = None
    learning_rate: float = 1e-3  # phase 1 (head) / end-to-end training
    fine_tune_learning_rate: float = 1e-5  # phase 2
    dropout: float = 0.5
    dense_units: int = 64  # hidden Dense of the head; 0 = none
    fine_tune_layers: int = 20  # top backbone layers (with weights, non-BN) unfrozen in phase 2
    early_stopping_patience: int = 4  # epochs without val AUC (loss as tie-break) improvement
    # Training targets pulled this far towards the uniform distribution (0 = hard 0/1 labels): the
    # sources' labels are diagnoses, and some films do not show theirs (docs/results.md, stop 34).
    label_smoothing: float = 0.0
    lr_schedule: str = "plateau"  # "plateau" (ReduceLROnPlateau on the val selection score), "cosine" or "none"
    reduce_lr_patience: int = 2
    reduce_lr_factor: float = 0.5
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, Mapping):
            self.augment = AugmentConfig(**self.augment)
        self.validate()

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; choose one of: {', '.join(FAMILIES)}")
        if self.image_size is not None and int(self.image_size) < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dense_units < 0 or self.fine_tune_layers < 0:
            raise ValueError("dense_units and fine_tune_layers must be >= 0")
        if self.learning_rate <= 0 or self.fine_tune_learning_rate <= 0:
            raise ValueError("learning rates must be > 0")
        if not 0.0 <= self.label_smoothing <= 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5], got {self.label_smoothing}")
        if self.lr_schedule not in ("plateau", "cosine", "none"):
            raise ValueError(f"lr_schedule must be plateau, cosine or none, got {self.lr_schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "HParams":
        """Inverse of :meth:`to_dict`; unknown keys raise (a typo must not be silently ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown HParams keys: {sorted(unknown)}")
        values = dict(values)
        if isinstance(values.get("augment"), Mapping):
            values["augment"] = AugmentConfig(**values["augment"])
        return cls(**values)


# ----------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="covid_cxr")
class RandomShear(keras.__internal__.layers.BaseRandomLayer):
    """Random shear about the image centre (tf_keras has no shear layer).

    x_in = x + sx * (y - cy), y_in = y + sy * (x - cx) with sx, sy ~ U[-factor, factor] per image.
    Identity when ``training`` is False. Uses ``ImageProjectiveTransformV3`` (the op behind
    ``RandomRotation``), so a SavedModel containing it serves without Python code.
    """

    def __init__(
        self,
        factor: float,
        fill_mode: str = "reflect",
        interpolation: str = "bilinear",
        fill_value: float = 0.0,
        seed: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(seed=seed, force_generator=True, **kwargs)
        if factor < 0:
            raise ValueError(f"shear factor must be >= 0, got {factor}")
        self.factor = float(factor)
        self.fill_mode = fill_mode
        self.interpolation = interpolation
        self.fill_value = float(fill_value)
        self.seed = seed

    def call(self, inputs, training=True):
        inputs = tf.convert_to_tensor(inputs, dtype=self.compute_dtype)
        if not training or self.factor == 0:
            return inputs

        original_shape = inputs.shape
        unbatched = inputs.shape.rank == 3
        images = tf.expand_dims(inputs, 0) if unbatched else inputs
        shape = tf.shape(images)
        batch = shape[0]
        height = tf.cast(shape[1], tf.float32)
        width = tf.cast(shape[2], tf.float32)
        shear = self._random_generator.random_uniform(
            shape=[batch, 2], minval=-self.factor, maxval=self.factor, dtype=tf.float32
        )
        sx, sy = shear[:, 0:1], shear[:, 1:2]
        cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
        ones = tf.ones_like(sx)
        zeros = tf.zeros_like(sx)
        # Projective transform [a0 a1 a2 b0 b1 b2 c0 c1] mapping output (x, y) to input points.
        transforms = tf.concat([ones, sx, -sx * cy, sy, ones, -sy * cx, zeros, zeros], axis=1)
        output = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=shape[1:3],
            fill_value=tf.constant(self.fill_value, tf.float32),
            interpolation=self.interpolation.upper(),
            fill_mode=self.fill_mode.upper(),
        )
        if unbatched:
            output = tf.squeeze(output, 0)
        output.set_shape(original_shape)
        return output

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            factor=self.factor,
            fill_mode=self.fill_mode,
            interpolation=self.interpolation,
            fill_value=self.fill_value,
            seed=self.seed,
        )
        return config


def augmentation_block(config: AugmentConfig, name: str = AUGMENTATION_NAME) -> Optional[keras.Sequential]:
    """The augmentation layers as one Sequential block, or None when augmentation is off."""
    if not config.active:
        return None
    layers: list[keras.layers.Layer] = []
    fill = config.fill_mode
    if config.contrast > 0 or config.gamma > 0:
        layers.append(RandomIntensity(config.contrast, config.gamma, name="aug_intensity"))
    if config.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", name="aug_flip"))
    if config.rotation_degrees > 0:
        layers.append(
            keras.layers.RandomRotation(config.rotation_degrees / 360.0, fill_mode=fill, name="aug_rotation")
        )
    if config.shift > 0:
        layers.append(keras.layers.RandomTranslation(config.shift, config.shift, fill_mode=fill, name="aug_shift"))
    if config.shear > 0:
        layers.append(RandomShear(config.shear, fill_mode=fill, name="aug_shear"))
    if config.zoom > 0:
        layers.append(keras.layers.RandomZoom(config.zoom, config.zoom, fill_mode=fill, name="aug_zoom"))
    return keras.Sequential(layers, name=name)


@keras.saving.register_keras_serializable(package="covid_cxr")
class RandomIntensity(keras.__internal__.layers.BaseRandomLayer):
    """Random grey-level curve per film, for inputs in [0, 1]; identity when ``training`` is False.

    x -> clip((x - mean) * c + mean, 0, 1) ** g with c ~ U[1 - contrast, 1 + contrast] and
    log g ~ U[-gamma, gamma]. Unlike ``keras.layers.RandomContrast`` (which clips to [0, 255]) the
    result stays in the Transform's [0, 1] range.
    """

    def __init__(self, contrast: float = 0.0, gamma: float = 0.0, seed: Optional[int] = None, **kwargs):
        super().__init__(seed=seed, force_generator=True, **kwargs)
        self.contrast = float(contrast)
        self.gamma = float(gamma)
        self.seed = seed

    def call(self, inputs, training=True):
        inputs = tf.convert_to_tensor(inputs, dtype=self.compute_dtype)
        if not training or (self.contrast == 0 and self.gamma == 0):
            return inputs
        unbatched = inputs.shape.rank == 3
        images = tf.expand_dims(inputs, 0) if unbatched else inputs
        per_film = [tf.shape(images)[0], 1, 1, 1]
        factor = self._random_generator.random_uniform(per_film, 1.0 - self.contrast, 1.0 + self.contrast)
        log_gamma = self._random_generator.random_uniform(per_film, -self.gamma, self.gamma)
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        output = tf.clip_by_value((images - mean) * factor + mean, 0.0, 1.0)
        # pow(0, g) is 0 but its gradient is not needed here (nothing trainable comes before it).
        output = tf.pow(output, tf.exp(log_gamma))
        return tf.squeeze(output, 0) if unbatched else output

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(contrast=self.contrast, gamma=self.gamma, seed=self.seed)
        return config


# ----------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------

# A builder maps (input tensor, hparams, backbone or None, pretrained) to a feature tensor. Scratch
# builders get the 1-channel [0, 1] image; transfer builders get it after gray->RGB + preprocess.
Builder = Callable[..., tf.Tensor]


def _conv_relu(x, filters, name):
    return keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=name)(x)


def build_cnn3(x, hparams: HParams, backbone=None, pretrained=False):
    """Three conv+pool layers (32, 32, 64), Flatten; the head adds Dense(64) + Dropout(0.5)."""
    for i, filters in enumerate((32, 32, 64), start=1):
        x = _conv_relu(x, filters, f"conv{i}")
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    return keras.layers.Flatten(name="flatten")(x)


def build_cnn4(x, hparams: HParams, backbone=None, pretrained=False):
    """Four conv blocks (32, 64, 128, 128) of conv + max-pool + dropout(0.25), Flatten."""
    for i, filters in enumerate((32, 64, 128, 128), start=1):
        x = _conv_relu(x, filters, f"block{i}_conv")
        x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
        x = keras.layers.Dropout(0.25, name=f"block{i}_dropout")(x)
    return keras.layers.Flatten(name="flatten")(x)


def build_bn_double_conv(x, hparams: HParams, backbone=None, pretrained=False):
    """Blocks of 2 x (conv - BatchNorm - ReLU) + max-pool (16..256 filters) on grayscale, GAP."""
    for i, filters in enumerate((16, 32, 64, 128, 256), start=1):
        for j in (1, 2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv{j}")(x)
            x = keras.layers.BatchNormalization(name=f"block{i}_bn{j}")(x)
            x = keras.layers.ReLU(name=f"block{i}_relu{j}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
        if i >= 4:
            x = keras.layers.Dropout(0.2, name=f"block{i}_dropout")(x)
    return keras.layers.GlobalAveragePooling2D(name=FEATURES_NAME)(x)


def build_transfer(x, hparams: HParams, backbone, pretrained=False):
    """The backbone (already created, weights loaded) on the preprocessed RGB image, then GAP."""
    # BatchNorm stays in inference mode for pretrained backbones, also while fine-tuning (and the
    # shared MobileNetV2 file has BN folded into the convs: exact only in inference mode).
    features = backbone(x, training=False) if pretrained else backbone(x)
    return keras.layers.GlobalAveragePooling2D(name=FEATURES_NAME)(features)


@dataclasses.dataclass(frozen=True)
class TransferSpec:
    """How to create one transfer backbone and where its weights may be found."""

    constructor: Callable[..., keras.Model]
    preprocess_input: Callable[[np.ndarray], np.ndarray]
    kwargs: Mapping[str, Any]
    min_size: int
    # Official Keras file names (also the Keras cache names), glob patterns; {rows} = the size.
    keras_files: tuple[str, ...]
    # Extra names accepted in weights_dir (e.g. the offline copies in /work/shared/weights).
    extra_files: tuple[str, ...] = ()
    # What Keras' constructor adds only for weights="imagenet", done to a backbone built from a file.
    from_file: Optional[Callable[[keras.Model], None]] = None


# tf_keras efficientnet.py: the stem divides once more by sqrt(ImageNet std) only when weights ==
# "imagenet" (tensorflow#49930). Built from the same file, the pretrained layers saw inputs at half
# their scale.
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def _efficientnet_stem_as_imagenet(backbone: keras.Model) -> None:
    """Folds the missing division into the stem's Normalization: (x - mean) / sqrt(var * std).
    Only for Keras' ImageNet file (stem variance std ** 2): a file trained from scratch, or one
    saved from a backbone already built here, has other statistics and is left as it is."""
    norm = next(layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization))
    mean, variance, count = norm.get_weights()
    std = np.asarray(_IMAGENET_STDDEV_RGB, variance.dtype).reshape(variance.shape)
    if np.allclose(variance, std ** 2, rtol=1e-3):
        norm.set_weights([mean, variance * std, count])


_apps = keras.applications
_MNV2_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5"

TRANSFER_SPECS: dict[str, TransferSpec] = {
    "xception": TransferSpec(
        _apps.Xception, _apps.xception.preprocess_input, {}, 71,
        ("xception_weights_tf_dim_ordering_tf_kernels_notop.h5",),
    ),
    "vgg19": TransferSpec(
        _apps.VGG19, _apps.vgg19.preprocess_input, {}, 32,
        ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",),
    ),
    "densenet121": TransferSpec(
        _apps.DenseNet121, _apps.densenet.preprocess_input, {}, 32,
        ("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",),
    ),
    "mobilenet_v2": TransferSpec(
        _apps.MobileNetV2, _apps.mobilenet_v2.preprocess_input, {"alpha": 1.0}, 32,
        (_MNV2_FILE.format(alpha="1.0", rows="{rows}"),),
        ("mobilenet_v2_1.0_224_no_top_from_tf2ptq.h5",),
    ),
    "mobilenet_v2_035": TransferSpec(
        _apps.MobileNetV2, _apps.mobilenet_v2.preprocess_input, {"alpha": 0.35}, 32,
        (_MNV2_FILE.format(alpha="0.35", rows="{rows}"),),
    ),
    "mobilenet_v1_075": TransferSpec(
        _apps.MobileNet, _apps.mobilenet.preprocess_input, {"alpha": 0.75}, 32,
        ("mobilenet_7_5_{rows}_tf_no_top.h5",),
    ),
    "efficientnet_b0": TransferSpec(
        _apps.EfficientNetB0, _apps.efficientnet.preprocess_input, {}, 32,
        ("efficientnetb0_notop.h5",), from_file=_efficientnet_stem_as_imagenet,
    ),
}

SCRATCH_FAMILIES = ("cnn3", "cnn4", "bn_double_conv")
TRANSFER_FAMILIES = tuple(TRANSFER_SPECS)

FAMILIES: dict[str, Builder] = {
    "cnn3": build_cnn3,
    "cnn4": build_cnn4,
    "bn_double_conv": build_bn_double_conv,
    **{name: build_transfer for name in TRANSFER_SPECS},
}


def is_transfer(family: str) -> bool:
    return family in TRANSFER_SPECS


def preprocess_affine(family: str) -> tuple[list[float], list[float]]:
    """Per-channel (scale, offset) with ``preprocess_input(255 * x) == x * scale + offset``.

    Derived from the family's own ``preprocess_input`` (all of which are per-channel affine); for
    VGG19's caffe mode the RGB->BGR flip is irrelevant because the three channels are equal.
    """
    preprocess = TRANSFER_SPECS[family].preprocess_input
    p0 = np.asarray(preprocess(np.zeros((1, 1, 1, 3), np.float32)), np.float64).reshape(3)
    p1 = np.asarray(preprocess(np.full((1, 1, 1, 3), 255.0, np.float32)), np.float64).reshape(3)
    return [float(v) for v in p1 - p0], [float(v) for v in p0]


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def _candidate_names(patterns: Sequence[str], size: int) -> list[str]:
    """Glob patterns for a family's files, the exact input size first, then 224, then any size."""
    names: list[str] = []
    for pattern in patterns:
        for rows in (str(size), "224", "*"):
            name = pattern.replace("{rows}", rows)
            if name not in names:
                names.append(name)
    return names


def find_weight_file(family: str, directories: Sequence[str], size: int = 224, include_extra: bool = True) -> Optional[str]:
    """The first existing weight file for ``family`` in ``directories`` (None if there is none)."""
    spec = TRANSFER_SPECS[family]
    patterns = list(spec.keras_files) + (list(spec.extra_files) if include_extra else [])
    for directory in directories:  # tf.io.gfile: a bucket (gs://) is where a Kubeflow run keeps them
        if not directory or not tf.io.gfile.isdir(directory):
            continue
        for name in _candidate_names(patterns, size):
            matches = sorted(tf.io.gfile.glob(os.path.join(directory, name)))
            if matches:
                return matches[0]
    return None


def _backbone_from_file(family: str, size: int, path: str) -> keras.Model:
    """Keras reads .h5 weights with h5py, which only opens local files: a file elsewhere (gs://)
    is copied to a temporary directory first, freshly each time, so a replaced file is never stale."""
    if "://" not in path:
        return _create_backbone(family, size, path)
    with tempfile.TemporaryDirectory(prefix="covid_cxr_weights_") as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        tf.io.gfile.copy(path, local)
        return _create_backbone(family, size, local)


def _proxy_configured() -> bool:
    return any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))


def network_reachable(host: str = WEIGHTS_HOST[0], port: int = WEIGHTS_HOST[1], timeout: float = NETWORK_PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to host:port succeeds within ``timeout`` (DNS included)."""
    result: list[bool] = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo ignores socket timeouts
    thread.start()
    thread.join(timeout * 2)
    return bool(result and result[0])


def _create_backbone(family: str, size: int, weights: Optional[str]) -> keras.Model:
    spec = TRANSFER_SPECS[family]
    backbone = spec.constructor(include_top=False, weights=weights, input_shape=(size, size, 3), **spec.kwargs)
    if weights not in (None, "imagenet") and spec.from_file is not None:
        spec.from_file(backbone)
    return backbone


def _download_imagenet(family: str, size: int) -> keras.Model:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)  # urlretrieve has no timeout of its own
    try:
        return _create_backbone(family, size, "imagenet")
    finally:
        socket.setdefaulttimeout(previous)


def is_weights_file(path: str) -> bool:
    """Whether an explicit ``weights`` path is a file the builders can read (any TensorFlow file
    system); raises tf.errors.OpError for a scheme this TensorFlow cannot read."""
    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def _load_backbone(
    family: str, size: int, weights: str, weights_dir: Optional[str], allow_download: bool = True
) -> tuple[Optional[keras.Model], str, list[str]]:
    """Try the weight sources implied by ``weights``; returns (backbone or None, source, failures)."""
    failures: list[str] = []
    attempts: list[tuple[str, Callable[[], keras.Model]]] = []

    def from_file(path: str):
        return lambda: _backbone_from_file(family, size, path)

    if weights == "auto":
        path = find_weight_file(family, [weights_dir] if weights_dir else [], size)
        if path:
            attempts.append((f"file {path}", from_file(path)))
        else:
            failures.append(f"no {family} file in weights_dir {weights_dir!r}")
    if weights in ("auto", "imagenet"):
        path = find_weight_file(family, KERAS_CACHE_DIRS, size, include_extra=False)
        if path:
            attempts.append((f"Keras cache {path}", from_file(path)))
        if allow_download:
            attempts.append(("imagenet download", lambda: _download_imagenet(family, size)))
    elif weights != "auto":  # an explicit file
        if is_weights_file(weights):
            attempts.append((f"file {weights}", from_file(weights)))
        else:
            failures.append(f"weights file {weights!r} not found")

    for source, attempt in attempts:
        if source == "imagenet download" and not _proxy_configured() and not network_reachable():
            failures.append(f"download skipped: {WEIGHTS_HOST[0]}:{WEIGHTS_HOST[1]} unreachable")
            continue
        try:
            return attempt(), source, failures
        except Exception as error:  # noqa: BLE001 - any failure means "try the next source"
            failures.append(f"{source}: {first_line(error, with_type=True, limit=160)}")
    return None, "", failures


# ----------------------------------------------------------------------------------------------
# build_model
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BuiltModel:
    model: keras.Model
    backbone: Optional[keras.Model]  # the keras.applications base, None for scratch families
    family: str  # the family actually built (differs from hparams.family after a fallback)
    note: str  # human-readable: weights source, fallback, size changes
    pretrained: bool = False  # backbone carries pretrained weights (decides 2-phase training)
    image_size: int = 0  # model-internal input size actually used
    requested_family: str = ""
    fallback_reason: Optional[str] = None  # why pretrained weights were not used (None: no fallback)

    @property
    def fell_back(self) -> bool:
        return self.fallback_reason is not None


FALLBACK_CHOICES = ("none", "error")  # or any family name
# Measured on real CXRs (covid19-radiography, 1000 train / 200 val, covid vs normal): a random-init
# MobileNetV2-0.35 at 160 px trained end-to-end stayed at val AUC 0.50 and early-stopped after 5
# epochs (likely its BN moving averages, momentum 0.999, lagging far behind); at 128 px / 8 epochs
# cnn3 reached 0.78, cnn4 0.71 and bn_double_conv 0.86. So the default fallback is the BN scratch CNN.
DEFAULT_FALLBACK = "bn_double_conv"


# Smallest input each scratch CNN's pooling stack accepts.
SCRATCH_MIN_SIZES = {"cnn3": 8, "cnn4": 16, "bn_double_conv": 32}


def min_image_size(family: str) -> int:
    return TRANSFER_SPECS[family].min_size if is_transfer(family) else SCRATCH_MIN_SIZES[family]


def effective_image_size(family: str, hparams: HParams, input_size: int) -> int:
    """hparams.image_size (or S when None), raised to the family's minimum input size."""
    return max(int(hparams.image_size or input_size), min_image_size(family))


def _assemble(
    family: str,
    hparams: HParams,
    input_size: int,
    num_classes: int,
    backbone: Optional[keras.Model],
    size: int,
    pretrained: bool,
) -> keras.Model:
    inputs = keras.Input(shape=(input_size, input_size, 1), name=INPUT_NAME, dtype=tf.float32)
    x = inputs
    augment = augmentation_block(hparams.augment)
    if augment is not None:
        x = augment(x)
    if size != input_size:
        interpolation = "area" if size < input_size else "bilinear"
        x = keras.layers.Resizing(size, size, interpolation=interpolation, name="resize")(x)
    if backbone is not None:
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
        scale, offset = preprocess_affine(family)
        if len(set(scale)) == 1 and len(set(offset)) == 1:
            scale, offset = scale[0], offset[0]
        x = keras.layers.Rescaling(scale, offset, name=BACKBONE_PREPROCESS_NAME)(x)
    x = FAMILIES[family](x, hparams, backbone, pretrained)
    if hparams.dense_units > 0:
        x = keras.layers.Dense(hparams.dense_units, activation="relu", name="head_dense")(x)
    if hparams.dropout > 0:
        x = keras.layers.Dropout(hparams.dropout, name="head_dropout")(x)
    if num_classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_NAME, dtype="float32")(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", name=OUTPUT_NAME, dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"covid_cxr_{family}")


def build_model(
    hparams: HParams,
    input_size: int,
    num_classes: int,
    weights: str = "imagenet",
    weights_dir: Optional[str] = None,
    fallback: str = DEFAULT_FALLBACK,
) -> BuiltModel:
    """Build the model for ``hparams.family``.

    Args:
      input_size: S, the Transform image size (input is ``image_xf`` [S, S, 1] in [0, 1]).
      num_classes: 2 -> one sigmoid unit (COVID = 1); >2 -> softmax(num_classes).
      weights: for transfer families (ignored by scratch ones):
        ``"imagenet"``: a matching file in the Keras cache, else a download (probed first, socket
        timeout, so it fails fast offline); ``"auto"``: the family's file in ``weights_dir`` first,
        then as ``"imagenet"``; ``"none"``: random init (no warning); anything else: an .h5 path.
      fallback: used when ``weights`` asked for pretrained weights and none could be loaded:
        a family name (default ``bn_double_conv``) = build that family instead (a transfer fallback
        only uses files from ``weights_dir``, never downloads); ``"none"`` = the same family from
        random init (trains poorly on small data); ``"error"`` = raise RuntimeError. Fallbacks log
        ONE warning line. The fallback keeps ``hparams.image_size``: scratch CNNs are slow at 224 px.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if hparams.family not in FAMILIES:
        raise ValueError(f"unknown model family {hparams.family!r}")
    if fallback not in FALLBACK_CHOICES and fallback not in FAMILIES:
        raise ValueError(f"fallback must be one of {FALLBACK_CHOICES} or a family name, got {fallback!r}")
    weights = normalized_weights(weights)

    family = hparams.family
    notes: list[str] = []
    backbone: Optional[keras.Model] = None
    pretrained = False
    fallback_reason: Optional[str] = None

    if is_transfer(family):
        size = effective_image_size(family, hparams, input_size)
        if weights == "none":
            backbone = _create_backbone(family, size, None)
            notes.append(f"{family}: random init (weights='none')")
        else:
            backbone, source, failures = _load_backbone(family, size, weights, weights_dir)
            if backbone is not None:
                pretrained = True
                notes.append(f"{family}: pretrained weights from {source}")
            else:
                reason = "; ".join(failures) or "no source"
                if fallback == "error":
                    raise RuntimeError(f"no pretrained weights for {family} ({reason})")
                if fallback == "none" or fallback == family:
                    target = f"{family} from random init"
                else:
                    target = f"family {fallback}"
                fallback_reason = reason
                message = f"no pretrained weights for {family} ({reason}); fallback: {target}"
                logger.warning(message.replace("\n", " "))
                notes.append(message)
                if fallback not in ("none", family):
                    family = fallback
                    if is_transfer(family):
                        size = effective_image_size(family, hparams, input_size)
                        backbone, source, _ = _load_backbone(family, size, "auto", weights_dir, allow_download=False)
                        if backbone is not None:
                            pretrained = True
                            notes.append(f"{family}: pretrained weights from {source}")
                        else:
                            backbone = _create_backbone(family, size, None)
                            notes.append(f"{family}: random init")
                    else:
                        backbone = None
                else:
                    backbone = _create_backbone(family, size, None)
    else:
        notes.append(f"{family}: scratch CNN on 1-channel input")

    size = effective_image_size(family, hparams, input_size)
    if hparams.image_size and size != int(hparams.image_size):
        notes.append(f"image_size raised from {hparams.image_size} to {size} (minimum for {family})")
    elif not hparams.image_size and size != input_size:
        notes.append(f"input resized from {input_size} to {size} (minimum for {family})")
    model = _assemble(family, hparams, input_size, num_classes, backbone, size, pretrained)
    return BuiltModel(
        model=model,
        backbone=backbone,
        family=family,
        note="; ".join(notes),
        pretrained=pretrained,
        image_size=size,
        requested_family=hparams.family,
        fallback_reason=fallback_reason,
    )


def average_ensemble(members: Sequence[BuiltModel]) -> BuiltModel:
    """One model whose ``probabilities`` are the mean of the trained ``members``' probabilities.

    The members keep their own augmentation (inactive at inference), resizing and preprocessing, so
    they may differ in family and internal size; they must share the input and the output width.
    The result is only served and evaluated, never trained (its ``backbone`` is None).
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    shapes = {(tuple(m.model.input_shape), tuple(m.model.output_shape)) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members disagree on input/output shapes: {sorted(shapes)}")
    inputs = keras.Input(shape=members[0].model.input_shape[1:], name=INPUT_NAME, dtype=tf.float32)
    outputs = keras.layers.Average(name=OUTPUT_NAME, dtype="float32")([m.model(inputs) for m in members])
    family = "+".join(m.family for m in members)
    return BuiltModel(
        model=keras.Model(inputs, outputs, name="covid_cxr_ensemble"),
        backbone=None,
        family=family,
        note=f"mean of {len(members)} models: " + " | ".join(m.note for m in members),
        pretrained=all(m.pretrained for m in members),
        image_size=max(m.image_size for m in members),
        requested_family="+".join(m.requested_family or m.family for m in members),
        fallback_reason="; ".join(m.fallback_reason for m in members if m.fallback_reason) or None,
    )


# ----------------------------------------------------------------------------------------------
# Trainable layers per phase
# ----------------------------------------------------------------------------------------------

PHASE_END_TO_END = 0  # everything trainable (scratch families, randomly initialised backbones)
PHASE_HEAD = 1  # pretrained backbone frozen, head trained
PHASE_FINE_TUNE = 2  # top `fine_tune_layers` non-BN backbone layers unfrozen (BN stays frozen)


def _is_batch_norm(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def tunable_backbone_layers(backbone: keras.Model) -> list[keras.layers.Layer]:
    """Backbone layers that carry trainable variables, excluding BatchNorm, bottom to top.

    ``fine_tune_layers = N`` unfreezes the last N of these (layers without weights -- activations,
    padding, pooling, Add -- are not counted; Normalization's statistics are not trainable).
    """
    return [
        layer
        for layer in backbone.layers
        if not _is_batch_norm(layer) and any(getattr(w, "trainable", False) for w in layer.weights)
    ]


def set_phase(built: BuiltModel, phase: int, fine_tune_layers: int = 0) -> list[keras.layers.Layer]:
    """Set ``trainable`` flags for a training phase; returns the backbone layers left trainable.

    Call before compiling. Layers outside the backbone (head, scratch convs) are always trainable.
    """
    if phase not in (PHASE_END_TO_END, PHASE_HEAD, PHASE_FINE_TUNE):
        raise ValueError(f"phase must be 0 (end-to-end), 1 (head) or 2 (fine-tune), got {phase!r}")
    built.model.trainable = True
    for layer in built.model.layers:
        layer.trainable = True
    backbone = built.backbone
    if backbone is None:
        return []
    if phase == PHASE_END_TO_END:
        backbone.trainable = True
        return list(backbone.layers)
    if phase == PHASE_HEAD:
        backbone.trainable = False
        return []
    backbone.trainable = True
    candidates = tunable_backbone_layers(backbone)
    chosen = candidates[len(candidates) - min(fine_tune_layers, len(candidates)):] if fine_tune_layers > 0 else []
    chosen_ids = {id(layer) for layer in chosen}
    for layer in backbone.layers:
        layer.trainable = id(layer) in chosen_ids
    if not chosen:
        backbone.trainable = False
    return chosen


def split_head(built: BuiltModel) -> tuple[keras.Model, keras.Model]:
    """(features, head) for phase 1 on a pretrained backbone's fixed features.

    ``features`` maps ``image_xf`` to the pooled backbone features through ``built.model``'s own
    layers (call it with ``training=False``: augmentation off; the backbone is frozen in phase 1).
    ``head`` is a copy of the model's head (same configuration, same current weights) on those
    features, so that training it adds no nodes to the served model's graph; copy its trained
    weights back with :func:`set_head_weights`.
    """
    if built.backbone is None or not built.pretrained:
        raise ValueError(f"{built.family}: only a pretrained backbone's head trains on fixed features")
    model = built.model
    pooled = model.get_layer(FEATURES_NAME)
    inputs = keras.Input(shape=pooled.output.shape[1:], name="backbone_features", dtype=pooled.output.dtype)
    x = inputs
    for layer in model.layers[model.layers.index(pooled) + 1:]:  # Dense, Dropout, probabilities: a chain
        copy = layer.__class__.from_config(layer.get_config())
        x = copy(x)
        copy.set_weights(layer.get_weights())
    return pooled_features(model), keras.Model(inputs, x, name=f"{model.name}_head")


def pooled_features(model: keras.Model) -> Optional[keras.Model]:
    """``image_xf`` -> the pooled features the head reads (layer FEATURES_NAME), through ``model``'s own
    layers; None for a model without that layer (cnn3 and cnn4 flatten instead of pooling)."""
    try:
        pooled = model.get_layer(FEATURES_NAME)
    except ValueError:
        return None
    return keras.Model(model.input, pooled.output, name=f"{model.name}_features")


def member_scorer(member: BuiltModel, name: str) -> tuple[keras.Model, bool]:
    """(``image_xf`` -> [probabilities, pooled features] through ``member``'s own layers, True), or
    (the member's model, False) when it has no pooled features."""
    features = pooled_features(member.model)
    if features is None:
        return member.model, False
    return keras.Model(member.model.input, [member.model.output, features.output], name=name), True


def joined_outputs(probabilities: Sequence, features: Sequence) -> tuple:
    """(the served probabilities, the pooling members' features side by side, None without any) from
    each member's: :func:`average_ensemble`'s mean (one member: its own). On a graph's tensors or on
    the arrays of scores the members gave films, with the same layers, so both give the same numbers."""
    joined_p = probabilities[0] if len(probabilities) == 1 else keras.layers.Average(name=OUTPUT_NAME)(list(probabilities))
    if not features:
        return joined_p, None
    return joined_p, features[0] if len(features) == 1 else keras.layers.Concatenate(name="members_features")(list(features))


def scorer_with_features(members: Sequence[BuiltModel]) -> tuple[Optional[keras.Model], list[str]]:
    """(``image_xf`` -> [the served probabilities, every pooling member's features side by side], the
    families whose features it returns); (None, []) when no member pools.

    One pass of each backbone gives both outputs (the members' own layers: nothing is copied), so the
    served graph can report how typical a film is without running the backbones a second time. The
    probabilities are :func:`average_ensemble`'s (one member: that member's own).
    """
    scorers = [member_scorer(m, f"member{i}_scorer") for i, m in enumerate(members)]
    if not any(pools for _, pools in scorers):
        return None, []
    inputs = keras.Input(shape=members[0].model.input_shape[1:], name=INPUT_NAME, dtype=tf.float32)
    probabilities, features, families = [], [], []
    for member, (scorer, pools) in zip(members, scorers):
        if not pools:
            probabilities.append(scorer(inputs))
            continue
        p, f = scorer(inputs)
        probabilities.append(p)
        features.append(f)
        families.append(member.family)
    return keras.Model(inputs, list(joined_outputs(probabilities, features)), name="scorer_with_features"), families


def set_head_weights(built: BuiltModel, head: keras.Model) -> None:
    """Copy the weights of a head from :func:`split_head` into ``built.model``'s head layers."""
    for layer in head.layers[1:]:
        built.model.get_layer(layer.name).set_weights(layer.get_weights())


def count_params(model: keras.Model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(sum(np.prod(w.shape) for w in model.weights))
    return total, trainable


__all__ = [
    "AugmentConfig",
    "BuiltModel",
    "CONFIGURABLE_AUGMENT_FIELDS",
    "DEFAULT_FALLBACK",
    "FAMILIES",
    "GEOMETRY_LIMITS",
    "HParams",
    "OUTPUT_NAME",
    "PHASE_END_TO_END",
    "PHASE_FINE_TUNE",
    "PHASE_HEAD",
    "RandomIntensity",
    "RandomShear",
    "SCRATCH_FAMILIES",
    "TRANSFER_FAMILIES",
    "TRANSFER_SPECS",
    "augment_config",
    "augmentation_block",
    "average_ensemble",
    "build_model",
    "count_params",
    "find_weight_file",
    "is_transfer",
    "min_image_size",
    "preprocess_affine",
    "set_phase",
    "set_head_weights",
    "split_head",
    "tunable_backbone_layers",
]
