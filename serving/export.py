"""Exports the trained Keras model as the SavedModel that Evaluator, Pusher and TF Serving use.

Signatures (all apply the training Transform graph, so serving cannot drift from training):
  serving_default     serialized tf.Example [N]   what TF Serving, TFMA and Vertex batch send
  predict_image       encoded image bytes [N]     for clients with no TFX code (base64 over REST)
  transform_features  serialized tf.Example [N]   TFMA's preprocessing hook
The two predict signatures first read each image as curation reads a film (`served_images`: PNG of
any colour type and 8 or 16 bits, JPEG including CMYK, one-frame GIF, BMP; 16-bit grayscale stretched
from its min..max as curation does, not cut to its high byte) and refuse, with the image's index and
curation's reason, what curation refuses (a multi-frame GIF: counted from its blocks, before any frame
is decoded; fewer than 32 pixels on a side, a single grey level, more pixels than its limit: from the
header, before any decoding) or cannot read (a file cut short is "truncated or corrupt PNG", ...), and a
GIF TensorFlow would read otherwise than curation (a frame short of its screen): the request fails, no
score is returned for such an image.
Outputs of the two predict signatures:
  probabilities [N, C], covid_probability [N], label [N] (class name), label_index [N],
  threshold [N] (the stored decision threshold), gate_score ([N] binary, [N, C] three-class),
  and, when the Trainer fitted the check, atypicality [N] (how unlike the training films the input
  is; above 1 = atypical) and atypical [N] bool (serving/typicality.py).
`gate_score` is the served decision re-expressed as "score > 0.5", so that the Evaluator, which
gates at 0.5, judges exactly the label the model serves:
  binary       the COVID probability re-centred on the stored threshold, sigmoid(logit(p) - logit(t)):
               > 0.5 exactly when p > t (the threshold is chosen on validation data, not fixed at 0.5);
  three-class  the label is COVID when its probability p > t, else the more probable other class (an
               argmax has no operating point: it under- or over-calls COVID by how the softmax happens
               to be calibrated). COVID's column is re-centred as for binary tasks, so it still ranks
               films by p (the gate's AUC is p's); another class's column is
               p_c / (p_c + max_{j != c, COVID} p_j), capped below 0.5 when the label is COVID.
The model card metadata travels in assets/covid_cxr.json.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import tensorflow as tf

from covid_cxr.data import features, images
from covid_cxr.serving import model_metadata, typicality
from covid_cxr.transform import preprocessing

EXAMPLES_SIGNATURE = "serving_default"
IMAGE_SIGNATURE = "predict_image"
TRANSFORM_SIGNATURE = "transform_features"
GATE_OUTPUT = "gate_score"
PROBABILITIES_OUTPUT = "probabilities"


def _logit(p):
    p = tf.clip_by_value(p, 1e-7, 1 - 1e-7)
    return tf.math.log(p) - tf.math.log1p(-p)


def _recentred(covid, threshold):
    """sigmoid(logit(p) - logit(t)): above 0.5 exactly when p > t, and increasing in p. The clip in
    _logit makes it exactly 0.5 when p and t both lie within 1e-7 of 0 or 1 (saturated scores), so the
    side of 0.5 is set by p > t itself."""
    score = tf.sigmoid(_logit(covid) - _logit(threshold))
    just_above_half = tf.math.nextafter(tf.constant(0.5, score.dtype), tf.constant(1.0, score.dtype))
    return tf.where(covid > threshold, tf.maximum(score, just_above_half), tf.minimum(score, 0.5))


def _argmax_margin(probabilities):
    """p_c / (p_c + the largest other class probability): above 0.5 only for the argmax class."""
    top2 = tf.math.top_k(probabilities, k=2).values
    is_top = tf.one_hot(tf.argmax(probabilities, axis=1), tf.shape(probabilities)[1], on_value=True, off_value=False)
    largest_other = tf.where(is_top, top2[:, 1:2], top2[:, 0:1])
    return probabilities / tf.maximum(probabilities + largest_other, 1e-12)


def three_class_decision(probabilities, covid_index: int, threshold):
    """(label_index [N], gate [N, C]) for the rule "COVID when p_covid > threshold, else the most
    probable other class"; gate[:, c] > 0.5 exactly when c is that label."""
    is_covid_column = tf.equal(tf.range(tf.shape(probabilities)[1]), covid_index)[tf.newaxis, :]
    rest = tf.where(is_covid_column, tf.zeros_like(probabilities), probabilities)
    covid = probabilities[:, covid_index]
    covid_gate = _recentred(covid, threshold)[:, tf.newaxis]
    called_covid = covid > threshold
    # When p_covid <= threshold the other classes sum to >= 1 - threshold > 0, so this argmax is
    # never the zeroed COVID column.
    label_index = tf.where(called_covid, tf.constant(covid_index, tf.int64), tf.argmax(rest, axis=1))
    rest_margin = _argmax_margin(rest)
    rest_gate = tf.where(called_covid[:, tf.newaxis], tf.minimum(rest_margin, 1.0 - covid_gate), rest_margin)
    return label_index, tf.where(is_covid_column, covid_gate, rest_gate)


