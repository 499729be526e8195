"""`covid-cxr predict` and the exported SavedModel's signatures, on a real (tiny) exported model."""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import click
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from covid_cxr import cli
from covid_cxr.data import dicom, features, images
from covid_cxr.data import testing as data_testing
from covid_cxr.evaluation import artifacts
from covid_cxr.serving import explain, model_metadata, predict, testing, typicality

binary_model = testing.tiny_model_fixture()
dense_model = testing.tiny_model_fixture(conv=False)
three_class_model = testing.tiny_model_fixture("three-class")

SIIM_MONO2 = data_testing.REAL_DATA / "dicom-samples" / "siim-cr-chest-pa-jpeg-baseline.dcm"
SIIM_MONO1 = data_testing.REAL_DATA / "dicom-samples" / "siim-cr-chest-pa-monochrome1.dcm"


def _first_records(model, n=3):
    records = testing.read_records(model.data_dir)[:n]
    pngs = [tf.train.Example.FromString(r).features.feature["image"].bytes_list.value[0] for r in records]
    return records, pngs


def _write_pngs(model, directory, n=3):
    _, pngs = _first_records(model, n)
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, png in enumerate(pngs):
        path = os.path.join(directory, f"film{i}.png")
        with open(path, "wb") as f:
            f.write(png)
        paths.append(path)
    return paths


def _run(args):
    result = CliRunner().invoke(predict.predict_command, args, catch_exceptions=False)
    return result


