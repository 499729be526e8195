"""The three-class served decision: COVID above the stored threshold, else the more probable other class;
what the served signatures accept as an image."""
import functools
import io
import re
import struct
import zlib
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from covid_cxr.data import features, images
from covid_cxr.serving import export, predict, testing
from covid_cxr.transform import preprocessing

binary_model = testing.tiny_model_fixture()

TASK = features.get_task("three-class")
COVID = TASK.positive_index
OTHERS = [i for i in range(3) if i != COVID]


def _decide(probabilities, threshold):
    label, gate = export.three_class_decision(tf.constant(probabilities, tf.float32), COVID,
                                              tf.constant(threshold, tf.float32))
    return label.numpy(), gate.numpy()


def _films(covid_probabilities, other_share):
    """[N, 3] with P(covid) as given and the rest split other_share : 1 - other_share over the others."""
    p = np.zeros((len(covid_probabilities), 3), np.float32)
    p[:, COVID] = covid_probabilities
    p[:, OTHERS[0]] = (1 - p[:, COVID]) * other_share
    p[:, OTHERS[1]] = (1 - p[:, COVID]) * (1 - other_share)
    return p


@pytest.mark.parametrize("threshold", [0.15, 0.5, 0.8])
def test_covid_is_called_exactly_above_the_threshold_and_otherwise_the_more_probable_other_class(threshold):
    covid = np.linspace(0.02, 0.98, 49)
    probabilities = _films(covid, other_share=0.7)
    label, gate = _decide(probabilities, threshold)
    expected = np.where(covid > threshold, COVID, OTHERS[0])
    np.testing.assert_array_equal(label, expected)
    # Some films are labelled COVID below an argmax, or not COVID while it is the argmax: not an argmax.
    assert (label != probabilities.argmax(1)).any()
    # gate_score > 0.5 exactly in the served class, so the Evaluator (at 0.5) judges the served label.
    np.testing.assert_array_equal(gate > 0.5, np.arange(3)[None, :] == label[:, None])


def test_covid_gate_column_ranks_films_by_their_covid_probability():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3), size=200).astype(np.float32)
    _, gate = _decide(probabilities, 0.3)
    order = np.argsort(probabilities[:, COVID], kind="stable")
    assert (np.diff(gate[order, COVID]) >= 0).all()  # the gate's COVID AUC is P(covid)'s
    # Below the threshold the other classes' gate columns order them as their probabilities do.
    below = probabilities[:, COVID] <= 0.3
    np.testing.assert_array_equal(np.argmax(gate[below][:, OTHERS], axis=1),
                                  np.argmax(probabilities[below][:, OTHERS], axis=1))


@pytest.mark.parametrize("threshold", [np.float32(1 - 6e-8), np.float32(5e-8)])
def test_the_binary_gate_judges_the_served_decision_where_scores_saturate(threshold):
    # Within 1e-7 of 0 or 1 the logits are clipped: the re-centred score alone would be exactly 0.5
    # for films served as COVID, which the Evaluator (COVID when > 0.5) would count as negatives.
    covid = np.array([1.0, np.nextafter(threshold, np.float32(1)), threshold, np.float32(1e-9), 0.3, 0.999], np.float32)
    gate = export._recentred(tf.constant(covid), tf.constant(threshold)).numpy()
    np.testing.assert_array_equal(gate > 0.5, covid > threshold)
    order = np.argsort(covid, kind="stable")
    assert (np.diff(gate[order]) >= 0).all()  # still ranks films by P(covid)


def test_the_binary_gate_is_the_covid_probability_recentred_and_keeps_every_film_apart():
    # sigmoid(logit(p) - logit(t)): the Evaluator's AUC is P(covid)'s only if no two films tie on the gate,
    # near the threshold or near 0 and 1 alike.
    threshold = np.float32(0.3)
    covid = np.array([1e-6, 1e-5, 1e-4, 0.1, 0.29, 0.31, 0.4, 0.9, 0.9999, 0.99999], np.float32)
    gate = export._recentred(tf.constant(covid), tf.constant(threshold)).numpy()
    assert (np.diff(gate) > 0).all()
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    np.testing.assert_allclose(gate[3:8], 1 / (1 + np.exp(-(logit(covid[3:8]) - logit(threshold)))), rtol=1e-5)


