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


def _subset_dir(path, serialized) -> str:
    """A test split holding `serialized` records in the given order (another curation's split of the same films)."""
    import tensorflow as tf

    path.mkdir()
    with tf.io.TFRecordWriter(str(path / "records-00000.tfrecord.gz"), options="GZIP") as writer:
        for raw in serialized:
            writer.write(raw)
    return str(path)


def test_across_splits_matches_films_by_their_image(error_overlap, binary_model, tmp_path, capsys):
    model = predict.load_model(binary_model.model_dir)
    data = ev.load_tfrecords(binary_model.data_dir)
    scores = np.asarray(model.predict_examples(data.serialized)["covid_probability"]).ravel()
    wrong = (scores > binary_model.threshold) != (data.labels == model.task.positive_index)
    # The second split holds every other film of the first, in reverse order: other record numbers, same pictures.
    shared = list(range(0, data.n, 2))[::-1]
    roots = [_fake_root(tmp_path / "a", binary_model),
             _fake_root(tmp_path / "b", binary_model,
                        data_dir=_subset_dir(tmp_path / "split-b", [data.serialized[i] for i in shared]))]
    assert wrong[shared].any() and wrong.sum() > wrong[shared].sum()  # the case this test is about
    assert len(set(data.images)) == data.n  # distinct pictures: matching by image is matching by film

    assert error_overlap.main(roots + ["--across-splits", "--json", "--out", str(tmp_path / "hard.png")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["distinct_films"] == data.n and summary["held_out_more_than_once"] == len(shared)
    assert [r["misclassified"] for r in summary["runs"]] == [wrong.sum(), wrong[shared].sum()]
    # The same model scores a picture the same in both splits: wrong twice exactly where it is wrong and shared.
    assert summary["wrong_of_held_out"] == {"2 of 2": int(wrong[shared].sum())}
    hard = summary["wrong_whenever_held_out"]
    assert sorted(e["index"] for e in hard) == sorted(np.flatnonzero(wrong)[np.isin(np.flatnonzero(wrong), shared)])
    assert all(e["held_out"] == 2 and e["covid_probability_per_run"] == pytest.approx([scores[e["index"]]] * 2)
               and e["runs"] == roots for e in hard)
    by_class = summary["errors_by_true_class"]
    assert sum(row["errors"] for row in by_class.values()) == wrong.sum() + wrong[shared].sum()
    assert sum(row["on_films_wrong_whenever_held_out"] for row in by_class.values()) == 2 * len(hard)
    assert Image.open(tmp_path / "hard.png").size[0] > 100

    assert error_overlap.main(roots + ["--across-splits"]) == 0
    table = capsys.readouterr().out
    assert f"wrong whenever held out: {len(hard)} films" in table
    assert f"2 of 2: {len(hard)}" in table
    with pytest.raises(SystemExit, match=r"error_overlap.py: .*b: its test split is not .*--across-splits"):
        error_overlap.main(roots)
    assert summary["note"] is None


def test_across_splits_notes_runs_without_a_common_film_and_refuses_mixed_tasks(
        error_overlap, binary_model, three_class_model, tmp_path, capsys):
    data = ev.load_tfrecords(binary_model.data_dir)
    halves = [_fake_root(tmp_path / name, binary_model, data_dir=_subset_dir(tmp_path / f"split-{name}", data.serialized[i::2]))
              for i, name in enumerate(("even", "odd"))]
    assert error_overlap.main(halves + ["--across-splits"]) == 0
    table = capsys.readouterr().out
    assert "note: no film was held out in two runs: films are matched by their curated image bytes" in table
    assert f"{data.n} distinct test films, 0 held out more than once" in table
    other_task = _fake_root(tmp_path / "three", three_class_model)
    with pytest.raises(SystemExit, match=r"error_overlap.py: .*three: a three-class model; .*even's is covid-vs-normal"):
        error_overlap.main([halves[0], other_task, "--across-splits"])
