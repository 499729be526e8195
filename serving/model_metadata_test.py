"""The metadata asset is read the same way from local and bucket paths; its decision rule is described."""
import json
import os
import re

import pytest
import tensorflow as tf

from covid_cxr.serving import model_metadata

THREE_CLASS = {"task": "three-class", "classes": ["normal", "pneumonia", "covid"], "threshold": 0.5}


def test_reads_the_asset_locally_and_through_tensorflow_file_systems(tmp_path):
    stored = dict(THREE_CLASS, decision_rule=model_metadata.COVID_THRESHOLD_RULE)
    local = tmp_path / "model"
    os.makedirs(local / "assets")
    (local / "assets" / model_metadata.ASSET).write_text(json.dumps(stored))
    assert model_metadata.read(str(local)) == stored
    assert model_metadata.read(str(tmp_path)) == {}  # not an export: nothing claimed
    (local / "assets" / model_metadata.ASSET).write_text("{truncated")
    with pytest.raises(ValueError, match=r"assets/covid_cxr.json: not a covid-cxr metadata file \(invalid JSON"):
        model_metadata.read(str(local))
    (local / "assets" / model_metadata.ASSET).write_text("[1, 2, 3]")  # JSON, but not the object it must be
    with pytest.raises(ValueError, match=r"covid_cxr.json: not a covid-cxr metadata file \(a JSON list where an object"):
        model_metadata.read(str(local))
    for edit, message in (({"classes": 5}, "'classes' must be a list of class names, got 5"),
                          ({"classes": ["normal", 1]}, "'classes' must be a list of class names, got ['normal', 1]"),
                          ({"curation": "x"}, "'curation' must be an object, got 'x'"),
                          ({"data_summary": [1]}, "'data_summary' must be an object, got [1]"),
                          ({"task": ["three-class"]}, "'task' must be a task name, got ['three-class']"),
                          # Present but empty or a bare string is still the wrong kind, not "absent".
                          ({"classes": "covid"}, "'classes' must be a list of class names, got 'covid'"),
                          ({"classes": 0}, "'classes' must be a list of class names, got 0"),
                          ({"curation": []}, "'curation' must be an object, got []")):
        (local / "assets" / model_metadata.ASSET).write_text(json.dumps({**stored, **edit}))
        with pytest.raises(ValueError, match=re.escape(f"covid_cxr.json: {message}")):
            model_metadata.read(str(local))
    (local / "assets" / model_metadata.ASSET).write_text(json.dumps(stored))

    remote = "ram://covid_cxr_metadata_test/model"  # TensorFlow's in-memory file system stands in for gs://
    tf.io.gfile.makedirs(remote + "/assets")
    with tf.io.gfile.GFile(model_metadata.asset_path(remote), "w") as f:
        f.write(json.dumps(stored))
    assert model_metadata.read(remote) == stored
    assert model_metadata.read("ram://covid_cxr_metadata_test/elsewhere") == {}


THREE_CLASS_ARGMAX_NOTE = "three-class: the predicted class is the argmax; the stored threshold is unused"
THREE_CLASS_RULE_NOTE = "COVID when its probability > the stored threshold, else the more probable other class"
BINARY_NOTE = "the model's stored decision threshold (COVID probability > threshold)"


@pytest.mark.parametrize("metadata, applies, note", [
    (THREE_CLASS, False, THREE_CLASS_ARGMAX_NOTE),  # exported before the rule
    (dict(THREE_CLASS, decision_rule=model_metadata.COVID_THRESHOLD_RULE), True, THREE_CLASS_RULE_NOTE),
    # The value already written into exported models' assets: renaming the constant would silently
    # turn every existing three-class export back into an argmax model.
    ({"classes": THREE_CLASS["classes"], "decision_rule": "covid_threshold"}, True, THREE_CLASS_RULE_NOTE),
    (dict(THREE_CLASS, decision_rule="argmax"), False, THREE_CLASS_ARGMAX_NOTE),  # another rule is not this one
    (dict(THREE_CLASS, decision_rule=None), False, THREE_CLASS_ARGMAX_NOTE),
    ({"task": "covid-vs-normal", "classes": ["normal", "covid"], "threshold": 0.4}, True, BINARY_NOTE),
])
def test_decision_rule(metadata, applies, note):
    assert model_metadata.threshold_applies(metadata) is applies
    assert model_metadata.decision_note(metadata) == note


def test_a_model_without_metadata_has_no_threshold_to_apply():
    assert model_metadata.threshold_applies({}) is False
    assert model_metadata.threshold_applies({"threshold": 0.5}) is False  # a threshold but no classes or rule


@pytest.mark.parametrize("version, text", [(3, "version 3"), (0, "version 0"),
                                           (None, "no push record, so no gate approval on file")])
def test_version_text_says_when_no_gate_approved_the_model(version, text):
    assert model_metadata.version_text(version) == text