def test_both_signatures_give_the_same_answer(binary_model):
    model = predict.load_model(binary_model.serving_dir)
    records, pngs = _first_records(binary_model, 5)
    by_example = model.predict_examples(records)
    by_image = model.predict_images(pngs)
    for key in ("probabilities", "covid_probability", "gate_score", "threshold"):
        np.testing.assert_allclose(by_example[key], by_image[key], atol=1e-6)
    assert by_example["label"].tolist() == by_image["label"].tolist()
    assert np.allclose(by_image["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(by_image["threshold"], binary_model.threshold)


def test_saved_model_answers_without_covid_cxr(binary_model, tmp_path):
    """A client with only TensorFlow: covid_cxr imports are blocked and must not be needed."""
    _, pngs = _first_records(binary_model, 2)
    image_path = tmp_path / "film.png"
    image_path.write_bytes(pngs[0])
    script = textwrap.dedent(f"""
        import sys

        class Block:  # the venv's editable install would otherwise make covid_cxr importable
            def find_spec(self, name, path=None, target=None):
                if name == "covid_cxr" or name.startswith("covid_cxr."):
                    raise ImportError("covid_cxr is blocked in this client")
                return None

        sys.meta_path.insert(0, Block())
        import json
        import tensorflow as tf

        model = tf.saved_model.load({binary_model.version_dir!r})
        image = open({str(image_path)!r}, "rb").read()
        out = model.signatures["predict_image"](image_bytes=tf.constant([image]))
        print(json.dumps({{"label": out["label"].numpy()[0].decode(),
                          "covid": float(out["covid_probability"].numpy()[0]),
                          "covid_cxr_loaded": any(m.startswith("covid_cxr") for m in sys.modules)}}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = predict.load_model(binary_model.version_dir).predict_images([pngs[0]])
    assert answer["covid_cxr_loaded"] is False
    assert answer["label"] == expected["label"][0].decode()
    assert answer["covid"] == pytest.approx(float(expected["covid_probability"][0]), abs=1e-6)


def _resolved(path: str) -> tuple:
    """(SavedModel directory, version) as load_model finds them, without loading."""
    model_dir = predict.saved_model_dir(path)
    return model_dir, predict.version_of(model_dir, predict.read_push_record(model_dir))


def test_model_resolution(binary_model, tmp_path):
    assert _resolved(binary_model.serving_dir) == (binary_model.version_dir, binary_model.version)
    assert _resolved(binary_model.version_dir) == (binary_model.version_dir, binary_model.version)
    assert _resolved(binary_model.model_dir) == (binary_model.model_dir, None)
    artifact = tmp_path / "Trainer" / "model" / "7"
    os.makedirs(artifact)
    os.symlink(binary_model.model_dir, artifact / "Format-Serving")
    assert _resolved(str(artifact)) == (str(artifact / "Format-Serving"), None)
    with pytest.raises(predict.ModelNotFound):
        _resolved(str(tmp_path / "missing"))
    with pytest.raises(predict.ModelNotFound):
        _resolved(str(tmp_path))
    with pytest.raises(predict.ModelNotFound, match=r"^'gs://b/serving' is not a local directory: predict and evaluate"):
        _resolved("gs://b/serving")


def test_a_stored_threshold_that_is_not_a_number_is_named(binary_model, tmp_path):
    copy = shutil.copytree(binary_model.model_dir, tmp_path / "m")
    asset = copy / "assets" / "covid_cxr.json"
    asset.write_text(json.dumps(dict(json.loads(asset.read_text()), threshold="high")))
    result = CliRunner().invoke(cli.main, ["predict", "--model", str(copy), *_write_pngs(binary_model, str(tmp_path / "in"), 1)])
    assert result.exit_code == 2
    assert "covid_cxr.json: the stored threshold 'high' is not a number" in result.output
    assert len(result.output.strip().splitlines()) == 1
    # JSON true is no threshold either (Python would read it as 1.0: nothing ever called COVID)
    asset.write_text(json.dumps(dict(json.loads(asset.read_text()), threshold=True)))
    result = CliRunner().invoke(cli.main, ["predict", "--model", str(copy), *_write_pngs(binary_model, str(tmp_path / "in"), 1)])
    assert result.exit_code == 2 and "the stored threshold True is not a number" in result.output


def test_a_damaged_model_is_one_line_that_says_what_is_wrong(binary_model, tmp_path):
    copy = shutil.copytree(binary_model.model_dir, tmp_path / "m")
    (copy / "saved_model.pb").write_bytes(b"cut short")
    result = CliRunner().invoke(cli.main, ["predict", "--model", str(copy), *_write_pngs(binary_model, str(tmp_path / "in"), 1)])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert re.search(re.escape(f"cannot load the SavedModel in '{copy}': ") + r"\w+Error: \S", line), line  # type and why


def test_newest_version_is_used(binary_model, tmp_path):
    serving = tmp_path / "serving"
    testing.push_copy(binary_model.model_dir, str(serving), 5)
    testing.push_copy(binary_model.model_dir, str(serving), 12)
    os.makedirs(serving / ".staging-99")
    os.makedirs(serving / "100")  # an empty (half-pushed) version is not a model
    model = predict.load_model(str(serving))
    assert model.version == 12 and model.path == str(serving / "12")


def test_a_model_never_pushed_is_warned_about_on_stderr_whatever_the_output(binary_model, tmp_path):
    inputs = _write_pngs(binary_model, str(tmp_path / "in"), 1)
    runner = CliRunner(mix_stderr=False)
    result = runner.invoke(cli.main, ["predict", "--model", binary_model.model_dir, "--json", *inputs])
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads(result.stdout)["model"]["version"] is None  # the JSON stays JSON
    assert result.stderr.splitlines() == [
        f"covid-cxr: warning: model {binary_model.model_dir}: no push record, so no gate approval on file (a Trainer "
        "artifact or a bare export, e.g. a model the gate refused); for results to rely on, use a pushed version "
        "(<serving_dir>/<version>/)"]
    assert len(result.stderr) < 300 + len(binary_model.model_dir)
    result = runner.invoke(cli.main, ["predict", "--model", binary_model.version_dir, *inputs])
    assert result.exit_code == 0 and result.stderr == "", result.stderr  # a pushed version: no warning


def test_an_unpushed_artifact_the_gate_blessed_is_named_so_without_the_warning(binary_model, tmp_path, monkeypatch):
    artifact = tmp_path / "root" / "Trainer" / "model" / "9"
    os.makedirs(artifact)
    os.symlink(binary_model.model_dir, artifact / "Format-Serving")
    record = tmp_path / "root" / "VersionedPusher" / "pushed_model" / "12" / "covid_cxr_decision.json"
    os.makedirs(record.parent)
    record.write_text(json.dumps({"blessed": True, "failures": [], "model_uri": str(artifact)}))
    inputs = _write_pngs(binary_model, str(tmp_path / "in"), 1)
    reads = []
    monkeypatch.setattr(artifacts, "gate_decision", lambda uri, read=artifacts.gate_decision: reads.append(uri) or read(uri))
    result = CliRunner(mix_stderr=False).invoke(cli.main, ["predict", "--model", str(artifact), *inputs])
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    assert len(reads) == 1  # one read for the warning and the header
    assert f"Format-Serving (not pushed; the run's gate decided BLESSED (record: {record}), task " in \
        result.stdout.splitlines()[0]
    # The artifact of a model the run pushed: where it is served, not "not pushed".
    record.write_text(json.dumps({"blessed": True, "failures": [], "model_uri": str(artifact),
                                  "pushed": True, "pushed_destination": "/srv/cvn/17"}))
    result = CliRunner(mix_stderr=False).invoke(cli.main, ["predict", "--model", str(artifact), *inputs])
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    assert f"Format-Serving (served as /srv/cvn/17; the run's gate decided BLESSED (record: {record}), task " in \
        result.stdout.splitlines()[0]
    record.write_text(json.dumps({"blessed": False, "failures": ["too few"], "model_uri": str(artifact)}))
    result = CliRunner(mix_stderr=False).invoke(cli.main, ["predict", "--model", str(artifact), *inputs])
    assert "(no push record, so no gate approval on file, task " in result.stdout.splitlines()[0]
    assert result.stderr.startswith("covid-cxr: warning: model "), result.stderr


def test_predict_json_fields(binary_model, tmp_path):
    paths = _write_pngs(binary_model, str(tmp_path / "in"), n=len(testing.read_records(binary_model.data_dir)))
    result = _run(["--model", binary_model.serving_dir, "--json", str(tmp_path / "in")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["errors"] == []
    assert out["model"]["version"] == binary_model.version and out["model"]["task"] == "covid-vs-normal"
    assert [p["file"] for p in out["predictions"]] == sorted(paths)  # a directory is read in sorted order
    for p in out["predictions"]:
        assert set(p) >= {"file", "label", "probabilities", "covid_probability", "threshold", "model_version"}
        assert set(p["probabilities"]) == {"normal", "covid"}
        assert p["probabilities"]["covid"] == pytest.approx(p["covid_probability"])
        assert p["label"] == ("covid" if p["covid_probability"] > p["threshold"] else "normal")
        assert p["model_version"] == binary_model.version
        assert p["threshold"] == pytest.approx(binary_model.threshold)
    assert {p["label"] for p in out["predictions"]} == {"covid", "normal"}  # the rule is seen deciding both ways


def test_table_output(binary_model, tmp_path):
    _write_pngs(binary_model, str(tmp_path / "in"), n=2)
    result = _run(["--model", binary_model.version_dir, str(tmp_path / "in")])
    assert result.exit_code == 0, result.output
    assert "P(covid)" in result.output and "film1.png" in result.output
    assert "2 predicted, 0 failed" in result.output
    assert "SYNTHETIC" not in result.output  # the fixture's metadata holds no curation summary


def test_a_model_trained_on_the_demos_synthetic_images_says_so_before_any_label(binary_model, tmp_path):
    copy = shutil.copytree(binary_model.model_dir, tmp_path / "m")
    asset = copy / "assets" / "covid_cxr.json"
    asset.write_text(json.dumps(dict(json.loads(asset.read_text()), data_summary={"synthetic": True})))
    result = CliRunner(mix_stderr=False).invoke(cli.main, ["predict", "--model", str(copy),
                                                           *_write_pngs(binary_model, str(tmp_path / "in"), 1)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == ("WARNING: this model was trained on SYNTHETIC images (the demo): its "
                                             "labels say nothing about radiographs")
    # --json said nothing of it: a script's log gets it on stderr, whatever the output.
    result = CliRunner(mix_stderr=False).invoke(cli.main, ["predict", "--model", str(copy), "--json",
                                                           *_write_pngs(binary_model, str(tmp_path / "in"), 1)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["predictions"]  # the JSON stays JSON
    assert (f"covid-cxr: warning: model {copy}: this model was trained on SYNTHETIC images (the demo): its labels "
            "say nothing about radiographs") in result.stderr.splitlines(), result.stderr


def test_inputs_unlike_the_training_films_are_flagged_not_relabelled(binary_model, dense_model, tmp_path):
    model = predict.load_model(binary_model.serving_dir)
    _, pngs = _first_records(binary_model, n=len(testing.read_records(binary_model.data_dir)))
    served = model.predict_images(pngs)
    # The check was fitted on these very films, its threshold at their 0.8 quantile: the films it
    # counted above it then are the ones the served graph flags.
    assert model.metadata["typicality"]["eval_atypical"] == int(served["atypical"].sum()) >= 1
    assert model.metadata["typicality"]["quantile"] == testing.TINY_ATYPICAL_QUANTILE
    np.testing.assert_array_equal(served["atypical"], served["atypicality"] > 1)
    # A picture the model never saw anything like: a smooth diagonal ramp, no chest in it.
    _write_pngs(binary_model, str(tmp_path / "in"), n=2)
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8) * 2
    with open(tmp_path / "in" / "zz-ramp.png", "wb") as f:
        f.write(images.encode_png(ramp))
    out = json.loads(_run(["--model", binary_model.serving_dir, "--json", str(tmp_path / "in")]).output)
    rows = {os.path.basename(p["file"]): p for p in out["predictions"]}
    assert rows["zz-ramp.png"]["atypical"] and rows["zz-ramp.png"]["atypicality"] > 2
    assert rows["zz-ramp.png"]["label"] in ("covid", "normal")  # still scored: the flag never changes the label
    assert all(r["atypical"] == (r["atypicality"] > 1) for r in rows.values())
    table = _run(["--model", binary_model.serving_dir, str(tmp_path / "in")]).output
    assert "atypicality" in table and "ATYPICAL: far from the training films (by design, so are about 20% of ordinary" in table
    assert [line for line in table.splitlines() if "zz-ramp.png" in line][0].endswith("ATYPICAL")
    # A model exported without the check (no pooled features) answers as before.
    plain = json.loads(_run(["--model", dense_model.serving_dir, "--json", str(tmp_path / "in")]).output)
    assert not any("atypical" in p or "atypicality" in p for p in plain["predictions"])
    assert "atypicality" not in _run(["--model", dense_model.serving_dir, str(tmp_path / "in")]).output


def test_three_class_table_names_the_decision_the_model_serves(three_class_model, tmp_path):
    paths = _write_pngs(three_class_model, str(tmp_path / "in"), n=2)
    result = _run(["--model", three_class_model.version_dir, *paths])
    assert result.exit_code == 0, result.output
    assert f"task three-class, COVID threshold {three_class_model.threshold:.4f})" in result.output
    # A three-class model exported before its COVID threshold served the argmax: it must not claim one.
    old = testing.argmax_era_copy(three_class_model.version_dir, str(tmp_path / "old"))
    assert predict.load_model(old).threshold is None
    result = _run(["--model", old, *paths])
    assert result.exit_code == 0, result.output
    assert "task three-class, no COVID threshold: label = most probable class)" in result.output


def test_a_film_curation_refuses_is_refused_not_scored(binary_model, tmp_path):
    """A CT slice or a lateral film would get a confident COVID probability from a frontal-film model."""
    film = data_testing.radiograph(5)
    paths = [str(data_testing.write_dicom(tmp_path / "ct.dcm", film, modality="CT")),
             str(data_testing.write_dicom(tmp_path / "lateral.dcm", film, view="LL")),
             str(data_testing.write_dicom(tmp_path / "pa.dcm", film))]
    result = _run(["--model", binary_model.serving_dir, "--json", *paths])
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert [p["file"] for p in out["predictions"]] == [paths[2]]
    assert {os.path.basename(e["file"]): e["error"] for e in out["errors"]} == {
        "ct.dcm": "refused as curation refuses it: not an X-ray: CT",
        "lateral.dcm": "refused as curation refuses it: lateral view: DICOM ViewPosition"}


def test_unreadable_inputs_are_reported_per_file(binary_model, tmp_path):
    good = _write_pngs(binary_model, str(tmp_path / "in"), n=1)[0]
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "blank.png").write_bytes(images.encode_png(np.full((64, 64), 7, np.uint8)))
    os.makedirs(tmp_path / "empty")
    args = ["--model", binary_model.serving_dir, "--json", str(tmp_path / "in"), str(tmp_path / "notes.txt"),
            str(tmp_path / "blank.png"), str(tmp_path / "empty"), str(tmp_path / "nope.png")]
    result = _run(args)
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert [p["file"] for p in out["predictions"]] == [good]
    errors = {os.path.basename(e["file"]): e["error"] for e in out["errors"]}
    assert set(errors) == {"broken.png", "notes.txt", "blank.png", "empty", "nope.png"}
    assert "cannot decode image" in errors["broken.png"]
    assert "blank" in errors["blank.png"]
    assert "no image files" in errors["empty"]
    assert "no such file" in errors["nope.png"]
    assert "Traceback" not in result.output
    table = _run([a for a in args if a != "--json"])
    assert table.exit_code == 1 and "ERROR: cannot decode image" in table.output


def test_a_folder_that_cannot_be_listed_is_its_inputs_error_not_the_whole_commands(tmp_path, monkeypatch):
    # An unreadable file is one row's error; so is a given folder with a sub-folder that cannot be read
    # (it stopped every other input's prediction). Tests may run as root, whom chmod 000 does not stop.
    data_testing.write_image(tmp_path / "in" / "a.png", data_testing.radiograph(1))
    (tmp_path / "in" / "locked").mkdir()
    data_testing.write_image(tmp_path / "other" / "b.png", data_testing.radiograph(2))
    data_testing.refuse_listing(monkeypatch, "locked")
    found = predict.find_inputs([str(tmp_path / "in"), str(tmp_path / "other")])
    assert found.files == [str(tmp_path / "other" / "b.png")]
    assert [e.to_dict() for e in found.errors] == [
        {"file": str(tmp_path / "in"), "error": f"cannot read folder '{tmp_path / 'in' / 'locked'}': Permission denied"}]


def test_what_a_walked_folder_holds_besides_images_is_listed_or_counted(binary_model, tmp_path):
    good = _write_pngs(binary_model, str(tmp_path / "in"), n=1)[0]
    (tmp_path / "in" / "README.txt").write_text("notes")
    (tmp_path / "in" / ".hidden.png").write_bytes(open(good, "rb").read())
    os.makedirs(tmp_path / "in" / "__MACOSX")
    result = _run(["--model", binary_model.serving_dir, "--json", str(tmp_path / "in")])
    assert result.exit_code == 0, result.output  # nothing failed: the extras were passed over, and said so
    out = json.loads(result.output)
    assert [p["file"] for p in out["predictions"]] == [good]
    assert out["skipped"] == [{"file": str(tmp_path / "in" / "README.txt"), "error": "not an image file"}]
    assert out["hidden_skipped"] == 2
    table = _run(["--model", binary_model.serving_dir, str(tmp_path / "in")])
    assert "1 predicted, 0 failed; skipped 1 files that are not images and 2 hidden files or folders" in table.output
    assert table.output.strip().splitlines()[-1] == f"skipped, not an image: {tmp_path / 'in' / 'README.txt'}"
    if hasattr(os, "mkfifo"):  # one that is not a regular file says why
        with data_testing.fifo(tmp_path / "in" / "scan.png") as pipe:
            table = _run(["--model", binary_model.serving_dir, str(tmp_path / "in")])
        assert table.exit_code == 0, table.output
        assert "skipped 2 files that are not images or not regular files and 2 hidden" in table.output
        assert table.output.strip().splitlines()[-1] == f"skipped, not a regular file: a named pipe (FIFO): {pipe}"


def test_a_linked_sub_folder_is_walked(tmp_path):
    data_testing.write_image(tmp_path / "elsewhere" / "a.png", data_testing.radiograph(1))
    (tmp_path / "in").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "in" / "linked")
    os.symlink(tmp_path / "in", tmp_path / "in" / "linked-loop")
    inputs = predict.find_inputs([str(tmp_path / "in")])
    assert inputs.files == [str(tmp_path / "in" / "linked" / "a.png")] and not inputs.errors and not inputs.skipped


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_in_a_walked_folder_is_skipped_with_its_reason_unopened(tmp_path):
    data_testing.write_image(tmp_path / "in" / "a.png", data_testing.radiograph(1))
    with data_testing.fifo(tmp_path / "in" / "b.png") as pipe:
        inputs = predict.find_inputs([str(tmp_path / "in")])
        given = predict.find_inputs([pipe])  # named on the command line
    assert inputs.files == [str(tmp_path / "in" / "a.png")] and not inputs.errors
    assert [e.to_dict() for e in inputs.skipped] == [{"file": pipe, "error": "not a regular file: a named pipe (FIFO)"}]
    assert not given.files and [e.to_dict() for e in given.errors] == [
        {"file": pipe, "error": "not a regular file: a named pipe (FIFO)"}]


def test_bad_model_dir_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(predict.predict_command, ["--model", str(tmp_path), str(tmp_path)])
    assert result.exit_code == 2
    assert "no SavedModel" in result.output


def test_monochrome1_and_monochrome2_twins_get_the_same_prediction(binary_model, tmp_path):
    """The same film stored MONOCHROME2 and as MONOCHROME1 (inverted stored values) is one picture."""
    film = data_testing.radiograph(3, size=(180, 150), border=12)
    mono2 = data_testing.write_dicom(tmp_path / "m2.dcm", film, photometric="MONOCHROME2")
    mono1 = data_testing.write_dicom(tmp_path / "m1.dcm", 255 - film, photometric="MONOCHROME1")
    png = data_testing.write_image(tmp_path / "film.png", film)
    result = _run(["--model", binary_model.serving_dir, "--json", mono2, mono1, png])
    assert result.exit_code == 0, result.output
    p = json.loads(result.output)["predictions"]
    assert p[0]["probabilities"] == p[1]["probabilities"] == p[2]["probabilities"]
    assert p[0]["label"] == p[1]["label"]


def test_explain_writes_grad_cam_overlays(binary_model, tmp_path):
    _write_pngs(binary_model, str(tmp_path / "a"), n=2)
    _write_pngs(binary_model, str(tmp_path / "b"), n=1)  # same file names in another folder
    out_dir = tmp_path / "explain"
    result = _run(["--model", binary_model.serving_dir, "--json", "--explain", str(out_dir),
                   str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.output)["predictions"]
    files = [p["explanation"] for p in predictions]
    assert [os.path.basename(f) for f in files] == ["film0.heatmap.png", "film1.heatmap.png", "film0-2.heatmap.png"]
    for p in predictions:
        assert p["explanation_method"] == explain.GRAD_CAM
        assert os.path.getsize(p["explanation"]) > 1000
        overlay = images.decode_png(open(p["explanation"], "rb").read())
        assert overlay.ndim == 2 and overlay.shape[0] > 32


def test_grad_cam_target_and_saliency_fallback(binary_model, dense_model):
    conv = explain.Explainer(predict.load_model(binary_model.serving_dir))
    assert conv.method == explain.GRAD_CAM and conv.target_layer == "conv2"
    dense = explain.Explainer(predict.load_model(dense_model.serving_dir))
    assert dense.method == explain.SALIENCY and dense.target_layer is None
    _, pngs = _first_records(dense_model, 1)
    xf = dense.serving_model.transform_images(pngs)
    heat, method = dense.heatmap(xf[0], 1)
    assert method == explain.SALIENCY and heat.shape == xf.shape[1:3]
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert heat.max() > 0.5 and heat.std() > 0.01  # a map, not a blank and heat.max() > 0


def test_grad_cam_heatmap_matches_model_size(binary_model):
    explainer = explain.Explainer(predict.load_model(binary_model.serving_dir))
    _, pngs = _first_records(binary_model, 1)
    xf = explainer.serving_model.transform_images(pngs)
    assert xf.shape == (1, testing.TINY_IMAGE_SIZE, testing.TINY_IMAGE_SIZE, 1)
    heat, method = explainer.heatmap(xf[0], 1)
    assert method == explain.GRAD_CAM and heat.shape == (testing.TINY_IMAGE_SIZE,) * 2
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert heat.max() > 0.5 and heat.std() > 0.01  # a map, not a blank


@pytest.mark.realdata
@pytest.mark.skipif(not SIIM_MONO2.exists(), reason=data_testing.REAL_DATA_REASON)
def test_real_monochrome1_sample_is_read_as_monochrome1(binary_model, tmp_path):
    """The shared SIIM pair: predictions follow the pictures a correct DICOM reader shows.

    ``siim-cr-chest-pa-monochrome1.dcm`` is torchxrayvision's ``Fake_MONOHR1.dcm``: byte-identical
    to ``siim-cr-chest-pa-jpeg-baseline.dcm`` except the Photometric Interpretation tag (stored
    pixels NOT inverted). A correct reader therefore shows its negative, and no correct pipeline
    can give both files the same prediction. What must hold, and is tested here:
    * the MONOCHROME1 tag is honoured: the sample reads as exactly 255 - the MONOCHROME2 picture,
      and predicts exactly like that negative picture given as a PNG;
    * a genuine MONOCHROME1 twin of the real film (stored values inverted, tag MONOCHROME1) reads
      as the same picture and gets the same prediction as the JPEG Baseline MONOCHROME2 original.
    """
    mono2 = dicom.read_dicom(str(SIIM_MONO2)).pixels
    mono1 = dicom.read_dicom(str(SIIM_MONO1)).pixels
    np.testing.assert_array_equal(mono1, 255 - mono2)

    twin = data_testing.write_dicom(tmp_path / "siim-true-monochrome1.dcm", 255 - mono2, photometric="MONOCHROME1")
    negative = data_testing.write_image(tmp_path / "siim-negative.png", 255 - mono2)
    result = _run(["--model", binary_model.serving_dir, "--json", str(SIIM_MONO2), twin, str(SIIM_MONO1), negative])
    assert result.exit_code == 0, result.output
    original, true_twin, sample, negative_png = json.loads(result.output)["predictions"]
    assert true_twin["probabilities"] == original["probabilities"]
    assert true_twin["label"] == original["label"]
    assert sample["probabilities"] == negative_png["probabilities"]


def test_preparation_follows_the_curation_settings_in_the_metadata():
    assert predict.Preparation.from_metadata({}) == predict.Preparation(512, True, "none")
    for bad in ({"equalize": "bogus"}, {"max_side": "big"}, {"max_side": 4}):
        with pytest.raises(ValueError, match="curation settings that cannot be repeated"):
            predict.Preparation.from_metadata({"curation": bad})
    summary = {"data_summary": {"settings": {"max_side": 256, "crop": False, "equalize": "clahe"}}}
    assert predict.Preparation.from_metadata(summary) == predict.Preparation(256, False, "clahe")
    assert predict.Preparation.from_metadata(summary, max_side=300, equalization="none") == \
        predict.Preparation(300, False, "none")


def test_saliency_from_the_plain_saved_model_when_tf_keras_cannot_load_it(binary_model):
    explainer = explain.Explainer(predict.load_model(binary_model.serving_dir))
    explainer._ready, explainer.load_error = True, "simulated"  # as if tf_keras.load_model had failed
    _, pngs = _first_records(binary_model, 1)
    heat, method = explainer.heatmap(explainer.serving_model.transform_images(pngs)[0], 0)
    assert method == explain.SALIENCY and heat.shape == (testing.TINY_IMAGE_SIZE,) * 2 and heat.max() > 0


def test_falling_back_to_saliency_says_why(binary_model, monkeypatch, caplog):
    import tf_keras

    def refuse(*args, **kwargs):
        raise ValueError("Unknown layer: 'SomethingCustom'\nmore detail")

    monkeypatch.setattr(tf_keras.models, "load_model", refuse)
    explainer = explain.Explainer(predict.load_model(binary_model.serving_dir))
    with caplog.at_level("WARNING", logger=explain.__name__):
        assert explainer.method == explain.SALIENCY
    assert explainer.load_error == "ValueError"
    assert "gradient saliency, not Grad-CAM: the model did not load as Keras (ValueError: Unknown layer: " \
           "'SomethingCustom')" in caplog.text


def test_heat_map_names_are_unique_even_against_a_numbered_input():
    names = explain.output_names(["x/a.png", "y/a.png", "z/a-2.png", "w/A.PNG", "v/", "odd name!.jpg"])
    assert names == ["a.heatmap.png", "a-2.heatmap.png", "a-2-2.heatmap.png", "A-3.heatmap.png", "v.heatmap.png",
                     "odd_name_.heatmap.png"]


def test_a_dicom_heat_map_is_not_named_by_its_file(tmp_path):
    """Hospital exports name DICOM files by patient name, id and date: the heat map, an artifact that
    gets shared, is named by the file's position instead (the table says which row's it is)."""
    film = data_testing.radiograph(1, size=(96, 96))
    no_extension = data_testing.write_dicom(tmp_path / "1.2.826.0.1.3680043.8.498.4242", film)
    names = explain.output_names(["Doe^Jane/Doe^Jane_19870611.dcm", "x/a.png", no_extension, "y/B.DICOM"])
    assert names == ["dicom-1.heatmap.png", "a.heatmap.png", "dicom-3.heatmap.png", "dicom-4.heatmap.png"]


def test_a_film_that_declares_burned_in_text_is_refused_and_no_heat_map_draws_it(binary_model, tmp_path):
    """BurnedInAnnotation YES: the picture may carry the patient's name; curation rejects such a film,
    and a heat map (an artifact that gets shared) would copy its pixels."""
    import pydicom

    film = data_testing.write_dicom(tmp_path / "in" / "a.dcm", data_testing.radiograph(2, size=(180, 150), border=12))
    ds = pydicom.dcmread(film)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(film)
    out_dir = tmp_path / "explain"
    result = _run(["--model", binary_model.serving_dir, "--explain", str(out_dir), "--json", film])
    assert result.exit_code == 1, result.output
    [error] = json.loads(result.output)["errors"]
    assert error["error"].startswith("refused as curation refuses it: burned-in annotation")
    assert not out_dir.exists() or not os.listdir(out_dir)


def test_explain_names_no_dicom_file_on_disk_and_the_table_says_which_is_which(binary_model, tmp_path):
    film = data_testing.radiograph(2, size=(180, 150), border=12)
    folder = tmp_path / "Doe^Jane_19870611"
    folder.mkdir()
    dcm = data_testing.write_dicom(folder / "Doe^Jane_ACC4242.dcm", film)
    out_dir = tmp_path / "explain"
    result = _run(["--model", binary_model.serving_dir, "--explain", str(out_dir), dcm])
    assert result.exit_code == 0, result.output
    assert os.listdir(out_dir) == ["dicom-1.heatmap.png"]
    row = next(line for line in result.output.splitlines() if "Doe^Jane_ACC4242" in line)
    assert row.endswith("dicom-1.heatmap.png")


def test_an_explain_folder_that_cannot_be_made_fails_before_the_work(binary_model, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    image = data_testing.write_image(tmp_path / "in" / "x.png", data_testing.radiograph(1))
    result = CliRunner().invoke(cli.main, ["predict", "--model", binary_model.serving_dir, "--explain",
                                           str(a_file / "maps"), image])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("covid-cxr: error: --explain ")
    assert "is a file" in result.output and "\n" not in result.output.strip()


def _ops_reachable(saved_model_dir: str, signature: str, op: str) -> int:
    """How many `op` nodes the signature's function calls, through every nested function."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    graph = saved.meta_graphs[0]
    library = {fn.signature.name: fn for fn in graph.graph_def.library.function}

    def count(name, seen=()):
        total = 0
        for node in library[name].node_def:
            total += node.op == op
            called = [node.attr[k].func.name for k in ("f", "then_branch", "else_branch", "body") if k in node.attr]
            called += [node.op] if node.op in library else []
            total += sum(count(c, seen + (name,)) for c in called if c in library and c not in seen)
        return total

    outputs = {t.name.split(":")[0] for t in graph.signature_def[signature].outputs.values()}
    return sum(count(node.attr["f"].func.name) for node in graph.graph_def.node if node.name in outputs and "f" in node.attr)


def test_the_atypical_input_check_reuses_the_scoring_pass(binary_model):
    # The tiny model has two convolutions: one pass of them scores the film and measures its features.
    assert _ops_reachable(binary_model.model_dir, predict.EXAMPLES_SIGNATURE, "Conv2D") == 2
    assert _ops_reachable(binary_model.model_dir, predict.IMAGE_SIGNATURE, "Conv2D") == 2


def test_a_film_scored_exactly_at_the_stored_threshold_is_served_as_not_covid(binary_model, tmp_path):
    # choose_threshold may store a film's own float32 score (two adjacent scores leave no float32
    # between them); the served rule is "P(covid) > threshold", so that film is not COVID, and its
    # gate_score must not be above 0.5 either.
    import tensorflow_transform as tft
    import tf_keras as keras

    from covid_cxr.serving import export
    from covid_cxr.transform import preprocessing

    inputs = keras.Input((testing.TINY_IMAGE_SIZE, testing.TINY_IMAGE_SIZE, 1), name=preprocessing.IMAGE_XF)
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    score = 0.25  # every film's P(covid), exactly (no sigmoid to round it differently in the served graph)
    constant = keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(score),
                                  name="probabilities")(pooled)
    model = keras.Model(inputs, constant)
    out = str(tmp_path / "at-threshold")
    export.export_serving_model(model, tft.TFTransformOutput(binary_model.transform_dir), binary_model.task, score,
                                {}, out)
    served = tf.saved_model.load(out).signatures[export.EXAMPLES_SIGNATURE](
        examples=tf.constant(testing.read_records(binary_model.data_dir)[:4]))
    assert np.all(served["covid_probability"].numpy() == np.float32(score))
    assert served["label_index"].numpy().tolist() == [0] * 4
    assert served["label"].numpy().tolist() == [b"normal"] * 4
    assert np.all(served[export.GATE_OUTPUT].numpy() <= 0.5)


def test_a_film_that_fails_outside_the_decoders_is_one_rows_error_with_curations_reason(binary_model, tmp_path,
                                                                                       monkeypatch):
    paths = _write_pngs(binary_model, tmp_path / "films", n=2)
    process = images.process

    def failing(path, *args, **kwargs):
        if path == paths[0]:
            raise RuntimeError("a decoder library failed")
        return process(path, *args, **kwargs)

    monkeypatch.setattr(images, "process", failing)
    result = predict.predict_paths(predict.load_model(binary_model.serving_dir), paths)
    assert [r["file"] for r in result.predictions] == [paths[1]]
    assert [e.to_dict() for e in result.errors] == [{"file": paths[0], "error": "cannot process image (RuntimeError)"}]


def test_a_push_record_that_is_not_an_object_is_no_record(binary_model, tmp_path):
    """A hand-edited or foreign covid_cxr_push.json (a JSON list): no version and no record, as for an
    unreadable one, in predict and evaluate alike, not an AttributeError."""
    from covid_cxr.evaluation import evaluate

    model_dir = tmp_path / "current"
    shutil.copytree(binary_model.version_dir, model_dir)
    (model_dir / predict.PUSH_RECORD).write_text("[1700000000]")
    assert _resolved(str(model_dir)) == (str(model_dir), None)
    model = predict.load_model(str(model_dir))
    assert model.version is None and model.push_record == {} and evaluate.trainer_model_uri(model) is None
    (model_dir / predict.PUSH_RECORD).write_text('{"version": 7, "model_uri": "/r/Trainer/model/3"}')
    model = predict.load_model(str(model_dir))
    assert model.version == 7 and evaluate.trainer_model_uri(model) == "/r/Trainer/model/3"


def test_a_heat_map_that_cannot_be_written_fails_its_row_not_the_predictions(binary_model, tmp_path):
    """One overlay the disk refuses (here: a folder where its file goes; a full disk alike) is that
    row's explanation error; every film is still predicted and printed."""
    _write_pngs(binary_model, str(tmp_path / "a"), n=2)
    out_dir = tmp_path / "explain"
    os.makedirs(out_dir / "film0.heatmap.png")
    result = CliRunner().invoke(cli.main, ["predict", "--model", binary_model.serving_dir, "--json", "--explain",
                                           str(out_dir), str(tmp_path / "a")])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert [os.path.basename(p["file"]) for p in report["predictions"]] == ["film0.png", "film1.png"]
    assert report["predictions"][0]["explanation"] is None and report["predictions"][1]["explanation"]
    [error] = report["errors"]
    assert error["file"].endswith("film0.png") and error["error"].startswith("explanation failed: IsADirectoryError")


def test_the_transform_signature_needs_no_label(binary_model):
    # The transform_features signature (TFMA's preprocessing hook) transforms films whose labels are not sent.
    from covid_cxr.data import features

    records = testing.read_records(binary_model.data_dir)[:2]
    unlabelled = []
    for record in records:
        example = tf.train.Example.FromString(record)
        del example.features.feature[features.LABEL]
        del example.features.feature[features.LABEL_INDEX]
        unlabelled.append(example.SerializeToString())
    transform = tf.saved_model.load(binary_model.model_dir).signatures["transform_features"]
    full, bare = transform(examples=tf.constant(records)), transform(examples=tf.constant(unlabelled))
    assert bare["image_xf"].shape[0] == 2
    np.testing.assert_array_equal(bare["image_xf"].numpy(), full["image_xf"].numpy())


def test_a_three_class_model_serves_the_covid_column_as_its_covid_probability(three_class_model):
    out = predict.load_model(three_class_model.serving_dir).predict_examples(_first_records(three_class_model, 6)[0])
    covid = three_class_model.task.positive_index
    np.testing.assert_allclose(out["covid_probability"], out["probabilities"][:, covid], atol=1e-7)
    called = out["covid_probability"] > three_class_model.threshold
    assert called.any() and not called.all()  # the tiny model's threshold halves its films
    np.testing.assert_array_equal(out["label_index"] == covid, called)


def test_a_missing_path_a_file_and_a_damaged_push_record_are_named_for_what_they_are(tmp_path):
    with pytest.raises(predict.ModelNotFound, match=r"^'.*missing' does not exist$"):
        _resolved(str(tmp_path / "missing"))
    (tmp_path / "saved_model.pb.gz").write_bytes(b"a file, not a folder")
    with pytest.raises(predict.ModelNotFound, match="holds no SavedModel"):
        _resolved(str(tmp_path / "saved_model.pb.gz"))
    export = tmp_path / "export"
    export.mkdir()
    (export / "saved_model.pb").write_bytes(b"")  # found on disk; nothing is loaded
    for damaged in ('{"version": 7', '{"version": [7]}'):  # cut short; hand-edited
        (export / predict.PUSH_RECORD).write_text(damaged)
        assert _resolved(str(export)) == (str(export), None), damaged
    assert predict.read_push_record(str(export)) == {"version": [7]}
    (export / predict.PUSH_RECORD).write_text('{"version": 7')
    assert predict.read_push_record(str(export)) == {}


def test_preparation_prefers_the_curation_settings_and_takes_curations_own_names_and_bounds():
    both = {"data_summary": {"settings": {"max_side": 256, "crop": False, "equalize": "clahe"}},
            "curation": {"max_side": 384, "crop": True, "equalize": "hist"}}
    assert predict.Preparation.from_metadata(both) == predict.Preparation(384, True, "hist")
    assert predict.Preparation.from_metadata({"curation": {"equalization": "clahe"}}).equalization == "clahe"
    assert predict.Preparation.from_metadata({"curation": {"max_side": images.MIN_SIDE}}).max_side == images.MIN_SIDE


def test_a_model_of_a_task_this_version_does_not_know_is_named_by_its_metadata():
    unknown = predict.ServingModel("m", None, {"task": "covid-vs-tb"}, ("tb", "covid"), None, 0.5)
    assert unknown.task_name == "covid-vs-tb"
    assert predict.ServingModel("m", None, {}, (), None, None).task_name == "unknown"


def test_a_saved_model_that_is_not_a_covid_cxr_export_is_refused_as_the_model(tmp_path):
    module = tf.Module()
    module.double = tf.function(lambda x: {"y": x * 2}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "other"), signatures={"serving_default": module.double})
    with pytest.raises(predict.ModelNotFound, match=r"has no 'predict_image' signature \(not a covid-cxr export\?\)"):
        predict.load_model(str(tmp_path / "other"))


