"""scripts/attention_audit.py on a tiny convolutional model and its curated TFRecords."""
import json

import numpy as np
import pytest

from covid_cxr.evaluation import attention_audit
from covid_cxr.evaluation import evaluate as ev
from covid_cxr.serving import explain, predict, testing

binary_model = testing.tiny_model_fixture()


@pytest.fixture(scope="module")
def attention(load_script):
    return load_script("attention_audit")


def test_every_film_is_measured_on_its_predicted_classs_grad_cam(attention, binary_model, capsys):
    assert attention.main(["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == explain.GRAD_CAM and result["target"] == "conv2"
    # Recomputed film by film: the map of the class the served model predicts, not of the true class.
    model = predict.load_model(binary_model.serving_dir)
    data = ev.load_tfrecords(binary_model.data_dir)
    predicted = model.predict_examples(data.serialized)["label_index"]
    explainer = explain.Explainer(model)
    shares = {name: [] for name in model.classes}
    for image, label, index in zip(data.images, data.labels, predicted):
        heat, _ = explainer.heatmap(model.transform_images([image])[0], int(index))
        shares[model.classes[label]].append(attention_audit.border_share(heat))
    for name, values in shares.items():
        entry = result["per_true_class"][name]
        assert entry["films"] == len(values) == int(np.sum(data.labels == model.classes.index(name)))
        measured = [v for v in values if v is not None]
        assert entry["blank_maps"] == len(values) - len(measured)
        assert entry["border_share"]["value"] == pytest.approx(np.mean(measured), abs=1e-6)
    assert result["band_area_share"] == pytest.approx(attention_audit.band_area_share(testing.TINY_IMAGE_SIZE))


def test_limit_keeps_the_first_films_of_each_class_and_prints_a_line_per_class(attention, binary_model, capsys):
    assert attention.main(["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--limit", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("heat maps by grad-cam (conv2)") and out[1].startswith("outer 15% band: ")
    per_class = [line for line in out[2:] if line.startswith("  ") and not line.startswith(("    ", "  called "))]
    assert sorted(line.split(":")[0].strip() for line in per_class) == sorted(predict.load_model(
        binary_model.serving_dir).classes)
    assert all(": 2 films: border share " in line for line in per_class)
    # Then the films by the class the model called them, and each source's films of each class.
    called = [line for line in out[2:] if line.startswith("  called ")]
    assert called and sum(int(line.split(": ")[1].split()[0]) for line in called) == 2 * len(per_class)
    by_source = out[2 + len(per_class) + len(called):]
    assert by_source and all(line.startswith("    synthetic-") for line in by_source)
    assert attention._per_class_limit(np.array([1, 0, 1, 1, 0]), 1).tolist() == [0, 1]


def test_bad_arguments_are_one_line(attention, binary_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        attention.main(["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--limit", "0"])
    assert exit_info.value.code == 2 and "--limit must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=f"^attention_audit.py: .*no ImportExampleGen test split under '{tmp_path}'"):
        attention.main(["--model", binary_model.serving_dir, "--pipeline-root", str(tmp_path)])
    with pytest.raises(SystemExit, match="^attention_audit.py: pass --data DIR, or --pipeline-root DIR"):
        attention.main(["--model", binary_model.serving_dir])
    with pytest.raises(SystemExit, match=f"^attention_audit.py: no TFRecords in '{tmp_path}': .* evaluate --attention$"):
        attention.main(["--model", binary_model.serving_dir, "--data", str(tmp_path)])
