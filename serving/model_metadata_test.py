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
                          ({"task": ["three-class"]}, "'task' must be a task name, got ['three-class']")):
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


@pytest.mark.parametrize("metadata, applies, note", [
    (THREE_CLASS, False, "the predicted class is the argmax; the stored threshold is unused"),  # exported before the rule
    (dict(THREE_CLASS, decision_rule=model_metadata.COVID_THRESHOLD_RULE), True, "else the more probable other class"),
    ({"task": "covid-vs-normal", "classes": ["normal", "covid"], "threshold": 0.4}, True, "COVID probability > threshold"),
])
def test_decision_rule(metadata, applies, note):
    assert model_metadata.threshold_applies(metadata) is applies
    assert note in model_metadata.decision_note(metadata)