def test_a_class_that_lost_has_a_gate_of_its_probability_against_the_winners():
    # normal 0.6, pneumonia 0.3, COVID 0.1 under a threshold of 0.5: normal is served; pneumonia's gate is
    # 0.3 / (0.3 + 0.6), not 0.5 (a tie at the Evaluator's cut would blur its per-class AUC).
    p = np.zeros((1, 3), np.float32)
    p[0, COVID], p[0, OTHERS[0]], p[0, OTHERS[1]] = 0.1, 0.6, 0.3
    label, gate = _decide(p, 0.5)
    assert label[0] == OTHERS[0]
    assert gate[0, OTHERS[0]] == pytest.approx(0.6 / 0.9) and gate[0, OTHERS[1]] == pytest.approx(0.3 / 0.9)


def test_a_film_called_covid_lowers_the_other_classes_gates_as_covid_grows_more_certain():
    # Threshold 0.5: COVID is served for both films; the more probable other class's gate is
    # 1 - COVID's gate (0.4, then 0.1), not one cap at 0.5 that would tie every film called COVID.
    label, gate = _decide(_films([0.6, 0.9], other_share=0.7), 0.5)
    np.testing.assert_array_equal(label, [COVID, COVID])
    np.testing.assert_allclose(gate[:, OTHERS[0]], 1 - gate[:, COVID], rtol=1e-5)
    np.testing.assert_allclose(gate[:, OTHERS[0]], [0.4, 0.1], rtol=1e-5)


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_the_binary_gate_stays_a_number_at_certain_scores_and_thresholds(threshold):
    # P(covid) of exactly 0 or 1 against a threshold of 0 or 1: the unclipped logits would give inf - inf.
    covid = np.array([0.0, 0.5, 1.0], np.float32)
    gate = export._recentred(tf.constant(covid), tf.constant(np.float32(threshold))).numpy()
    assert np.isfinite(gate).all()
    np.testing.assert_array_equal(gate > 0.5, covid > threshold)


# export_serving_model, with stand-ins for the Transform graph and the network: the "image" bytes are
# the probabilities as text ("0.1,0.6,0.3"), which the fake Transform parses and the model passes through.
class _FakeTransformLayer(tf.Module):
    def __call__(self, raw):
        text = tf.reshape(raw[features.IMAGE], [-1])
        return {preprocessing.IMAGE_XF: tf.strings.to_number(tf.strings.split(text, ",")).to_tensor()}


class _FakeTransformOutput:
    def __init__(self):
        self.layer = _FakeTransformLayer()

    def transform_features_layer(self):
        return self.layer

    def raw_feature_spec(self):
        return {features.IMAGE: tf.io.FixedLenFeature([1], tf.string), features.LABEL: tf.io.FixedLenFeature([1], tf.string),
                features.LABEL_INDEX: tf.io.FixedLenFeature([1], tf.int64)}


class _FakeTypicality(tf.Module):
    def __init__(self, model):
        self.model = model

    def __call__(self, x):  # the model's scores and an atypicality of twice the first input
        return self.model(x, training=False), 2.0 * x[:, 0]


def _identity_model(width):
    from tf_keras import layers, models  # the project's Keras (TF_USE_LEGACY_KERAS)

    model = models.Sequential([layers.Dense(width, input_shape=(width,), kernel_initializer="identity",
                                            bias_initializer="zeros")])
    return model


def _exported(tmp_path, task_name, threshold, typical=False):
    from covid_cxr.serving import model_metadata

    task = features.get_task(task_name)
    model = _identity_model(1 if task.is_binary else 3)
    export_dir = str(tmp_path / task_name)
    with mock.patch.object(export, "served_images", lambda encoded: encoded):  # the "images" here are text
        export.export_serving_model(model, _FakeTransformOutput(), task, threshold, {"note": "kept", "threshold": 0.9},
                                    export_dir, typicality_check=_FakeTypicality(model) if typical else None)
    return tf.saved_model.load(export_dir), model_metadata.read(export_dir), task


