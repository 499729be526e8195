"""TF Transform preprocessing: the one place raw image bytes become model input.

The same graph runs in training (Transform component), in evaluation (TFMA calls it through the
model's ``transform_features`` signature) and in serving, so there is no train/serve skew.
"""
from __future__ import annotations

import tensorflow as tf

from covid_cxr.data import features
from covid_cxr.pipeline import fingerprints

IMAGE_XF = "image_xf"  # float32 [size, size, 1], per-image contrast stretched to [0, 1]
LABEL_XF = "label_xf"  # int64 class index
SOURCE_XF = "source_xf"  # bytes source name; only the Trainer's per-source example weights read it
IMAGE_SIZE_KEY = "image_size"  # custom_config keys
BORDER_CROP_KEY = "border_crop"


def decode_image(encoded: tf.Tensor, size: int, border_crop: float = 0.0) -> tf.Tensor:
    """One PNG/JPEG (any channels, 8/16 bit) -> [size, size, 1] float32 in [0, 1].

    ``border_crop`` removes that fraction of the width and of the height from each side first.
    Curation already crops the black frame; this removes what lies just inside it (burnt-in
    markers, text, collimator edges), which tells the hospital a film came from, not the disease.
    """
    image = tf.io.decode_image(encoded, channels=1, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    if border_crop > 0:
        image = tf.image.central_crop(image, 1.0 - 2.0 * border_crop)
    image = tf.image.resize(image, [size, size], method="area", antialias=True)
    # Stretch each image to its own [min, max]: sources differ in exposure and bit depth, and a
    # model must not be able to tell a source by its grey levels.
    low = tf.reduce_min(image)
    high = tf.reduce_max(image)
    image = (image - low) / tf.maximum(high - low, 1e-6)
    image.set_shape([size, size, 1])
    return image


def decode_images(encoded: tf.Tensor, size: int, border_crop: float = 0.0) -> tf.Tensor:
    """A batch of encoded images ([N] or [N, 1] strings) -> [N, size, size, 1]."""
    encoded = tf.reshape(encoded, [-1])
    return tf.map_fn(
        lambda e: decode_image(e, size, border_crop),
        encoded,
        fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32),
    )


def preprocessing_fn(inputs, custom_config):
    """tf.Transform entry point (Transform component: ``preprocessing_fn`` module path)."""
    fingerprints.check_code(__name__, custom_config.get(fingerprints.CODE_KEY))
    size = int(custom_config[IMAGE_SIZE_KEY])
    border_crop = float(custom_config.get(BORDER_CROP_KEY, 0.0))
    # Serving requests carry only the image: the Transform layer drops LABEL_XF and SOURCE_XF
    # when their inputs are absent, and the model never sees the source.
    return {
        IMAGE_XF: decode_images(inputs[features.IMAGE], size, border_crop),
        LABEL_XF: tf.reshape(inputs[features.LABEL_INDEX], [-1]),
        SOURCE_XF: tf.reshape(inputs[features.SOURCE], [-1]),
    }