def test_a_damaged_decision_record_is_no_gate_approval_here_and_a_version_is_named_as_such(tmp_path):
    artifact = tmp_path / "root" / "Trainer" / "model" / "9"
    record = tmp_path / "root" / "VersionedPusher" / "pushed_model" / "12" / artifacts.DECISION_RECORD
    os.makedirs(record.parent)
    record.write_text("[1]")  # evaluate names it; predict's header and warning treat it as none
    model = predict.ServingModel(str(artifact / "Format-Serving"), None, {}, (), None, None)
    assert predict.blessed_record(model) == (None, "")
    # A pushed version is named by its version, whatever decision record is at hand.
    assert predict.approval_text(7, "rec.json", "/srv/7") == "version 7"


def test_a_model_of_an_unknown_task_keeps_the_class_names_its_metadata_lists(binary_model, tmp_path):
    copy = shutil.copytree(binary_model.model_dir, tmp_path / "m")
    asset = copy / "assets" / "covid_cxr.json"
    asset.write_text(json.dumps(dict(json.loads(asset.read_text()), task="covid-vs-tb", classes=["tb", "covid"])))
    model = predict.load_model(str(copy))
    assert model.task is None and model.classes == ("tb", "covid") and model.class_names(2) == ("tb", "covid")


def test_each_row_reports_its_own_films_outputs_as_the_graph_served_them():
    model = predict.ServingModel("m", 3, {}, ("normal", "covid"), features.TASKS["covid-vs-normal"], 0.4)
    outputs = {"probabilities": np.array([[0.9, 0.1], [0.3, 0.7]]), "label": np.array([b"normal", b"covid"]),
               "label_index": np.array([0, 1]), "covid_probability": np.array([0.1, 0.7]),
               "threshold": np.array([0.45, 0.45]),  # the graph's own constant, not the metadata's
               typicality.ATYPICALITY_OUTPUT: np.array([0.5, 1.5]), typicality.ATYPICAL_OUTPUT: np.array([False, True])}
    assert predict.rows_from_outputs(model, ["a.png", "b.png"], outputs) == [
        {"file": "a.png", "label": "normal", "label_index": 0, "probabilities": {"normal": 0.9, "covid": 0.1},
         "covid_probability": 0.1, "threshold": 0.45, "model_version": 3, "atypicality": 0.5, "atypical": False},
        {"file": "b.png", "label": "covid", "label_index": 1, "probabilities": {"normal": 0.3, "covid": 0.7},
         "covid_probability": 0.7, "threshold": 0.45, "model_version": 3, "atypicality": 1.5, "atypical": True}]