def _example(image: bytes, **extra) -> bytes:
    feats = {features.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
    feats.update({k: tf.train.Feature(int64_list=tf.train.Int64List(value=[v])) for k, v in extra.items()})
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def test_binary_export_serves_the_stored_threshold_decision_through_both_predict_signatures(tmp_path):
    loaded, metadata, task = _exported(tmp_path, "covid-vs-normal", 0.3, typical=True)
    films = [b"0.1", b"0.3", b"0.31", b"0.9"]
    by_bytes = loaded.signatures[export.IMAGE_SIGNATURE](image_bytes=tf.constant(films))
    by_example = loaded.signatures[export.EXAMPLES_SIGNATURE](examples=tf.constant([_example(f) for f in films]))
    for served in (by_bytes, by_example):
        covid = np.array([0.1, 0.3, 0.31, 0.9], np.float32)
        np.testing.assert_allclose(served["covid_probability"].numpy(), covid)
        np.testing.assert_allclose(served[export.PROBABILITIES_OUTPUT].numpy()[:, task.positive_index], covid)
        np.testing.assert_allclose(served[export.PROBABILITIES_OUTPUT].numpy().sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_array_equal(served["label_index"].numpy(), [0, 0, 1, 1])  # p > t, not p >= t
        assert [v.decode() for v in served["label"].numpy()] == [task.classes[i] for i in (0, 0, 1, 1)]
        np.testing.assert_allclose(served["threshold"].numpy(), [0.3] * 4)
        np.testing.assert_array_equal(served[export.GATE_OUTPUT].numpy() > 0.5, covid > 0.3)
        assert not np.allclose(served[export.GATE_OUTPUT].numpy(), covid)  # re-centred, not P(covid)
        np.testing.assert_allclose(served["atypicality"].numpy(), 2 * covid)
        np.testing.assert_array_equal(served["atypical"].numpy(), 2 * covid > 1.0)
    # The asset: the caller's metadata kept, and the export's own task, classes, threshold and rule over it.
    assert metadata == {"note": "kept", "task": task.name, "classes": list(task.classes), "threshold": 0.3,
                        "decision_rule": "covid_threshold"}


def test_three_class_export_serves_covid_above_the_threshold_else_the_more_probable_other_class(tmp_path):
    loaded, metadata, task = _exported(tmp_path, "three-class", 0.2)
    p = _films([0.1, 0.25], other_share=0.3)  # COVID is never the argmax, yet the second film is called COVID
    text = [",".join(str(v) for v in row).encode() for row in p]
    served = loaded.signatures[export.IMAGE_SIGNATURE](image_bytes=tf.constant(text))
    np.testing.assert_allclose(served["covid_probability"].numpy(), [0.1, 0.25], rtol=1e-6)
    np.testing.assert_array_equal(served["label_index"].numpy(), [OTHERS[1], COVID])
    assert [v.decode() for v in served["label"].numpy()] == [task.classes[OTHERS[1]], task.classes[COVID]]
    assert "atypicality" not in served  # no typicality check fitted
    assert metadata["decision_rule"] == "covid_threshold" and metadata["classes"] == list(task.classes)


def test_the_transform_signature_needs_no_label(tmp_path):
    loaded, _, _ = _exported(tmp_path, "covid-vs-normal", 0.5)
    # TFMA's hook may see films without labels: label and label_index are not parsed.
    out = loaded.signatures[export.TRANSFORM_SIGNATURE](examples=tf.constant([_example(b"0.7"), _example(b"0.2")]))
    np.testing.assert_allclose(out[preprocessing.IMAGE_XF].numpy(), [[0.7], [0.2]])


# What the served signatures accept: every image as curation would read it, or a refusal, never a score of
# a misread film (the Transform graph alone cut a 16-bit PNG to its high byte and scored 1x1 and blank images).


def _film(height=48, width=40, seed=0):
    """A borderless uint8 grey film (curation neither crops nor resizes it): a ramp under noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, width)[None, :] + np.linspace(0, 20, height)[:, None]
    return np.clip(ramp + rng.normal(0, 12, (height, width)), 30, 230).astype(np.uint8)


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _palette(grey: np.ndarray) -> Image.Image:
    image = Image.fromarray(grey, "P")
    image.putpalette([v for v in range(256) for _ in range(3)])
    return image


def _formats(grey: np.ndarray) -> dict:
    """The same film in the formats a hospital's export may send."""
    import cv2

    film = Image.fromarray(grey)
    colour = Image.merge("RGB", [film, film.point(lambda v: v * 0.8), film.point(lambda v: 255 - v)])
    rng = np.random.default_rng(1)
    rgba = np.dstack([np.asarray(colour), rng.integers(0, 256, grey.shape)]).astype(np.uint8)
    wide = grey.astype(np.uint16)
    return {
        "grey 8-bit PNG": _encoded(film, "PNG"),
        "12-bit film in a 16-bit grey PNG": _encoded(Image.fromarray(wide * 16), "PNG"),
        "8-bit values in a 16-bit grey PNG": _encoded(Image.fromarray(wide), "PNG"),
        "16-bit RGB PNG": cv2.imencode(".png", np.dstack([wide * 200, wide * 150, wide * 257]))[1].tobytes(),
        "colour PNG": _encoded(colour, "PNG"),
        "palette PNG": _encoded(colour.quantize(200), "PNG"),
        "RGBA PNG, varying alpha": _encoded(Image.fromarray(rgba, "RGBA"), "PNG"),
        "grey+alpha PNG": _encoded(Image.merge("LA", [film, Image.fromarray(rgba[:, :, 3])]), "PNG"),
        "grey JPEG": _encoded(film, "JPEG", quality=90),
        "progressive JPEG": _encoded(film, "JPEG", quality=90, progressive=True),
        "colour JPEG": _encoded(colour, "JPEG", quality=90),
        "CMYK JPEG": _encoded(film.convert("CMYK"), "JPEG", quality=90),
        "one-frame GIF": _encoded(_palette(grey), "GIF"),
        # Curation keeps the palette's grey for the transparent colour; TensorFlow's decoder made it black.
        "GIF with a transparent colour": _encoded(_palette(grey), "GIF", transparency=int(grey[0, 0])),
        "grey BMP": _encoded(film, "BMP"),
        "colour BMP": _encoded(colour, "BMP"),
    }


# Traced once for the module: a new tf.function per call traced the decoders again every time.
_served_images = tf.function(export.served_images, input_signature=[tf.TensorSpec([None], tf.string)])


def _served_bytes(encoded: list) -> list:
    return list(_served_images(tf.constant(encoded)).numpy())


def test_the_served_graph_reads_every_format_pixel_for_pixel_as_curation_reads_it(tmp_path):
    formats = _formats(_film())
    names = list(formats)
    for name, served in zip(names, _served_bytes([formats[n] for n in names])):
        path = tmp_path / "film"
        path.write_bytes(formats[name])
        curated, _ = images.read_gray(str(path))
        decoded = tf.io.decode_image(served, channels=1).numpy()[:, :, 0]  # as the Transform decodes it
        np.testing.assert_array_equal(decoded, curated, err_msg=name)
    # A curated film (what `covid-cxr predict` and TFMA send) reaches the Transform as it was sent.
    assert _served_bytes([formats["grey 8-bit PNG"]]) == [formats["grey 8-bit PNG"]]


def _tf_example(encoded: bytes) -> bytes:
    image = tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))
    return tf.train.Example(features=tf.train.Features(feature={features.IMAGE: image})).SerializeToString()


