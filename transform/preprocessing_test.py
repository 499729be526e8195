import io

import numpy as np
import pytest
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


def test_resizing_averages_fine_detail_rather_than_sampling_it():
    # One-pixel stripes between a black and a white band: area resizing renders them mid-grey;
    # sampling every sixth column would make them all black or all white (aliasing).
    film = np.zeros((64, 96), np.uint8)
    film[:, 32:64:2] = 255
    film[:, 64:] = 255
    image = preprocessing.decode_images(tf.constant([_encode(film, "PNG")]), 16).numpy()[0, :, :, 0]
    assert image[:, :5].max() < 1e-6 and image[:, 11:].min() > 1 - 1e-6
    stripes = image[:, 6:10]
    assert abs(stripes.mean() - 0.5) < 0.05 and np.ptp(stripes) < 0.1


def test_preprocessing_fn_outputs_image_label_and_source():
    png = _encode(np.zeros((8, 8), np.uint8) + np.arange(8, dtype=np.uint8) * 30, "PNG")
    out = preprocessing.preprocessing_fn(
        {"image": tf.constant([[png], [png]]), "label_index": tf.constant([[1], [0]], tf.int64),
         "source": tf.constant([[b"cohen"], [b"rsna"]])},
        {preprocessing.IMAGE_SIZE_KEY: 16},
    )
    assert out[preprocessing.IMAGE_XF].shape == (2, 16, 16, 1)
    assert out[preprocessing.LABEL_XF].numpy().tolist() == [1, 0]
    assert out[preprocessing.SOURCE_XF].numpy().tolist() == [b"cohen", b"rsna"]


def test_border_crop_removes_the_outer_band_before_resizing():
    # A mid-grey film with a bright burnt-in marker in its outer 10% band.
    film = np.full((100, 100), 100, np.uint8)
    film[40:60, 40:60] = 60  # something inside the lung field, so the stretch has a range
    film[2:8, 2:30] = 255  # the marker in the corner band
    png = _encode(film, "PNG")
    kept = preprocessing.decode_images(tf.constant([png]), 50).numpy()[0]
    cropped = preprocessing.decode_images(tf.constant([png]), 50, border_crop=0.1).numpy()[0]
    assert kept.max() == 1.0 and kept[:5, :15].max() > 0.9  # the marker is the brightest thing
    assert cropped.shape == (50, 50, 1)
    # Cropped, the marker is gone: the brightest pixel is now the grey film (stretched to 1).
    assert cropped[:5, :15].min() > 0.99 and np.ptp(cropped[:5, :15]) < 1e-3  # flat grey, no marker
    # The centre square spans 20 of the 80 kept pixels: a quarter of the output width.
    assert cropped[25, 25] < 0.05 and cropped[25, 5] > 0.95
    out = preprocessing.preprocessing_fn({"image": tf.constant([[png]]), "label_index": tf.constant([[1]], tf.int64),
                                          "source": tf.constant([[b"cohen"]])},
                                         {preprocessing.IMAGE_SIZE_KEY: 50, preprocessing.BORDER_CROP_KEY: 0.1})
    np.testing.assert_allclose(out[preprocessing.IMAGE_XF].numpy()[0], cropped)


def test_a_single_grey_level_stays_black_and_no_border_crop_key_means_no_crop():
    flat = preprocessing.decode_images(tf.constant([_encode(np.full((40, 40), 90, np.uint8), "PNG")]), 16).numpy()
    assert np.isfinite(flat).all() and flat.max() < 0.1  # no 0 / 0, nor resizing's round-off stretched to 1
    film = np.zeros((100, 100), np.uint8)
    film[:, 95:] = 255  # a bright band in the outer 5 %
    film[40:60, 40:60] = 100
    png = _encode(film, "PNG")
    out = preprocessing.preprocessing_fn({"image": tf.constant([[png]]), "label_index": tf.constant([[1]], tf.int64),
                                          "source": tf.constant([[b"cohen"]])}, {preprocessing.IMAGE_SIZE_KEY: 50})
    np.testing.assert_array_equal(out[preprocessing.IMAGE_XF].numpy()[0],
                                  preprocessing.decode_images(tf.constant([png]), 50).numpy()[0])
    assert out[preprocessing.IMAGE_XF].numpy()[0, :, -1].min() == 1.0


def test_downscaling_averages_stripes_finer_than_an_output_pixel():
    # One white column in three: every output pixel covers two periods, so each is a third grey.
    # Sampling (bilinear without antialiasing) would read the neighbours of one white column: half grey.
    film = np.zeros((64, 96), np.uint8)
    film[:, 24:72:3] = 255  # between a black and a white band, as above
    film[:, 72:] = 255
    image = preprocessing.decode_images(tf.constant([_encode(film, "PNG")]), 16).numpy()[0, :, :, 0]
    stripes = image[:, 5:11]
    assert abs(stripes.mean() - 1 / 3) < 0.02 and np.ptp(stripes) < 0.02


# ---- round 9 ---------------------------------------------------------------------------------


def test_an_odd_output_size_is_square_too():
    film = np.zeros((40, 40), np.uint8)
    film[:, 20:] = 200
    image = preprocessing.decode_images(tf.constant([_encode(film, "PNG")]), 17).numpy()
    assert image.shape == (1, 17, 17, 1)
    assert image[0, :, :7].max() == 0.0 and image[0, :, -7:].min() > 0.999


def test_two_adjacent_grey_levels_are_stretched_to_the_full_range():
    # A film with almost no contrast (one 8-bit step) still fills [0, 1]: the guard against 0 / 0
    # must not damp a real, small range.
    film = np.full((32, 32), 100, np.uint8)
    film[:, 16:] = 101
    image = preprocessing.decode_images(tf.constant([_encode(film, "PNG")]), 16).numpy()[0]
    assert image.min() == 0.0 and image.max() == pytest.approx(1.0, abs=1e-5)


def test_a_five_percent_border_crop_is_cropped():
    film = np.zeros((100, 100), np.uint8)
    film[:, 95:] = 255  # a bright band in the outer 5 %
    film[40:60, 40:60] = 100
    image = preprocessing.decode_images(tf.constant([_encode(film, "PNG")]), 50, border_crop=0.05).numpy()[0]
    assert image[:, -1].max() < 0.1  # the band is gone; the centre square is now the brightest
    assert image[25, 25] > 0.999