def test_the_table_shortens_long_file_names_and_lists_at_most_twenty_skipped_files():
    model = predict.ServingModel("m", 3, {}, ("normal", "covid"), features.TASKS["covid-vs-normal"], 0.4)
    long = "/data/" + "x" * 80 + "/film.png"
    row = {"file": long, "label": "covid", "label_index": 1, "probabilities": {"normal": 0.3, "covid": 0.7},
           "covid_probability": 0.7, "threshold": 0.4, "model_version": 3}

    def table(n_skipped):
        skipped = [predict.InputError(f"/in/note{i:02d}.txt", predict.NOT_AN_IMAGE) for i in range(n_skipped)]
        return predict.format_table(predict.PredictResult(model, [row], [], skipped), (None, "")).splitlines()

    lines = table(21)
    assert lines[1] == f"{'file':<60}  {'label':<10}{'P(normal)':>15}{'P(covid)':>15}"
    assert lines[2] == "-" * len(lines[1])
    assert lines[3] == f"...{long[-57:]}  {'covid':<10}{0.3:>15.4f}{0.7:>15.4f}"  # the end of its path, 60 wide
    assert lines[5:] == [f"skipped, not an image: /in/note{i:02d}.txt" for i in range(20)] + [
        "... and 1 more (--json lists every one)"]
    assert table(20)[-1] == "skipped, not an image: /in/note19.txt"  # twenty are all shown: no "... and 0 more"