@functools.lru_cache(maxsize=2)
def _loaded(model_dir):
    """The SavedModel loaded once per directory (a refused request leaves it as it was)."""
    return tf.saved_model.load(model_dir)


def _served(model_dir, encoded: list) -> list:
    """P(covid) from both predict signatures, which must agree."""
    signatures = _loaded(model_dir).signatures
    by_bytes = signatures[export.IMAGE_SIGNATURE](image_bytes=tf.constant(encoded))["covid_probability"].numpy()
    by_example = signatures[export.EXAMPLES_SIGNATURE](examples=tf.constant([_tf_example(e) for e in encoded]))
    np.testing.assert_array_equal(by_bytes, by_example["covid_probability"].numpy())
    return by_bytes.tolist()


@pytest.mark.parametrize("name", ["12-bit film in a 16-bit grey PNG", "8-bit values in a 16-bit grey PNG",
                                  "RGBA PNG, varying alpha", "CMYK JPEG", "one-frame GIF", "grey BMP"])
def test_a_served_film_gets_the_prediction_covid_cxr_predict_gives_it(binary_model, tmp_path, name):
    encoded = _formats(_film(64, 56))[name]
    path = tmp_path / "film"
    path.write_bytes(encoded)
    result = predict.predict_paths(predict.load_model(binary_model.model_dir), [str(path)])
    assert not result.errors
    processed = images.process(str(path))
    assert not processed.cropped and (processed.height, processed.width) == (64, 56)  # so curation read it only
    (served,) = _served(binary_model.model_dir, [encoded])
    assert served == pytest.approx(result.predictions[0]["covid_probability"], abs=1e-7)


