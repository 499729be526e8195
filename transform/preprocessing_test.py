import io

import numpy as np
import tensorflow as tf
from PIL import Image

from covid_cxr.transform import preprocessing


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def test_png_jpeg_rgb_and_16_bit_all_become_unit_range_grayscale_of_the_requested_size():
    gradient = np.tile(np.linspace(0, 255, 50, dtype=np.uint8), (40, 1))
    inputs = [
        _encode(gradient, "PNG"),
        _encode(np.stack([gradient] * 3, -1), "JPEG"),
        _encode((gradient.astype(np.uint16) * 257), "PNG"),
    ]
    images = preprocessing.decode_images(tf.constant(inputs), 32).numpy()
    assert images.shape == (3, 32, 32, 1)
    for image in images:
        assert image.min() == 0.0 and abs(image.max() - 1.0) < 1e-6
        # the horizontal gradient survives: left columns darker than right ones
        assert image[:, :4].mean() < 0.2 < 0.8 < image[:, -4:].mean()


def test_contrast_stretch_removes_exposure_differences():
    base = (np.random.default_rng(0).random((64, 64)) * 100 + 50).astype(np.uint8)
    dark, bright = _encode(base // 2, "PNG"), _encode(np.clip(base.astype(int) + 60, 0, 255).astype(np.uint8), "PNG")
    a, b = preprocessing.decode_images(tf.constant([dark, bright]), 16).numpy()
    assert np.abs(a - b).mean() < 0.02


def test_preprocessing_fn_outputs_image_and_label():
    png = _encode(np.zeros((8, 8), np.uint8) + np.arange(8, dtype=np.uint8) * 30, "PNG")
    out = preprocessing.preprocessing_fn(
        {"image": tf.constant([[png], [png]]), "label_index": tf.constant([[1], [0]], tf.int64)},
        {preprocessing.IMAGE_SIZE_KEY: 16},
    )
    assert out[preprocessing.IMAGE_XF].shape == (2, 16, 16, 1)
    assert out[preprocessing.LABEL_XF].numpy().tolist() == [1, 0]
