"""Exports the trained Keras model as the SavedModel that Evaluator, Pusher and TF Serving use.

Signatures (all apply the training Transform graph, so serving cannot drift from training):
  serving_default     serialized tf.Example [N]   what TF Serving, TFMA and Vertex batch send
  predict_image       encoded PNG/JPEG bytes [N]  for clients with no TFX code (base64 over REST)
  transform_features  serialized tf.Example [N]   TFMA's preprocessing hook
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

from covid_cxr.data import features
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