def _claiming(encoded: bytes, fmt: str, width: int, height: int) -> bytes:
    """A small image whose header claims width x height (nothing decodes that far before the refusal)."""
    data = bytearray(encoded)
    if fmt == "PNG":  # IHDR, with its CRC made right, as an encoder's would be
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    elif fmt == "JPEG":  # the baseline SOF0 segment: length, precision, height, width
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    elif fmt == "GIF":  # the logical screen
        data[6:10] = struct.pack("<HH", width, height)
    else:  # BMP
        data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def test_a_header_claiming_more_pixels_than_curation_takes_is_refused_before_decoding():
    """A decompression bomb: a small file claiming 30000 x 30000 pixels, refused as curation refuses it
    (data/images.py's limit) from its header alone; decoding it would have needed ~2.7 GB."""
    assert 30000 * 30000 > images.MAX_PIXELS >= 20000 * 20000
    film = Image.fromarray(_film())
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        claiming = _claiming(_encoded(film, fmt), fmt, 30000, 30000)
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
                f"image 0: image too large (30000 x 30000 pixels; curation refuses more than {images.MAX_PIXELS})")):
            _served_bytes([claiming])
    # Within the limit, the size a header claims is no refusal (a 400 x 30000 strip: only the decoder's).
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        _served_bytes([_claiming(_encoded(film, "PNG"), "PNG", 400, 30000)])
    assert "too large" not in e.value.message