def _scoring_model(unprocessable=b"bad"):
    """A ServingModel stand-in for predict_pngs: every film 'normal', a batch holding ``unprocessable`` fails in TF."""
    model = predict.ServingModel("m", 3, {}, ("normal", "covid"), features.TASKS["covid-vs-normal"], 0.4)

    def predict_images(pngs):
        if unprocessable in pngs:
            raise tf.errors.InvalidArgumentError(None, None, "Invalid PNG data")
        n = len(pngs)
        return {"probabilities": np.tile([[0.9, 0.1]], (n, 1)), "label": np.array([b"normal"] * n),
                "label_index": np.zeros(n, int), "covid_probability": np.full(n, 0.1), "threshold": np.full(n, 0.4)}

    model.predict_images = predict_images
    return model


def test_a_batch_the_model_cannot_process_is_retried_film_by_film_and_the_film_named():
    rows, errors = predict.predict_pngs(_scoring_model(), ["a.png", "b.png", "c.png"], [b"ok", b"bad", b"ok"])
    assert [r["file"] for r in rows] == ["a.png", "c.png"]
    assert [e.to_dict() for e in errors] == [
        {"file": "b.png", "error": "the model could not process it (InvalidArgumentError)"}]


def test_a_film_the_served_graph_refuses_is_named_with_the_graphs_reason(binary_model):
    # Curation refuses such films before the model sees them (a 2000x100 strip as "too narrow" once its
    # longest side is 512); a prepared film the served graph still refuses (here a 1x1 PNG) gets the graph's
    # reason in its row, not only "InvalidArgumentError", and the good film of the batch keeps its score.
    good = images.encode_png(np.random.default_rng(0).integers(40, 220, (64, 64)).astype(np.uint8))
    rows, errors = predict.predict_pngs(predict.load_model(binary_model.serving_dir), ["good.png", "dot.png"],
                                        [good, images.encode_png(np.array([[7]], np.uint8))])
    assert [row["file"] for row in rows] == ["good.png"]
    assert [(e.file, e.error) for e in errors] == [
        ("dot.png", "the model refused it: image too small (1x1; curation refuses fewer than 32 pixels on a side)")]