_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_GIF = b"GIF8"
_BMP = b"BM"


def _luminance(rgb):
    """uint8 [H, W, >=3] RGB -> [H, W, 1] grey as Pillow's convert("L"), which curation uses (ITU-R 601-2)."""
    rgb = tf.cast(rgb[:, :, :3], tf.int32)
    grey = (rgb[:, :, 0:1] * 19595 + rgb[:, :, 1:2] * 38470 + rgb[:, :, 2:3] * 7471 + 0x8000) // 65536
    return tf.cast(grey, tf.uint8)


def _over_black(rgba):
    """uint8 [H, W, 4] -> [H, W, 3] composited over opaque black, as Pillow's alpha_composite (7-bit
    precision), which curation uses for a film with transparency."""
    rgba = tf.cast(rgba, tf.int32)
    weighted = rgba[:, :, :3] * rgba[:, :, 3:4] * 128 + 0x80 * 128
    return tf.cast(((weighted // 256 + weighted) // 256) // 128, tf.uint8)  # Pillow's SHIFTFORDIV255, then >> 7


def _stretched(values):
    """[H, W, 1] uint16 -> uint8 from its own min..max to 0..255, as curation reads a 16-bit film
    (data/images.py _pil_to_gray)."""
    values = tf.cast(values, tf.float64)
    low, high = tf.reduce_min(values), tf.reduce_max(values)
    scaled = tf.math.round((values - low) * (255.0 / tf.maximum(high - low, 1.0)))
    return tf.cast(tf.clip_by_value(scaled, 0.0, 255.0), tf.uint8)


def _refuse_unless(condition, index, reason):
    """An op failing the request with "image <index>: <reason>" (an InvalidArgumentError) unless `condition`."""
    return tf.debugging.Assert(condition, [tf.strings.join(["image ", tf.strings.as_string(index), ": ", reason])])


def _after(checks, encoded):
    """`encoded` for ops that must run only once every one of `checks` (_refuse_unless) has passed."""
    with tf.control_dependencies(checks):
        return tf.identity(encoded)


def _number(header, offset, size, big_endian=False):
    """The unsigned integer (int64) in `size` bytes at `offset` of an image's header."""
    digits = tf.cast(tf.io.decode_raw(tf.strings.substr(header, offset, size), tf.uint8), tf.int64)
    weights = [256 ** i for i in range(size)]
    return tf.reduce_sum(digits * (weights[::-1] if big_endian else weights))


def _int32_size(header, offset):
    """|int32| at `offset`, little-endian: a BMP's width or height (negative for a top-down BMP)."""
    value = _number(header, offset, 4)
    return tf.where(value >= 2 ** 31, 2 ** 32 - value, value)


def _ends(kind, encoded, marker: bytes):
    """Whether an image of this `kind` (a bool tensor) holds `marker`, the bytes its format ends with
    (searched, not only at the end: decoders and curation ignore trailing bytes)."""
    return tf.cond(kind, lambda: tf.size(tf.strings.split(encoded, sep=marker)) > 1, lambda: tf.constant(False))


_PNG_END = b"\0\0\0\0IEND\xaeB`\x82"  # the IEND chunk, always these 12 bytes
_JPEG_END = b"\xff\xd9"  # EOI: stuffed as FF 00 in the coded data, so no pixel data ends it early


def _bmp_size(header):
    """The bytes an uncompressed BMP's header describes (pixel data offset + padded rows), which the
    decoder requires exactly; -1 for a compressed one (left to the decoder)."""
    row = (_number(header, 28, 2) * _int32_size(header, 18) + 31) // 32 * 4
    uncompressed = tf.reduce_any(tf.equal(_number(header, 30, 4), [0, 3]))  # BI_RGB, BI_BITFIELDS
    return tf.where(uncompressed, _number(header, 10, 4) + row * _int32_size(header, 22), -1)


_GIF_EXTENSION, _GIF_IMAGE, _GIF_TRAILER = 0x21, 0x2C, 0x3B
_GIF_CONTROL = 0xF9  # the graphic control extension's label: a frame's delay, disposal, transparent colour
_GIF_RUN = 4096  # sub-blocks a step looks ahead for a change of size


def _gif_steps(length):
    """The steps a GIF of `length` bytes may take to walk: a frame takes about 4 and an extension 2
    (each run of sub-blocks of one size is a step), metadata written byte by byte (XMP) one per 30 to
    120 bytes. A GIF crafted to take a step per sub-block of 1 or 2 bytes is refused after these."""
    return 256 + length // 256


def _gif_colour_table(packed):
    """Bytes of the colour table a GIF's packed field (screen or image descriptor) announces."""
    return tf.where(packed >= 128, 3 * tf.pow(2, packed % 8 + 1), 0)


def _gif_structure(encoded):
    """A GIF's frames read from its block structure, without decoding any (TensorFlow's decoder decodes
    every frame before anything could refuse them: a small GIF of many large frames is a decompression
    bomb). After the header, screen descriptor and global colour table come extension blocks (0x21, a
    label, then sub-blocks) and images (0x2C, a descriptor, a local colour table, a code size, then
    sub-blocks), up to the trailer (0x3B); sub-blocks are a size byte and that many bytes, up to a size 0.
    A step of the walk is a block, or a run of sub-blocks of one size; a GIF needing more than
    _gif_steps(length) steps is not walked to its end.
    -> (frames, the first frame's [left, top, width, height], where the walk stopped, the byte there,
    the offset of the first frame's graphic control extension or -1). The walk stops at the trailer, the
    length (no trailer: the decoder and curation accept that), the length + 1 (cut short inside the
    header or a block), a byte that begins no block, or -1 (too many steps)."""
    length = tf.strings.length(encoded)
    data = tf.cast(tf.io.decode_raw(tf.strings.join([encoded, b"\0" * 16]), tf.uint8), tf.int32)
    cut = length + 1

    def unfinished(offset, in_sub_blocks):
        is_block = tf.reduce_any(tf.equal(data[offset], [_GIF_EXTENSION, _GIF_IMAGE]))
        return (offset < length) & (in_sub_blocks | is_block)

    def walking(offset, in_sub_blocks, frames, first, control, steps):
        return unfinished(offset, in_sub_blocks) & (steps < _gif_steps(length))

    def step(offset, in_sub_blocks, frames, first, control, steps):
        def sub_blocks():  # a run of sub-blocks of one size, as encoders write them (255 bytes), in one step
            size = data[offset]
            stride = size + 1
            run = data[offset:tf.minimum(length, offset + _GIF_RUN * stride):stride]
            differs = tf.not_equal(run, size)
            after = offset + stride * tf.where(tf.reduce_any(differs), tf.argmax(tf.cast(differs, tf.int32),
                                                                                    output_type=tf.int32), tf.size(run))
            ends = tf.equal(size, 0)  # the block does, and the next begins after it
            after = tf.reshape(after, [])  # a slice's shape is unknown when traced
            return (tf.where(ends, offset + 1, tf.where(after < length, after, cut)), ~ends, frames, first, control)

        def block():
            is_image = tf.equal(data[offset], _GIF_IMAGE)
            after = tf.where(is_image, offset + 11 + _gif_colour_table(data[offset + 9]), offset + 2)
            # The decoder reads the first graphic control extension before a frame (giflib's).
            is_control = ~is_image & tf.equal(data[offset + 1], _GIF_CONTROL) & (first < 0) & (control < 0)
            return (tf.where(after < length, after, cut), tf.constant(True), frames + tf.cast(is_image, tf.int32),
                    tf.where(is_image & (first < 0), offset, first), tf.where(is_control, offset, control))

        return (*tf.cond(in_sub_blocks, sub_blocks, block), steps + 1)

    start = 13 + _gif_colour_table(data[10])
    offset, in_sub_blocks, frames, first, control, steps = tf.while_loop(walking, step, (
        tf.where(start <= length, start, cut), tf.constant(False), tf.constant(0), tf.constant(-1), tf.constant(-1),
        tf.constant(0)))
    descriptor = first + 1 + 2 * tf.range(4)
    frame = tf.where(first >= 0, tf.gather(data, descriptor) + 256 * tf.gather(data, descriptor + 1), 0)
    end = tf.where(unfinished(offset, in_sub_blocks), -1, tf.where(in_sub_blocks, cut, offset))
    return frames, frame, end, data[tf.maximum(end, 0)], control


def _without_transparency(encoded, control):
    """The GIF with its transparent colour flag cleared in the graphic control extension at `control` (-1:
    none): the decoder makes that colour's pixels black, curation (Pillow's grey conversion) keeps the
    colour the palette gives them."""
    control = tf.cast(control, tf.int32)
    flags = control + 3  # label 0x21 0xF9, the size 4, then the packed flags: bit 0 the transparent colour's
    header = tf.strings.join([encoded, b"\0" * 4])
    has_flags = (control >= 0) & tf.equal(tf.strings.substr(header, control + 2, 1), b"\x04")
    cleared = tf.gather(tf.constant([bytes([v & 0xFE]) for v in range(256)]), _number(header, flags, 1))
    return tf.cond(has_flags, lambda: tf.strings.join([tf.strings.substr(encoded, 0, flags), cleared,
                                                       tf.strings.substr(encoded, flags + 1, tf.strings.length(
                                                           encoded, "BYTE") - flags - 1)]), lambda: encoded)


def _served_image(index, encoded):
    """One image sent for serving -> bytes the Transform graph decodes as curation reads the image: a
    grey PNG of up to 8 bits (a curated film) as it came, any other as the 8-bit grey PNG curation's
    reader (data/images.py read_gray) makes of it. Refuses (the request fails) an image curation
    refuses or that nothing here can read."""
    header = tf.strings.join([encoded, tf.constant(b"\0" * 32)])  # sniffed without reading past the end
    start = tf.strings.substr(header, 0, 8)
    is_png = tf.equal(start, _PNG)
    # IHDR: bit depth 16, colour type 0 (grey). Curation stretches those; 16-bit colour it reads at 8 bits.
    is_grey16_png = is_png & tf.equal(tf.strings.substr(header, 24, 2), b"\x10\x00")
    colour_type = tf.strings.substr(header, 25, 1)
    has_alpha = is_png & tf.reduce_any(tf.equal(colour_type, [b"\x04", b"\x06"]))  # grey and alpha, RGBA
    is_colour_png = is_png & tf.reduce_any(tf.equal(colour_type, [b"\x02", b"\x03"]))  # RGB, palette
    is_jpeg = tf.equal(tf.strings.substr(start, 0, 3), _JPEG)
    is_gif = tf.equal(tf.strings.substr(start, 0, 4), _GIF)
    is_bmp = tf.equal(tf.strings.substr(start, 0, 2), _BMP)
    known = tf.reduce_any(tf.stack([is_png, is_jpeg, is_gif, is_bmp]))
    length = tf.cast(tf.strings.length(encoded), tf.int64)
    empty = tf.equal(length, 0)
    encoded = _after([
        _refuse_unless(~empty, index, "empty (no image bytes)"),
        _refuse_unless(empty | known, index, "not a PNG, JPEG, GIF or BMP image (TIFF, WebP and DICOM: use "
                                             "`covid-cxr predict`, or send the film as curation stores it)"),
    ], encoded)
    # The size the header claims, refused over curation's limit before anything decodes it: a small file
    # can claim gigapixels (a decompression bomb). A JPEG cut short is refused below instead: its header
    # may be incomplete.
    jpeg_complete = _ends(is_jpeg, encoded, _JPEG_END)
    jpeg = tf.cond(jpeg_complete, lambda: tf.cast(tf.io.extract_jpeg_shape(encoded)[1::-1], tf.int64),
                   lambda: tf.zeros([2], tf.int64))  # [width, height] from its SOF
    png = _number(header, 16, 4, big_endian=True), _number(header, 20, 4, big_endian=True)  # IHDR
    gif_frames, gif_frame, gif_end, gif_end_byte, gif_control = [tf.cast(v, tf.int64) for v in tf.cond(
        is_gif, lambda: _gif_structure(encoded), lambda: (tf.constant(0), tf.zeros([4], tf.int32), tf.constant(0),
                                                          tf.constant(0), tf.constant(-1)))]
    gif_left, gif_top, gif_width, gif_height = tf.unstack(gif_frame)
    gif_screen = _number(header, 6, 2), _number(header, 8, 2)
    # As Pillow (curation) sizes it: the screen, or further if the first frame reaches beyond it. The
    # decoder allocates each frame's own size, whatever the screen says.
    gif = tf.maximum(gif_screen[0], gif_left + gif_width), tf.maximum(gif_screen[1], gif_top + gif_height)
    bmp = _int32_size(header, 18), _int32_size(header, 22)
    width, height = [tf.where(is_png, png[i], tf.where(is_gif, gif[i], tf.where(is_bmp, bmp[i], jpeg[i])))
                     for i in (0, 1)]
    too_large = tf.strings.join(["image too large (", tf.strings.as_string(width), " x ", tf.strings.as_string(height),
                                 f" pixels; curation refuses more than {images.MAX_PIXELS})"])
    encoded = _after([_refuse_unless(width * height <= images.MAX_PIXELS, index, too_large)], encoded)
    # A file cut short, refused in words before the decoders fail with their own messages ("Invalid PNG
    # data").
    bmp_size = _bmp_size(header)
    encoded = _after([
        _refuse_unless(~is_png | _ends(is_png, encoded, _PNG_END), index, "truncated or corrupt PNG (no IEND chunk)"),
        _refuse_unless(~is_jpeg | jpeg_complete, index, "truncated or corrupt JPEG (no end-of-image marker)"),
        _refuse_unless(~is_bmp | (bmp_size < 0) | tf.equal(bmp_size, length), index, tf.strings.join([
            "truncated or corrupt BMP (", tf.strings.as_string(length), " bytes; its header describes ",
            tf.strings.as_string(bmp_size), ")"])),
        _refuse_unless(~is_gif | tf.not_equal(gif_end, length + 1), index, "truncated or corrupt GIF (cut short inside a block)"),
        _refuse_unless(~is_gif | (gif_end < 0) | (gif_end >= length) | tf.equal(gif_end_byte, _GIF_TRAILER), index,
                       tf.strings.join(["corrupt GIF (byte ", tf.strings.as_string(gif_end_byte), " at offset ",
                                        tf.strings.as_string(gif_end), " begins no block)"])),
    ], encoded)
    # Refused before the decoder reads any frame: it decodes all of them, into each one's own size.
    walked = gif_end >= 0
    encoded = _after([
        _refuse_unless(~is_gif | (gif_frames < 2), index, tf.strings.join([
            "multi-frame GIF (", tf.where(walked, "", "at least "), tf.strings.as_string(gif_frames),
            " frames) is not a radiograph"])),
    ], encoded)
    encoded = _after([
        _refuse_unless(~is_gif | walked, index, tf.strings.join([
            "GIF too fragmented to check (more than ", tf.strings.as_string(_gif_steps(length)),
            " blocks and runs of sub-blocks)"])),
        _refuse_unless(~is_gif | ~walked | (gif_frames > 0), index, "GIF without an image"),
    ], encoded)
    # A frame short of its screen Pillow places on the screen's background; the decoder returns the
    # frame alone. Refused rather than read otherwise than curation reads it.
    frame_fills_screen = tf.equal(gif_left, 0) & tf.equal(gif_top, 0) & (gif_width >= gif_screen[0]) & (
        gif_height >= gif_screen[1])
    encoded = _after([_refuse_unless(~is_gif | frame_fills_screen, index, tf.strings.join([
        "GIF frame (", tf.strings.as_string(gif_width), " x ", tf.strings.as_string(gif_height), " at ",
        tf.strings.as_string(gif_left), ", ", tf.strings.as_string(gif_top), ") does not fill its screen (",
        tf.strings.as_string(gif_screen[0]), " x ", tf.strings.as_string(gif_screen[1]), ")"]))], encoded)

    def as_sent():  # the Transform reads a grey PNG of up to 8 bits (a curated film) as curation does
        return tf.io.decode_image(encoded, channels=1, expand_animations=False), encoded

    def rewritten(grey):
        return grey, tf.io.encode_png(grey)

    def grey16_png():
        return rewritten(_stretched(tf.io.decode_png(encoded, channels=1, dtype=tf.uint16)))

    def colour_png():  # the Transform's grey conversion is libpng's, up to a grey level from Pillow's
        return rewritten(_luminance(tf.io.decode_png(encoded, channels=3)))

    def png_with_alpha():  # the Transform's decoder drops the alpha; curation puts the film over black
        return rewritten(_luminance(_over_black(tf.io.decode_png(encoded, channels=4))))

    def jpeg():
        # Pillow's (curation's) accurate integer IDCT, not TensorFlow's default fast one (up to 4 grey
        # levels apart); three channels then Pillow's luminance, as the one-channel decoder cannot
        # convert CMYK and converts colour otherwise than Pillow.
        return rewritten(_luminance(tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")))

    def gif():  # one frame, by the checks above; the Transform's decoder refuses one-channel GIF
        return rewritten(_luminance(tf.io.decode_gif(_without_transparency(encoded, gif_control))[0]))

    def bmp():  # the same: one-channel BMP refused; grey BMPs decode to one channel, colour to 3 or 4
        pixels = tf.io.decode_bmp(encoded)
        return rewritten(tf.cond(tf.equal(tf.shape(pixels)[2], 1), lambda: pixels[:, :, :1], lambda: _luminance(pixels)))

    grey, out = tf.case([(is_grey16_png, grey16_png), (has_alpha, png_with_alpha),
                         (is_colour_png, colour_png), (is_jpeg, jpeg), (is_gif, gif),
                         (is_bmp, bmp)], default=as_sent, exclusive=False)
    height, width = tf.shape(grey)[0], tf.shape(grey)[1]
    too_small = tf.strings.join(["image too small (", tf.strings.as_string(width), "x", tf.strings.as_string(height),
                                 f"; curation refuses fewer than {images.MIN_SIDE} pixels on a side)"])
    with tf.control_dependencies([
        _refuse_unless(tf.minimum(height, width) >= images.MIN_SIDE, index, too_small),
        _refuse_unless(tf.reduce_max(grey) > tf.reduce_min(grey), index, "blank image (a single grey level)"),
    ]):
        return tf.identity(out)


def served_images(encoded):
    """[N] images as sent -> [N] bytes for the Transform graph (`_served_image`); the request fails
    with the first bad image's index and reason."""
    encoded = tf.reshape(encoded, [-1])
    return tf.map_fn(lambda args: _served_image(*args), (tf.range(tf.size(encoded)), encoded),
                     fn_output_signature=tf.TensorSpec([], tf.string))


def _raw_image_spec(tf_transform_output) -> dict:
    """Only the image is needed to predict; labels and slicing features are not sent at serving."""
    spec = tf_transform_output.raw_feature_spec()
    return {features.IMAGE: spec[features.IMAGE]}


def export_serving_model(model, tf_transform_output, task: features.Task, threshold: float,
                         metadata: Mapping, export_dir: str, typicality_check=None) -> None:
    """Saves `model` with the three signatures and the metadata asset into `export_dir`.

    `typicality_check` (serving.typicality.tf_check): scores the films in place of `model` (the same
    layers, one pass) and adds the `atypicality` and `atypical` outputs."""
    model.tft_layer = tf_transform_output.transform_features_layer()  # tracked so it is saved
    if typicality_check is not None:
        model.typicality_check = typicality_check  # tracked: its features model and arrays are saved
    classes = tf.constant(task.classes)
    stored_threshold = tf.constant(float(threshold), tf.float32)

    def predict_from_raw(raw_features):
        raw_features = dict(raw_features, **{features.IMAGE: tf.reshape(served_images(raw_features[features.IMAGE]),
                                                                         [-1, 1])})
        transformed = model.tft_layer(raw_features)
        if typicality_check is not None:
            scores, atypicality = model.typicality_check(transformed[preprocessing.IMAGE_XF])
        else:
            scores = model(transformed[preprocessing.IMAGE_XF], training=False)
        if task.is_binary:
            covid = tf.reshape(scores, [-1])
            probabilities = tf.stack([1.0 - covid, covid], axis=1)
            label_index = tf.cast(covid > stored_threshold, tf.int64)
            gate = _recentred(covid, stored_threshold)
        else:
            probabilities = scores
            covid = probabilities[:, task.positive_index]
            label_index, gate = three_class_decision(probabilities, task.positive_index, stored_threshold)
        n = tf.shape(covid)[0]
        outputs = {
            PROBABILITIES_OUTPUT: probabilities,
            "covid_probability": covid,
            "label": tf.gather(classes, label_index),
            "label_index": label_index,
            "threshold": tf.fill([n], stored_threshold),
            GATE_OUTPUT: gate,
        }
        if typicality_check is not None:
            outputs[typicality.ATYPICALITY_OUTPUT] = atypicality
            outputs[typicality.ATYPICAL_OUTPUT] = atypicality > 1.0
        return outputs

    image_spec = _raw_image_spec(tf_transform_output)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(serialized):
        return predict_from_raw(tf.io.parse_example(serialized, image_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_images(image_bytes):
        return predict_from_raw({features.IMAGE: tf.reshape(image_bytes, [-1, 1])})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(serialized):
        raw_spec = tf_transform_output.raw_feature_spec()
        raw_spec.pop(features.LABEL_INDEX, None)
        raw_spec.pop(features.LABEL, None)
        return model.tft_layer(tf.io.parse_example(serialized, raw_spec))

    signatures = {
        EXAMPLES_SIGNATURE: serve_examples.get_concrete_function(),
        IMAGE_SIGNATURE: serve_images.get_concrete_function(),
        TRANSFORM_SIGNATURE: transform_features.get_concrete_function(),
    }
    model.save(export_dir, save_format="tf", signatures=signatures)
    assets = os.path.join(export_dir, "assets")
    tf.io.gfile.makedirs(assets)
    with tf.io.gfile.GFile(os.path.join(assets, model_metadata.ASSET), "w") as f:
        f.write(json.dumps(dict(metadata, task=task.name, classes=list(task.classes), threshold=float(threshold),
                                decision_rule=model_metadata.COVID_THRESHOLD_RULE),
                           indent=2, sort_keys=True, default=str))

