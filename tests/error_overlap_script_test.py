"""scripts/error_overlap.py on pipeline-root layouts built around the tiny test models."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from covid_cxr.evaluation import evaluate as ev
from covid_cxr.serving import predict, testing

binary_model = testing.tiny_model_fixture()
three_class_model = testing.tiny_model_fixture("three-class")


@pytest.fixture(scope="module")
def error_overlap(load_script):
    return load_script("error_overlap")


def _fake_root(root, tiny, data_dir=None) -> str:
    """Trainer/model/<id>/Format-Serving and ImportExampleGen/examples/<id>/Split-test, as TFX lays them out."""
    (root / "Trainer" / "model" / "3").mkdir(parents=True)
    os.symlink(tiny.model_dir, root / "Trainer" / "model" / "3" / "Format-Serving")
    (root / "ImportExampleGen" / "examples" / "1").mkdir(parents=True)
    os.symlink(data_dir or tiny.data_dir, root / "ImportExampleGen" / "examples" / "1" / "Split-test")
    return str(root)


class Rethresholded:
    """The same model cutting its COVID probability at another threshold: a second run that
    agrees on some films and not on others."""

    def __init__(self, model, threshold):
        self.model, self.task, self.threshold = model, model.task, threshold

    def predict_examples(self, serialized):
        outputs = dict(self.model.predict_examples(serialized))
        outputs["label_index"] = np.where(outputs["covid_probability"] > self.threshold, self.task.positive_index,
                                          1 - self.task.positive_index)
        return outputs


def test_films_wrong_in_one_run_or_in_both(error_overlap, binary_model, tmp_path, capsys, monkeypatch):
    roots = [_fake_root(tmp_path / name, binary_model) for name in ("a", "b")]
    model = predict.load_model(binary_model.model_dir)
    data = ev.load_tfrecords(binary_model.data_dir)
    scores = np.asarray(model.predict_examples(data.serialized)["covid_probability"]).ravel()
    covid = data.labels == model.task.positive_index
    second = float(np.quantile(scores, 0.3))
    real_load = predict.load_model
    monkeypatch.setattr(predict, "load_model", lambda path: Rethresholded(real_load(path), second)
                        if f"{os.sep}b{os.sep}" in path else real_load(path))

    gallery = tmp_path / "wrong.png"
    assert error_overlap.main(roots + ["--json", "--out", str(gallery)]) == 0
    summary = json.loads(capsys.readouterr().out)

    # Recomputed independently: each run's wrong films at its own threshold.
    wrong_a = set(np.flatnonzero((scores > binary_model.threshold) != covid).tolist())
    wrong_b = set(np.flatnonzero((scores > second) != covid).tolist())
    assert wrong_a & wrong_b and wrong_a ^ wrong_b  # the case this test is about
    assert summary["test_films"] == data.n
    assert [r["misclassified"] for r in summary["runs"]] == [len(wrong_a), len(wrong_b)]
    assert [r["threshold"] for r in summary["runs"]] == pytest.approx([binary_model.threshold, second])
    assert summary["films_by_runs_wrong"] == {"1": len(wrong_a ^ wrong_b), "2": len(wrong_a & wrong_b)}
    persistent = summary["wrong_in_every_run"]
    assert {e["index"] for e in persistent} == wrong_a & wrong_b
    # In the first run's order: farthest from its threshold (log-odds) first.
    distance = [abs(np.log(e["covid_probability"] / (1 - e["covid_probability"]))
                    - np.log(binary_model.threshold / (1 - binary_model.threshold))) for e in persistent]
    assert distance == pytest.approx(sorted(distance, reverse=True))
    assert all(e["covid_probability_per_run"] == pytest.approx([scores[e["index"]]] * 2) for e in persistent)
    assert summary["gallery"] == str(gallery) and Image.open(gallery).size[0] > 100

    assert error_overlap.main(roots) == 0
    table = capsys.readouterr().out
    assert f"wrong in every run: {len(wrong_a & wrong_b)}" in table
    assert f"1 run(s): {len(wrong_a ^ wrong_b)}, 2 run(s): {len(wrong_a & wrong_b)}" in table
    with pytest.raises(SystemExit, match="error_overlap.py: .*No such file or directory"):
        error_overlap.main(roots + ["--out", str(tmp_path / "missing" / "wrong.png")])


def test_runs_on_different_test_films_or_no_run_are_one_line(error_overlap, binary_model, three_class_model, tmp_path):
    first = _fake_root(tmp_path / "a", binary_model)
    other = _fake_root(tmp_path / "b", binary_model, data_dir=three_class_model.data_dir)
    with pytest.raises(SystemExit, match=r"error_overlap.py: .*b: its test split is not .*a's"):
        error_overlap.main([first, other])
    with pytest.raises(SystemExit, match="error_overlap.py: .*no Trainer model or ImportExampleGen examples"):
        error_overlap.main([str(tmp_path / "empty")])