def test_errors_are_listed_in_the_inputs_order_whichever_step_failed(tmp_path, monkeypatch):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"")

    def prepare(path, preparation):
        if path.endswith("b.png"):
            raise images.ImageError("cannot decode image")
        return b"bad"  # a.png prepares, then the model fails on it

    monkeypatch.setattr(predict, "prepare", prepare)
    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.png"), str(tmp_path / "gone.png")]
    result = predict.predict_paths(_scoring_model(), paths)
    assert [(os.path.basename(e.file), e.error.split(" (")[0]) for e in result.errors] == [
        ("gone.png", "no such file or directory"), ("a.png", "the model could not process it"),
        ("b.png", "cannot decode image")]


def test_no_explanation_folder_is_made_when_no_film_was_predicted(tmp_path):
    result = predict.predict_paths(_scoring_model(), [str(tmp_path / "gone.png")], explain_dir=str(tmp_path / "maps"))
    assert result.predictions == [] and len(result.errors) == 1
    assert not (tmp_path / "maps").exists()  # check_writable left nothing either: no empty folder to wonder about


def test_the_json_names_the_models_threshold_and_what_was_passed_over():
    result = predict.PredictResult(_scoring_model(), [], [predict.InputError("x.png", "cannot decode image")],
                                   [predict.InputError("n.txt", predict.NOT_AN_IMAGE)], 2)
    assert result.to_dict() == {
        "model": {"path": "m", "version": 3, "task": "covid-vs-normal", "classes": ["normal", "covid"], "threshold": 0.4,
                  "threshold_applies": True},
        "predictions": [], "errors": [{"file": "x.png", "error": "cannot decode image"}],
        "skipped": [{"file": "n.txt", "error": "not an image file"}], "hidden_skipped": 2}


