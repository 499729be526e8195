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


def test_the_same_model_twice_is_wrong_on_the_same_films(error_overlap, binary_model, tmp_path, capsys):
    roots = [_fake_root(tmp_path / name, binary_model) for name in ("a", "b")]
    gallery = tmp_path / "wrong.png"
    assert error_overlap.main(roots + ["--json", "--out", str(gallery)]) == 0
    summary = json.loads(capsys.readouterr().out)

    # Recomputed independently: the films the model calls wrong at its own stored threshold.
    model = predict.load_model(binary_model.model_dir)
    data = ev.load_tfrecords(binary_model.data_dir)
    scores = np.asarray(model.predict_examples(data.serialized)["covid_probability"]).ravel()
    wrong = np.flatnonzero((scores > binary_model.threshold) != (data.labels == model.task.positive_index))
    assert wrong.size > 0
    assert summary["test_films"] == data.n
    assert [r["misclassified"] for r in summary["runs"]] == [wrong.size, wrong.size]
    assert summary["films_by_runs_wrong"] == {"2": int(wrong.size)}
    persistent = summary["wrong_in_every_run"]
    assert sorted(e["index"] for e in persistent) == wrong.tolist()
    assert all(e["covid_probability_per_run"] == [e["covid_probability"]] * 2 for e in persistent)
    assert summary["gallery"] == str(gallery) and Image.open(gallery).size[0] > 100

    assert error_overlap.main(roots) == 0
    table = capsys.readouterr().out
    assert f"wrong in every run: {wrong.size}" in table and f"2 run(s): {wrong.size}" in table


def test_runs_on_different_test_films_or_no_run_are_one_line(error_overlap, binary_model, three_class_model, tmp_path):
    first = _fake_root(tmp_path / "a", binary_model)
    other = _fake_root(tmp_path / "b", binary_model, data_dir=three_class_model.data_dir)
    with pytest.raises(SystemExit, match=r"error_overlap.py: .*b: its test split is not .*a's"):
        error_overlap.main([first, other])
    with pytest.raises(SystemExit, match="error_overlap.py: .*no Trainer model or ImportExampleGen examples"):
        error_overlap.main([str(tmp_path / "empty")])