def test_an_image_cut_short_is_refused_as_truncated_not_with_the_decoders_message():
    film = Image.fromarray(_film())
    png, jpeg, bmp = (_encoded(film, fmt) for fmt in ("PNG", "JPEG", "BMP"))
    refused = {
        "truncated or corrupt PNG \\(no IEND chunk\\)": [png[:-12], png[:len(png) // 2], png[:40]],
        "truncated or corrupt JPEG \\(no end-of-image marker\\)": [jpeg[:-2], jpeg[:len(jpeg) // 2], jpeg[:40]],
        f"truncated or corrupt BMP \\({len(bmp) - 1} bytes; its header describes {len(bmp)}\\)": [bmp[:-1]],
        f"truncated or corrupt BMP \\({len(bmp) + 3} bytes; its header describes {len(bmp)}\\)": [bmp + b"end"],
    }
    for reason, cut in refused.items():
        for encoded in cut:
            with pytest.raises(tf.errors.InvalidArgumentError, match=f"image 1: {reason}"):
                _served_bytes([png, encoded])
    # Bytes after the end, which curation and the decoders ignore, are no refusal.
    assert _served_bytes([png + b"end", jpeg + b"end"]) == [png + b"end", _served_bytes([jpeg])[0]]


def _gif_parts(grey: np.ndarray) -> tuple:
    """A one-frame GIF of `grey` as Pillow writes it: (header, screen and colour table; the image block)."""
    gif = _encoded(_palette(grey), "GIF")
    image = 13 + 3 * 256  # a global colour table of 256 entries, no extension
    assert gif[image] == 0x2C and gif[-1:] == b";"
    return gif[:image], gif[image:-1]


def _sub_blocks(payload: bytes, *sizes: int) -> bytes:
    """`payload` as GIF sub-blocks of these sizes in turn (encoders write 255), then the terminator."""
    sizes = sizes or (255,)
    chunks, at = [], 0
    while at < len(payload):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(bytes([len(payload[at:at + size])]) + payload[at:at + size])
        at += size
    return b"".join(chunks) + b"\0"


def _rechunked(image_block: bytes, *sizes: int) -> bytes:
    """The image block with its data cut into sub-blocks of these sizes in turn."""
    payload, at = b"", 11  # after the descriptor (no local colour table) and the code size
    while image_block[at]:
        payload += image_block[at + 1:at + 1 + image_block[at]]
        at += 1 + image_block[at]
    return image_block[:11] + _sub_blocks(payload, *sizes)


def _with_screen(head: bytes, width: int, height: int) -> bytes:
    return head[:6] + struct.pack("<HH", width, height) + head[10:]


def _image_block(left: int, top: int, width: int, height: int, data: bytes) -> bytes:
    return b"," + struct.pack("<HHHHB", left, top, width, height, 0) + b"\x08" + _sub_blocks(data)


def test_a_gif_of_many_frames_is_refused_from_its_blocks_before_any_frame_is_decoded():
    """TensorFlow's decoder decodes every frame before the count could refuse them: 120 frames of
    2000 x 2000 (480 million pixels, over curation's limit) from a 33 kB file. Their data is no image
    at all, so any decoding would fail with the decoder's message."""
    assert 120 * 2000 * 2000 > images.MAX_PIXELS
    head, _ = _gif_parts(_film(64, 64))
    frame = _image_block(0, 0, 2000, 2000, b"\xff" * 255)
    bomb = _with_screen(head, 2000, 2000) + frame * 120 + b";"
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            "image 0: multi-frame GIF (120 frames) is not a radiograph")):
        _served_bytes([bomb])
    # 10000 frames of 14 bytes: the walk stops counting at its budget of steps, the GIF refused all the same.
    many = _with_screen(head, 64, 64) + _image_block(0, 0, 64, 64, b"\xff") * 10000 + b";"
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image 0: multi-frame GIF \(at least \d+ frames\) is not"):
        _served_bytes([many])


def test_a_gif_cut_short_or_damaged_is_refused_in_words_not_with_the_decoders_message():
    head, image = _gif_parts(_film(64, 64))
    gif = head + image + b";"
    refused = {
        "truncated or corrupt GIF (cut short inside a block)": [gif[:-10], gif[:len(gif) // 2], gif[:len(head) + 5],
                                                                 gif[:100], gif[:8]],
        f"corrupt GIF (byte 153 at offset {len(head) + len(image)} begins no block)": [head + image + b"\x99;"],
        "GIF without an image": [head + b";"],
    }
    for reason, damaged in refused.items():
        for encoded in damaged:
            with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(f"image 1: {reason}")):
                _served_bytes([gif, encoded])


def test_a_one_frame_gif_is_served_as_curation_reads_it_however_its_blocks_are_laid_out(tmp_path):
    grey = _film(64, 64)
    head, image = _gif_parts(grey)
    comment = b"!\xfe" + _sub_blocks(b"a comment, longer than one sub-block " * 10)
    control = b"!\xf9\x04\x00\x0a\x00\x00\x00"  # a graphic control extension: a delay, no transparency
    laid_out = {
        "as Pillow writes it": head + image + b";",
        "after extensions": head + comment + control + image + comment + b";",
        "in sub-blocks of 100 bytes": head + _rechunked(image, 100) + b";",
        "in sub-blocks of 1 byte": head + _rechunked(image, 1) + b";",
        "in sub-blocks of 3 sizes in turn": head + _rechunked(image, 255, 17, 100) + b";",
        "without its trailer": head + image,
        "with bytes after its trailer": head + image + b";" + b"\x99" * 40,
        "on a smaller screen": _with_screen(head, 32, 40) + image + b";",
    }
    served = _served_bytes(list(laid_out.values()))
    for (name, encoded), sent in zip(laid_out.items(), served):
        path = tmp_path / "film.gif"
        path.write_bytes(encoded)
        curated, _ = images.read_gray(str(path))
        np.testing.assert_array_equal(tf.io.decode_image(sent, channels=1).numpy()[:, :, 0], curated, err_msg=name)
        assert sent == served[0], name


def test_a_gif_the_decoder_would_read_otherwise_than_curation_or_too_dear_to_check_is_refused():
    head, image = _gif_parts(_film(64, 64))
    refused = {
        # Curation reads the frame on an 80 x 80 screen; the decoder would return the 64 x 64 frame alone.
        "GIF frame (64 x 64 at 0, 0) does not fill its screen (80 x 80)": _with_screen(head, 80, 80) + image + b";",
        "GIF frame (64 x 64 at 8, 8) does not fill its screen (64 x 64)": head + image[:1] + struct.pack(
            "<HH", 8, 8) + image[5:] + b";",
        # The decoder allocates a frame's own size, whatever the screen says.
        f"image too large (30000 x 30000 pixels; curation refuses more than {images.MAX_PIXELS})":
            head + image[:5] + struct.pack("<HH", 30000, 30000) + image[9:] + b";",
        # Sub-blocks of 1 and 2 bytes in turn: walking them would cost a graph step every 2.5 bytes.
        "GIF too fragmented to check (more than ": head + _rechunked(image, 1, 2) + b";",
    }
    for reason, encoded in refused.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(f"image 0: {reason}")):
            _served_bytes([encoded])


REFUSED = {
    "two-frame GIF": "multi-frame GIF \\(2 frames\\) is not a radiograph",
    "PNG cut short": "truncated or corrupt PNG \\(no IEND chunk\\)",
    "PNG claiming 30000 x 30000": "image too large \\(30000 x 30000 pixels",
    "1x1 PNG": "image too small \\(1x1",
    "200x31 PNG": "image too small \\(200x31",
    "blank PNG": "blank image \\(a single grey level\\)",
    "no bytes": "empty \\(no image bytes\\)",
    "random bytes": "not a PNG, JPEG, GIF or BMP image",
}


def _refused_inputs() -> dict:
    grey = _film(64, 64)
    frames = [_palette(grey), _palette(255 - grey)]
    two_frames = io.BytesIO()
    frames[0].save(two_frames, format="GIF", save_all=True, append_images=frames[1:])
    return {
        "two-frame GIF": two_frames.getvalue(),
        "PNG cut short": _encoded(Image.fromarray(grey), "PNG")[:-100],
        "PNG claiming 30000 x 30000": _claiming(_encoded(Image.fromarray(grey), "PNG"), "PNG", 30000, 30000),
        "1x1 PNG": _encoded(Image.fromarray(np.array([[128]], np.uint8)), "PNG"),
        "200x31 PNG": _encoded(Image.fromarray(_film(31, 200)), "PNG"),
        "blank PNG": _encoded(Image.fromarray(np.full((64, 64), 90, np.uint8)), "PNG"),
        "no bytes": b"",
        "random bytes": np.random.default_rng(0).bytes(3000),
    }


def test_what_curation_refuses_the_served_signatures_refuse_with_its_reason_and_no_score(binary_model, tmp_path):
    inputs = _refused_inputs()
    served = predict.load_model(binary_model.model_dir)
    for name, encoded in inputs.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"image 0: {REFUSED[name]}"):
            _served(binary_model.model_dir, [encoded])
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"image 0: {REFUSED[name]}"):
            _loaded(binary_model.model_dir).signatures[export.EXAMPLES_SIGNATURE](
                examples=tf.constant([_tf_example(encoded)]))
        # `covid-cxr predict` refuses each too (curation's reader says why).
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(encoded)
        assert predict.predict_paths(served, [str(path)]).predictions == []


def test_a_request_holding_one_bad_image_fails_and_names_it(binary_model):
    good = _formats(_film(64, 56))["grey 8-bit PNG"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="image 1: image too small \\(1x1"):
        _served(binary_model.model_dir, [good, _refused_inputs()["1x1 PNG"], good])
    assert len(_served(binary_model.model_dir, [good, good])) == 2