def test_a_three_class_model_with_the_rule_but_no_stored_threshold_is_described_by_its_graphs_threshold():
    """Its metadata names the threshold rule, which only serving/export.py writes, and that export's graph
    applies it with the threshold it outputs on every row: the table and the JSON say so, with that threshold,
    as evaluate does, instead of "label = most probable class"."""
    three = features.TASKS["three-class"]
    metadata = {"classes": list(three.classes), "decision_rule": model_metadata.COVID_THRESHOLD_RULE}
    model = predict.ServingModel("m", 3, metadata, three.classes, three, None)
    row = {"file": "a.png", "label": "covid", "label_index": 2,
           "probabilities": {"normal": 0.3, "pneumonia": 0.25, "covid": 0.45},
           "covid_probability": 0.45, "threshold": 0.4375, "model_version": 3}
    result = predict.PredictResult(model, [row], [])
    assert predict.format_table(result, (None, "")).splitlines()[0].endswith(
        "task three-class, COVID threshold 0.4375)")
    assert {k: result.to_dict()["model"][k] for k in ("threshold", "threshold_applies")} == {
        "threshold": 0.4375, "threshold_applies": True}
    # With no film scored the graph's threshold is not known here, but the rule still is.
    unscored = predict.PredictResult(model, [], [predict.InputError("x.png", "cannot decode image")])
    assert predict.format_table(unscored, (None, "")).splitlines()[0].endswith(
        "task three-class, COVID threshold (not stored in its metadata))")
    assert {k: unscored.to_dict()["model"][k] for k in ("threshold", "threshold_applies")} == {
        "threshold": None, "threshold_applies": True}
    # Without the rule it is an argmax-era model: its graph's threshold decides nothing.
    argmax = predict.PredictResult(dataclasses.replace(model, metadata={"classes": list(three.classes)}), [row], [])
    assert predict.format_table(argmax, (None, "")).splitlines()[0].endswith(
        "task three-class, no COVID threshold: label = most probable class)")
    assert {k: argmax.to_dict()["model"][k] for k in ("threshold", "threshold_applies")} == {
        "threshold": None, "threshold_applies": False}


def test_hidden_files_alone_are_counted_in_the_tables_summary():
    row = {"file": "a.png", "label": "normal", "label_index": 0, "probabilities": {"normal": 0.9, "covid": 0.1},
           "covid_probability": 0.1, "threshold": 0.4, "model_version": 3}
    table = predict.format_table(predict.PredictResult(_scoring_model(), [row], [], [], hidden=2), (None, ""))
    assert table.splitlines()[-1] == "1 predicted, 0 failed; skipped 0 files that are not images and 2 hidden files or folders"


def test_the_table_names_each_rows_heat_map_and_the_folder_they_are_in():
    row = {"file": "a.dcm", "label": "normal", "label_index": 0, "probabilities": {"normal": 0.9, "covid": 0.1},
           "covid_probability": 0.1, "threshold": 0.4, "model_version": 3, "explanation": "/maps/image-1.heatmap.png"}
    lines = predict.format_table(predict.PredictResult(_scoring_model(), [row], []), (None, "")).splitlines()
    assert lines[3].endswith("  image-1.heatmap.png")
    assert lines[-1] == "1 predicted, 0 failed; 1 explanation image(s) in /maps"


def test_the_tables_atypical_count_is_of_the_flagged_films():
    rows = [{"file": f"{name}.png", "label": "normal", "label_index": 0, "probabilities": {"normal": 0.9, "covid": 0.1},
             "covid_probability": 0.1, "threshold": 0.4, "model_version": 3, "atypicality": score, "atypical": score > 1}
            for name, score in (("a", 0.5), ("b", 1.5), ("c", 0.9))]
    summary = predict.format_table(predict.PredictResult(_scoring_model(), rows, []), (None, "")).splitlines()[-1]
    assert summary.startswith("3 predicted, 0 failed; 1 ATYPICAL: far from the training films")


def test_max_side_and_equalize_given_on_the_command_line_prepare_the_films(monkeypatch):
    used = []
    monkeypatch.setattr(predict, "find_model", lambda path: _scoring_model())
    monkeypatch.setattr(predict, "load_model", lambda path, found: found)
    monkeypatch.setattr(predict, "prepare", lambda path, preparation: used.append(preparation) or b"png")
    monkeypatch.setattr(predict, "find_inputs", lambda paths: predict.Inputs(list(paths), [], []))
    result = _run(["--model", "m", "--max-side", "256", "--equalize", "clahe", "a.png"])
    assert result.exit_code == 0, result.output
    assert used == [predict.Preparation(256, True, "clahe")]


def test_inputs_that_are_all_refused_before_the_model_do_not_load_it(tmp_path, monkeypatch):
    """Missing paths, an empty folder, files that are no image or cut short: the rows and exit code that
    the model's load (half a minute) used to precede, without it."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")  # found on disk; must not load
    monkeypatch.setattr(predict, "load_model", lambda *args: pytest.fail("the model was loaded"))
    os.makedirs(tmp_path / "empty")
    (tmp_path / "notes.png").write_text("not an image")
    png = images.encode_png(data_testing.radiograph(1))
    (tmp_path / "cut.png").write_bytes(png[:len(png) // 2])
    paths = [str(tmp_path / name) for name in ("gone.png", "empty", "notes.png", "cut.png")]
    result = CliRunner(mix_stderr=False).invoke(cli.main, ["predict", "--model", str(model), "--json", *paths])
    assert result.exit_code == 1, result.output
    out = json.loads(result.stdout)
    assert out["predictions"] == [] and out["model"]["path"] == str(model)
    assert [(os.path.basename(e["file"]), e["error"]) for e in out["errors"]] == [
        ("gone.png", "no such file or directory"),
        ("empty", "no image files (PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM) in this directory"),
        ("notes.png", "cannot decode image (not a format Pillow knows, or a damaged header)"),
        ("cut.png", "cannot decode image (OSError; truncated or corrupt)")]
    table = CliRunner(mix_stderr=False).invoke(cli.main, ["predict", "--model", str(model), *paths])
    assert table.exit_code == 1 and table.stdout.splitlines()[-1] == "0 predicted, 4 failed"
    assert sum("ERROR: " in line for line in table.stdout.splitlines()) == 4


def test_a_dicom_of_another_body_part_is_a_per_file_error_as_curation_refuses_it(tmp_path, monkeypatch):
    """An abdominal or knee film would get a COVID probability from a chest-film model."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")  # found on disk; must not load: every input is refused
    monkeypatch.setattr(predict, "load_model", lambda *args: pytest.fail("the model was loaded"))
    film = data_testing.radiograph(6)
    abdomen = data_testing.write_dicom(tmp_path / "abdomen.dcm", film, body_part="ABDOMEN")
    data_testing.write_dicom(tmp_path / "folder" / "knee.dcm", film, body_part="KNEE")
    args = ["predict", "--model", str(model), abdomen, str(tmp_path / "folder")]
    result = CliRunner(mix_stderr=False).invoke(cli.main, [*args, "--json"])
    assert result.exit_code == 1, result.output
    assert [(os.path.basename(e["file"]), e["error"]) for e in json.loads(result.stdout)["errors"]] == [
        ("abdomen.dcm", "refused as curation refuses it: not a chest film: DICOM BodyPartExamined ABDOMEN"),
        ("knee.dcm", "refused as curation refuses it: not a chest film: DICOM BodyPartExamined KNEE")]
    table = CliRunner(mix_stderr=False).invoke(cli.main, args)
    assert table.exit_code == 1 and table.stdout.splitlines()[-1] == "0 predicted, 2 failed"
    assert sum("ERROR: refused as curation refuses it: not a chest film" in line for line in table.stdout.splitlines()) == 2


def test_a_saved_model_without_covid_cxrs_signatures_is_a_one_line_error_naming_what_it_has():
    import types

    other = types.SimpleNamespace(signatures={"serving_default": lambda **kw: {}})
    model = predict.ServingModel("/models/resnet", None, {}, (), None, None, _loaded=other)
    with pytest.raises(click.ClickException) as e:
        model.predict_images([b"png"])
    assert e.value.message == ("the model at /models/resnet has no 'predict_image' signature (it has: serving_default); "
                               "was it exported by covid-cxr?")


def test_probabilities_wider_than_the_class_names_listed_are_named_by_column_not_mislabelled():
    model = predict.ServingModel("m", 3, {}, ("normal", "covid"), None, None)
    assert model.class_names(2) == ("normal", "covid")
    assert model.class_names(3) == ("class_0", "class_1", "class_2")
