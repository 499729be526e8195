"""`covid-cxr evaluate` on a real (tiny) exported model: JSON fields, consistency, files, data layouts."""
import io
import json
import os
import pathlib
import re
import shutil
import types

import click
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from covid_cxr import cli
from covid_cxr.data import curate, features, images, pseudonym
from covid_cxr.data import testing as data_testing
from covid_cxr.evaluation import artifacts, errors, evaluate, metrics
from covid_cxr.serving import model_metadata, predict, testing

binary_model = testing.tiny_model_fixture()


@pytest.fixture(autouse=True)
def _own_key_file(tmp_path, monkeypatch):
    """A folder tree's files are named by keyed pseudonyms: the key file goes here, not in ~/.config."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
three_class_model = testing.tiny_model_fixture("three-class")


def _run(args):
    """Its output is stdout: --json's JSON, not the stderr line announcing a new pseudonym key file."""
    return CliRunner(mix_stderr=False).invoke(evaluate.evaluate_command, args, catch_exceptions=False)


def _check_consistent(report):
    """Every headline number must follow from the confusion matrix (COVID = positive class)."""
    classes = report["confusion_matrix"]["classes"]
    cm = np.array(report["confusion_matrix"]["matrix"])
    pos = classes.index("covid")
    tp = cm[pos, pos]
    fn = cm[pos].sum() - tp
    fp = cm[:, pos].sum() - tp
    tn = cm.sum() - tp - fn - fp
    assert report["n"] == cm.sum() == sum(report["class_counts"].values())
    assert report["counts"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for key, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("precision", tp, tp + fp),
                      ("accuracy", np.trace(cm), cm.sum())):
        entry = report[key]
        assert (entry["k"], entry["n"]) == (k, n), key
        if n:
            assert entry["value"] == pytest.approx(k / n)
            assert tuple(entry["ci95"]) == pytest.approx(metrics.wilson_interval(k, n))
            assert entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]
    for c, row in zip(classes, cm):
        assert report["class_counts"][c] == row.sum()
    auc = report["auc"]
    assert set(auc) >= {"value", "ci95", "method"}
    if auc["value"] is not None:
        assert auc["ci95"][0] <= auc["value"] <= auc["ci95"][1]


def test_evaluate_tfrecords_json_files_and_consistency(binary_model, tmp_path):
    out = tmp_path / "report"
    result = _run(["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--json",
                   "--out", str(out), "--bootstrap", "200"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for key in ("task", "model", "n", "threshold", "sensitivity", "specificity", "auc", "accuracy", "precision",
                "confusion_matrix", "per_source", "shortcut_audit", "training_history", "files"):
        assert key in report, key
    assert report["task"] == "covid-vs-normal"
    assert report["model"]["version"] == binary_model.version
    assert report["model"]["signature"] == "serving_default"
    assert report["threshold"] == pytest.approx(binary_model.threshold)
    assert report["confusion_matrix"]["classes"] == ["normal", "covid"]
    assert report["data"]["format"] == "tfrecords" and report["data"]["skipped"] == 0
    _check_consistent(report)

    # The truth is the records' label_index; the predictions are the model's, through serving_default.
    records = testing.read_records(binary_model.data_dir)
    truth = [tf.train.Example.FromString(r).features.feature["label_index"].int64_list.value[0] for r in records]
    outputs = predict.load_model(binary_model.serving_dir).predict_examples(records)
    expected = metrics.confusion_matrix(truth, outputs["label_index"], 2)
    assert report["confusion_matrix"]["matrix"] == expected.tolist()
    assert report["auc"]["value"] == pytest.approx(metrics.roc_auc(np.array(truth) == 1, outputs["covid_probability"]))

    # Synthetic patients have 1-3 films: the report also resamples whole patients.
    boot = report["patient_bootstrap"]
    groups = [tf.train.Example.FromString(r).features.feature["group"].bytes_list.value[0].decode() for r in records]
    assert boot["films"] == report["n"] and boot["patients"] == len(set(groups)) < report["n"]
    truth, predicted = np.array(truth), np.asarray(outputs["label_index"]).reshape(-1)
    assert boot == metrics.patient_bootstrap(truth == 1, predicted == 1, outputs["covid_probability"], groups,
                                             correct=truth == predicted, n_boot=200, seed=0)
    # 4 patients per class, under metrics.MIN_BOOTSTRAP_PATIENTS: accuracy's interval only.
    assert boot["accuracy"] and not any(boot[name] for name in ("sensitivity", "specificity", "auc"))
    assert f"95% CI resampling the {len(set(groups))} patients of {report['n']} films" in evaluate.summary_text(report)

    # Per-source breakdown sums to the whole.
    assert sum(s["n"] for s in report["per_source"].values()) == report["n"]
    assert set(report["per_source"]) <= {"synthetic-a", "synthetic-b"}
    audit = report["shortcut_audit"]
    assert audit["n"] == report["n"] and audit["flag_auc"] == 0.6 and "verdict" in audit
    assert report["training_history"]["epochs"] == 2
    assert report["training_history"]["member_min_auc"] is None  # the fixture's metadata predates the floor

    # The misclassified films are exactly the confusion matrix's off-diagonal, most confidently wrong first.
    wrong = report["errors"]
    assert wrong["n"] == int(np.sum(expected) - np.trace(expected)) > 0
    listed = wrong["listed"]
    assert all(e["true"] != e["predicted"] for e in listed) and len(listed) == min(wrong["n"], 50)
    assert all(truth[e["index"]] == report["classes"].index(e["true"]) for e in listed)
    log_odds = lambda p: np.log(p / (1 - p))  # noqa: E731
    confidence = [abs(log_odds(e["covid_probability"]) - log_odds(report["threshold"])) for e in listed]
    assert confidence == pytest.approx(sorted(confidence, reverse=True))
    assert {e["ref"] for e in listed} <= {f"record {i}" for i in range(len(records))}

    for name in ("report.html", "report.json", "roc.png", "confusion_matrix.png", "training_curves.png", "errors.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 1000, name
        assert report["files"][name] == str(path)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # self-contained: every plot inlined
    assert f"Misclassified films ({wrong['n']})" in html
    assert "Wilson" in html and "Shortcut audit" in html and "resampling the" in html and "Not a diagnostic device".lower() in html.lower()
    atypical = report["atypical"]  # the atypical-input check's share, and its column in the per-source table
    assert f"atypical inputs (unlike the training films; scored anyway): {atypical['k']}/{atypical['n']}" in html
    assert "<th>atypical</th>" in html
    assert json.loads((out / "report.json").read_text())["n"] == report["n"]
    # The model card with this evaluation: the pushed card's sections plus CIs and per-source AUC.
    card = (out / "model_card.md").read_text()
    assert report["files"]["model_card.md"] == str(out / "model_card.md")
    assert card.startswith("# covid-cxr model card: covid-vs-normal") and "Not a diagnostic device" in card
    assert "| source | n | sensitivity (95% CI) | specificity (95% CI) | AUC within the source (95% CI) |" in card
    for source, entry in report["per_source"].items():
        assert f"| {source} | {entry['n']} |" in card
    assert f"95% CI resampling the {boot['patients']} patients" in card


def test_class_folders_inside_each_other_that_disagree_give_no_label(binary_model, tmp_path):
    records = testing.read_records(binary_model.data_dir)
    image = tf.train.Example.FromString(records[0]).features.feature["image"].bytes_list.value[0]
    root = tmp_path / "tree"
    for name in ("COVID/a.png", "Normal/b.png", "COVID/patient-7/Normal/c.png", "COVID/patient-8/COVID/d.png"):
        os.makedirs((root / name).parent, exist_ok=True)
        (root / name).write_bytes(image)
    data = evaluate.load_folders(str(root), features.get_task("covid-vs-normal"))
    assert sorted(data.labels.tolist()) == [0, 1, 1]  # c.png has no label it can trust; d.png is COVID twice
    [skipped] = data.skipped
    assert skipped["reason"] == "in class folders inside each other that name different findings"
    assert "patient-7" not in skipped["file"]
    assert not any("patient-8" in ref for ref in data.refs)  # d.png is named below the outer COVID folder
    # ... which is its class folder: no folder above it, so no source slice of its own (a pseudonym of "COVID").
    assert features.SOURCE not in data.slices


def test_lung_masks_of_the_radiography_layout_are_counted_not_read_as_films(binary_model, tmp_path):
    """COVID/images/ beside COVID/masks/: as curation, the masks are not films of the class."""
    from covid_cxr.data.sources import radiography

    records = testing.read_records(binary_model.data_dir)
    image = tf.train.Example.FromString(records[0]).features.feature["image"].bytes_list.value[0]
    root = tmp_path / "tree"
    for name in ("COVID/images/a.png", "COVID/masks/a.png", "Normal/images/b.png", "Normal/masks/b.png",
                 "Normal/masks/c.png"):
        os.makedirs((root / name).parent, exist_ok=True)
        (root / name).write_bytes(image)
    out = tmp_path / "report"
    result = _run(["--model", binary_model.serving_dir, "--data", str(root), "--no-audit", "--bootstrap", "100",
                   "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 2 and report["class_counts"] == {"normal": 1, "covid": 1}
    assert report["data"]["masks_skipped"] == 3 and report["data"]["skipped"] == 0
    shown = f"3 {radiography.MASKS}"
    assert f"normal 1, covid 1; {shown})" in result.output
    assert shown in (out / "report.html").read_text()
    shutil.rmtree(root / "COVID" / "images")
    shutil.rmtree(root / "Normal" / "images")
    with pytest.raises(ValueError, match=re.escape(f"(0 skipped; {shown}; class folders")):
        evaluate.load_folders(str(root), features.get_task("covid-vs-normal"))


def test_a_folder_tree_s_key_is_given_with_key_or_its_new_key_file_announced(binary_model, tmp_path, monkeypatch):
    monkeypatch.delenv(pseudonym.ENV_VAR, raising=False)
    records = testing.read_records(binary_model.data_dir)
    image = tf.train.Example.FromString(records[0]).features.feature["image"].bytes_list.value[0]
    root = tmp_path / "tree"
    for name in ("COVID/a.png", "Normal/b.png"):
        os.makedirs((root / name).parent, exist_ok=True)
        (root / name).write_bytes(image)
    args = ["evaluate", "--model", binary_model.serving_dir, "--data", str(root), "--json", "--no-audit",
            "--bootstrap", "100", "--out", str(tmp_path / "r")]
    key_file = tmp_path / "config" / "covid-cxr" / "pseudonym.key"
    first = CliRunner(mix_stderr=False).invoke(cli.main, args)
    assert first.exit_code == 0, first.output + first.stderr
    assert json.loads(first.stdout)["n"] == 2  # stdout stays JSON
    assert f"created the pseudonym key file {key_file} (mode 0600): keep it" in first.stderr
    second = CliRunner(mix_stderr=False).invoke(cli.main, args)
    assert second.exit_code == 0 and "pseudonym key file" not in second.stderr, second.stderr
    os.remove(key_file)
    given = "evaluate-given-key-0123456789abcdef"
    keyed = CliRunner(mix_stderr=False).invoke(cli.main, [*args, "--key", given])
    assert keyed.exit_code == 0 and not key_file.exists(), keyed.stderr
    refs = [e["ref"] for e in json.loads(keyed.stdout)["errors"]["listed"]]
    assert refs and all(paths for paths in curate.locate("folder", str(root), refs, given.encode()).values())
    short = CliRunner().invoke(cli.main, [*args, "--key", "short"])
    assert short.exit_code == 2 and len(short.output.strip().splitlines()) == 1, short.output
    assert "the pseudonym key given with --key has 5 characters" in short.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_in_a_class_folder_is_skipped_with_its_own_reason_unopened(binary_model, tmp_path):
    records = testing.read_records(binary_model.data_dir)
    image = tf.train.Example.FromString(records[0]).features.feature["image"].bytes_list.value[0]
    root = tmp_path / "tree"
    for name in ("COVID/a.png", "Normal/b.png", "Normal/notes.txt"):
        os.makedirs((root / name).parent, exist_ok=True)
        (root / name).write_bytes(image)
    with data_testing.fifo(root / "Normal" / "c.png"):
        data = evaluate.load_folders(str(root), features.get_task("covid-vs-normal"))
    assert sorted(s["reason"] for s in data.skipped) == ["not a regular file: a named pipe (FIFO)", "not an image file"]
    assert sorted(data.labels.tolist()) == [0, 1]


def test_folders_above_the_class_folders_slice_by_pseudonym_not_by_name(binary_model, tmp_path, monkeypatch):
    """A hospital export may name a patient's folder above the class folders: the films keep their
    slices, under keyed pseudonyms the key's holder can locate, and the names go nowhere."""
    monkeypatch.setenv("COVID_CXR_PSEUDONYM_KEY", "evaluate-test-key-0123456789abcdef")
    records = testing.read_records(binary_model.data_dir)
    image = tf.train.Example.FromString(records[0]).features.feature["image"].bytes_list.value[0]
    root = tmp_path / "tree"
    for name in ("Smith_John_19500101/COVID/a.png", "Smith_John_19500101/Normal/b.png", "Doe_Jane/COVID/c.png",
                 "Doe_Jane/Normal/d.png", "Doe_Jane/Normal/e.txt"):
        os.makedirs((root / name).parent, exist_ok=True)
        (root / name).write_bytes(image)
    data = evaluate.load_folders(str(root), features.get_task("covid-vs-normal"))
    sources = data.slices[features.SOURCE]
    assert len(sources) == 4 and len(set(sources)) == 2 and all(re.fullmatch(r"folder-[0-9a-f]{8}", s) for s in sources)
    shown = [*data.refs, *(s["file"] for s in data.skipped)]
    assert all(re.fullmatch(re.escape(str(root)) + r"/(COVID|Normal)/file-[0-9a-f]{8}(\.png)?", ref) for ref in shown), shown
    located = curate.locate("folder", str(root), sorted(set(sources)), pseudonym.load_key()[0])
    assert sorted(os.path.basename(paths[0]) for paths in located.values()) == ["Doe_Jane", "Smith_John_19500101"]


def test_evaluate_class_folders(binary_model, tmp_path, monkeypatch):
    monkeypatch.setenv("COVID_CXR_PSEUDONYM_KEY", "evaluate-test-key-0123456789abcdef")
    records = testing.read_records(binary_model.data_dir)
    root = tmp_path / "tree"
    expected = {"normal": 0, "covid": 0}
    for i, r in enumerate(records):
        feats = tf.train.Example.FromString(r).features.feature
        label = feats["label"].bytes_list.value[0].decode()
        folder = {"covid": "COVID", "normal": "Normal"}[label]
        path = root / "site-x" / folder / f"img{i}.png"
        os.makedirs(path.parent, exist_ok=True)
        path.write_bytes(feats["image"].bytes_list.value[0])
        expected[label] += 1
    os.makedirs(root / "site-x" / "Viral Pneumonia")
    (root / "site-x" / "Viral Pneumonia" / "p.png").write_bytes(path.read_bytes())  # not used by covid-vs-normal
    (root / "site-x" / "COVID" / "broken.png").write_bytes(b"garbage")
    os.makedirs(root / "misc")
    (root / "misc" / "x.png").write_bytes(path.read_bytes())  # in no class folder
    (root / "site-x" / "COVID" / "notes.txt").write_text("not an image")  # listed
    (root / "site-x" / "COVID" / "._img0.png").write_bytes(b"macOS metadata")  # counted
    result = _run(["--model", binary_model.serving_dir, "--data", str(root), "--json", "--bootstrap", "200"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["data"]["format"] == "folders"
    assert report["model"]["signature"] == "predict_image"
    assert report["class_counts"] == expected
    assert report["data"]["skipped"] == 4 and report["data"]["hidden_skipped"] == 1
    summary = evaluate.summary_text(report)
    assert "; 4 skipped; 1 hidden files or folders not read)\neach skipped file is listed with its reason in report.json" in summary
    # A folder tree may be a hospital export: every file is shown by its class folder and a pseudonym,
    # and the folders above the class folder (a site here, a patient's name elsewhere) are not shown.
    reasons = {os.path.relpath(s["file"], root): s["reason"] for s in report["data"]["skipped_files"]}
    shown = {re.sub(r"file-[0-9a-f]{8}", "P", name): reason for name, reason in reasons.items()}
    assert set(shown) == {"Viral Pneumonia/P.png", "COVID/P.png", "P.png", "COVID/P"}, reasons
    assert shown["COVID/P"] == "not an image file"
    assert "not used by task" in shown["Viral Pneumonia/P.png"]
    assert "unreadable" in shown["COVID/P.png"]
    assert shown["P.png"] == "not in a mapped class folder"  # misc/x.png: no folder of it is kept
    assert "misc" not in result.output and "broken" not in result.output and "site-x" not in result.output
    _check_consistent(report)
    # The same images through predict_image give the same matrix as the records through serving_default.
    by_records = json.loads(_run(["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--json",
                                  "--bootstrap", "200", "--no-audit"]).output)
    assert report["confusion_matrix"] == by_records["confusion_matrix"]
    # Misclassified films are named by pseudonyms the key's holder can locate; a folder tree's
    # plain-hash groups are not shown.
    listed = report["errors"]["listed"]
    assert report["errors"]["n"] == by_records["errors"]["n"] and listed
    located = curate.locate("folder", str(root), [e["ref"] for e in listed], pseudonym.load_key()[0])
    assert all(len(paths) == 1 and os.path.isfile(paths[0]) for paths in located.values()), located
    assert all("group" not in e for e in listed)
    assert all("group" in e for e in by_records["errors"]["listed"])


def test_a_damaged_record_file_or_summary_is_named_in_one_line(binary_model, tmp_path):
    data = shutil.copytree(binary_model.data_dir, tmp_path / "data")
    shard = sorted(data.glob(features.TFRECORD_PATTERN))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    result = CliRunner().invoke(cli.main, ["evaluate", "--model", binary_model.serving_dir, "--data", str(data)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"{shard}: not a readable gzip TFRecord file (DataLossError: " in result.output
    with tf.io.TFRecordWriter(str(shard), options="GZIP") as w:
        w.write(b"hello world")
    result = CliRunner().invoke(cli.main, ["evaluate", "--model", binary_model.serving_dir, "--data", str(data)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"covid-cxr: error: {shard}: record 0 is not a tf.Example: not a curated "
                                     "covid-cxr dataset")
    shutil.copy(sorted(pathlib.Path(binary_model.data_dir).glob(features.TFRECORD_PATTERN))[0], shard)
    (data / features.SUMMARY).write_text("[1]")
    result = CliRunner().invoke(cli.main, ["evaluate", "--model", binary_model.serving_dir, "--data", str(data)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"{data / features.SUMMARY}: not a curation summary (a JSON list where an object belongs)" in result.output


def test_a_model_never_pushed_is_warned_about_on_stderr(binary_model, tmp_path):
    result = CliRunner(mix_stderr=False).invoke(cli.main, [
        "evaluate", "--model", binary_model.model_dir, "--data", binary_model.data_dir, "--json", "--no-audit",
        "--bootstrap", "100", "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads(result.stdout)["model"]["version"] is None  # the JSON stays JSON
    assert (f"covid-cxr: warning: model {binary_model.model_dir}: no push record, so no gate approval on file"
            in result.stderr.splitlines()[0]), result.stderr


def test_a_model_trained_on_the_demos_synthetic_images_is_warned_about_on_stderr(binary_model, tmp_path):
    """evaluate said nothing of it: only the model card's data section named the training data synthetic."""
    copy = shutil.copytree(binary_model.model_dir, tmp_path / "m")
    asset = copy / "assets" / "covid_cxr.json"
    asset.write_text(json.dumps(dict(json.loads(asset.read_text()), data_summary={"synthetic": True})))
    result = CliRunner(mix_stderr=False).invoke(cli.main, [
        "evaluate", "--model", str(copy), "--data", binary_model.data_dir, "--json", "--no-audit",
        "--bootstrap", "100", "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads(result.stdout)["n"] > 0  # the JSON stays JSON
    assert (f"covid-cxr: warning: model {copy}: this model was trained on SYNTHETIC images (the demo): its labels "
            "say nothing about radiographs") in result.stderr.splitlines(), result.stderr


def test_every_skipped_file_is_in_report_json_and_the_page_says_when_it_shows_only_the_first(binary_model, tmp_path):
    """Past 50 skipped files, report.json and the page listed the first 50: the others' names and reasons
    were dropped without a word (the count said 60)."""
    root = tmp_path / "tree"
    for i, folder in enumerate(["COVID", "Normal"] * 2):
        data_testing.write_image(root / folder / f"f{i}.png", data_testing.radiograph(i))
    for i in range(60):
        (root / "COVID" / f"note{i:02d}.txt").write_text("a note")
    out = tmp_path / "report"
    result = _run(["--model", binary_model.serving_dir, "--data", str(root), "--out", str(out), "--no-audit",
                   "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())["data"]
    assert data["skipped"] == 60 and len(data["skipped_files"]) == 60
    assert {s["reason"] for s in data["skipped_files"]} == {"not an image file"}
    page = (out / "report.html").read_text()
    assert "the first 50 of 60: report.json lists every one" in page and page.count("not an image file") == 50


def test_a_folder_tree_with_a_folder_that_cannot_be_listed_is_refused_naming_it(tmp_path, monkeypatch):
    """Its films would be missing from the figures without a word (and the tree's error said "0 skipped")."""
    root = tmp_path / "tree"
    for i, folder in enumerate(["COVID", "Normal"]):
        data_testing.write_image(root / folder / f"f{i}.png", data_testing.radiograph(i))
    (root / "Normal" / "locked").mkdir()
    data_testing.refuse_listing(monkeypatch, "locked")
    with pytest.raises(ValueError, match=r"^cannot read folder '.*Normal/locked': Permission denied$"):
        evaluate.load_folders(str(root), features.get_task("covid-vs-normal"))


def test_class_map_option(binary_model, tmp_path):
    by_label = {}
    for r in testing.read_records(binary_model.data_dir):
        by_label.setdefault(tf.train.Example.FromString(r).features.feature["label"].bytes_list.value[0], []).append(r)
    records = by_label[b"covid"][:3] + by_label[b"normal"][:3]
    for i, r in enumerate(records):
        feats = tf.train.Example.FromString(r).features.feature
        folder = "sick" if feats["label"].bytes_list.value[0] == b"covid" else "healthy"
        os.makedirs(tmp_path / folder, exist_ok=True)
        (tmp_path / folder / f"{i}.png").write_bytes(feats["image"].bytes_list.value[0])
    result = _run(["--model", binary_model.serving_dir, "--data", str(tmp_path), "--json", "--no-audit",
                   "--class-map", "sick=covid,healthy=normal"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n"] == 6
    (tmp_path / "._0.png").write_bytes(b"macOS metadata")
    no_map = CliRunner().invoke(evaluate.evaluate_command, ["--model", binary_model.serving_dir, "--data", str(tmp_path)])
    assert no_map.exit_code == 2 and "no usable labelled images" in no_map.output
    assert re.search(r"\(\d+ skipped; 1 hidden files or folders not read; class folders must be named like", no_map.output)


def test_a_film_that_declares_burned_in_text_is_skipped_as_curation_rejects_it(binary_model, tmp_path):
    """BurnedInAnnotation YES: the picture itself may carry the patient's name. Curation rejects such a
    film; evaluated, it would be drawn into errors.png and report.html."""
    import pydicom

    root = tmp_path / "tree"
    films = []
    for i, r in enumerate(testing.read_records(binary_model.data_dir)[:4]):
        feats = tf.train.Example.FromString(r).features.feature
        folder = root / ("COVID" if feats["label"].bytes_list.value[0] == b"covid" else "Normal")
        pixels = np.asarray(Image.open(io.BytesIO(feats["image"].bytes_list.value[0])))
        films.append(data_testing.write_dicom(folder / f"film{i}.dcm", pixels, patient_id=f"P{i}"))
    ds = pydicom.dcmread(films[0])
    ds.BurnedInAnnotation = "YES"
    ds.save_as(films[0])
    data = evaluate.load_folders(str(root), features.get_task("covid-vs-normal"))
    assert data.n == 3
    assert [s["reason"] for s in data.skipped] == [images.BURNED_IN]


def test_a_dicom_of_another_body_part_is_skipped_as_curation_rejects_it(tmp_path):
    root = tmp_path / "tree"
    data_testing.write_dicom(root / "COVID" / "chest.dcm", data_testing.radiograph(1), body_part="CHEST")
    data_testing.write_dicom(root / "Normal" / "untagged.dcm", data_testing.radiograph(2))
    data_testing.write_dicom(root / "Normal" / "pelvis.dcm", data_testing.radiograph(3), body_part="PELVIS")
    data = evaluate.load_folders(str(root), features.get_task("covid-vs-normal"), key="evaluate-test-key-0123456789abcd")
    assert data.n == 2
    assert [s["reason"] for s in data.skipped] == ["not a chest film: DICOM BodyPartExamined PELVIS"]


def test_dicom_file_and_folder_names_never_reach_the_report(binary_model, tmp_path, monkeypatch):
    """Hospital exports name DICOM files and folders by patient id, date, accession number: the
    report names such a film by its class folder and a keyed pseudonym instead."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))  # the pseudonym key file lands here
    monkeypatch.delenv("COVID_CXR_PSEUDONYM_KEY", raising=False)
    root = tmp_path / "tree"
    for i, r in enumerate(testing.read_records(binary_model.data_dir)[:6]):
        feats = tf.train.Example.FromString(r).features.feature
        covid = (feats["label"].bytes_list.value[0] == b"covid") != (i < 2)  # two films filed wrongly: listed as errors
        folder = root / ("COVID" if covid else "Normal") / "19770412" / "ACC-5501"
        pixels = np.asarray(Image.open(io.BytesIO(feats["image"].bytes_list.value[0])))
        data_testing.write_dicom(folder / f"MRN-88{i}.dcm", pixels, patient_id=f"MRN-88{i}")
    (root / "COVID" / "MRN-889.dcm").write_bytes(b"not a dicom")  # unreadable: listed as skipped
    data_testing.write_dicom(root / "Normal" / "MRN-890.dcm", data_testing.radiograph(3), modality="CT")  # refused
    out = tmp_path / "report"
    result = _run(["--model", binary_model.serving_dir, "--data", str(root), "--out", str(out), "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 6 and report["data"]["skipped"] == 2
    assert sorted(s["reason"].split(":")[0] for s in report["data"]["skipped_files"]) == ["not an X-ray", "unreadable image"]
    shown = [e["ref"] for e in report["errors"]["listed"]] + [s["file"] for s in report["data"]["skipped_files"]]
    assert len(shown) >= 2 and all(re.fullmatch(re.escape(str(root)) + r"/(COVID|Normal)/file-[0-9a-f]{8}\.dcm", ref) for ref in shown), shown
    for name in ("report.json", "report.html", "model_card.md"):
        text = (out / name).read_text()
        assert "MRN-88" not in text and "19770412" not in text and "ACC-5501" not in text, name
    assert "MRN-88" not in result.output and "ACC-5501" not in result.output
    # Whoever holds the key finds the films again.
    located = CliRunner().invoke(cli.main, ["locate", "--source", f"folder={root}", *[os.path.relpath(r, root) for r in shown]])
    assert located.exit_code == 0, located.output
    assert all("/MRN-8" in line for line in located.output.strip().splitlines()), located.output


def test_three_class_report(three_class_model, tmp_path):
    result = _run(["--model", three_class_model.serving_dir, "--data", three_class_model.data_dir, "--json",
                   "--bootstrap", "200", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["classes"] == ["normal", "pneumonia", "covid"]
    assert report["threshold"] == three_class_model.threshold
    assert report["threshold_note"] == "COVID when its probability > the stored threshold, else the more probable other class"
    _check_consistent(report)
    mc = report["multiclass"]
    cm = np.array(report["confusion_matrix"]["matrix"])
    assert mc["macro_f1"] == pytest.approx(metrics.macro_f1(cm))
    assert set(mc["per_class"]) == {"normal", "pneumonia", "covid"}
    for i, c in enumerate(report["classes"]):
        assert mc["per_class"][c]["support"] == cm[i].sum()
    assert mc["covid_one_vs_rest"]["sensitivity"] == report["sensitivity"]
    assert (tmp_path / "roc.png").stat().st_size > 1000
    assert "Three-class" in (tmp_path / "report.html").read_text()
    # Misclassified films carry all class probabilities, ordered by how far each is from the decision
    # it got: whether COVID was called (P(covid) against the threshold), else which other class won.
    wrong = report["errors"]
    assert wrong["n"] == cm.sum() - np.trace(cm) > 0 and wrong["order"] == errors.THREE_CLASS_THRESHOLD_ORDER

    def distance(e):
        p = e["probabilities"]
        if "covid" in (e["true"], e["predicted"]):
            return abs(metrics.logit(p["covid"]) - metrics.logit(report["threshold"]))
        return np.log(p[e["predicted"]] / p[e["true"]])

    distances = [distance(e) for e in wrong["listed"]]
    assert distances == sorted(distances, reverse=True) and min(distances) >= 0
    assert all(sum(e["probabilities"].values()) == pytest.approx(1.0, abs=1e-4) for e in wrong["listed"])


def test_labels_outside_the_tasks_classes_are_refused():
    # A record's label_index of 2 names no class of a binary model: refused, not scored as a negative.
    task = features.TASKS["covid-vs-normal"]
    model = types.SimpleNamespace(task=task)
    assert evaluate.task_of(model, types.SimpleNamespace(task_name=None, path="d", labels=np.array([0, 1]))) is task
    for labels in ([0, 2], [-1, 1]):
        with pytest.raises(click.UsageError, match=r"labels in 'd' are outside 0\.\.1 of task covid-vs-normal"):
            evaluate.task_of(model, types.SimpleNamespace(task_name=None, path="d", labels=np.array(labels)))


def test_task_mismatch_is_refused(binary_model, three_class_model):
    result = CliRunner().invoke(evaluate.evaluate_command,
                                ["--model", binary_model.serving_dir, "--data", three_class_model.data_dir])
    assert result.exit_code == 2
    assert "curated for task 'three-class'" in result.output


def test_terminal_summary(binary_model):
    result = _run(["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--bootstrap", "200"])
    assert result.exit_code == 0, result.output
    for text in ("sensitivity", "specificity", "auc", "confusion matrix", "shortcut audit", "decision threshold",
                 "AUC within the source"):
        assert text in result.output
    # The printed figures are the report's.
    report = json.loads(_run(["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--bootstrap", "200",
                              "--json"]).output)
    for name in ("sensitivity", "specificity", "accuracy"):
        m = report[name]
        assert f"{name:<11s} {m['value']:.3f}  [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]  ({m['k']}/{m['n']})" in result.output
    assert f"decision threshold {report['threshold']:.4f}" in result.output
    # The atypical-input check was fitted on these films: its rate is reported, per source too.
    atypical = report["atypical"]
    fitted = predict.load_model(binary_model.serving_dir).metadata["typicality"]
    assert atypical["n"] == report["n"] == fitted["eval_films"] and atypical["k"] == fitted["eval_atypical"] >= 1
    assert f"atypical inputs (unlike the training films; scored anyway): {atypical['k']}/{atypical['n']}" in result.output
    assert sum(entry["atypical"] for entry in report["per_source"].values()) == atypical["k"]


def test_within_source_auc_exposes_a_model_that_scores_the_source():
    """Scores that only say which source a film came from: high pooled AUC, 0.5 within each source."""
    task = features.TASKS["covid-vs-normal"]
    pos = task.positive_index
    # Source "a": 40 COVID and 10 normal films, all scored 0.9; source "b": 40 normal, 10 COVID, all 0.1.
    labels = np.array([pos] * 40 + [1 - pos] * 10 + [1 - pos] * 40 + [pos] * 10)
    covid = np.array([0.9] * 50 + [0.1] * 50)
    outputs = {"label_index": np.where(covid > 0.5, pos, 1 - pos), "covid_probability": covid,
               "probabilities": np.stack([1 - covid, covid] if pos == 1 else [covid, 1 - covid], axis=1)}
    report = evaluate.compute(task, labels, outputs, n_boot=200, slices={features.SOURCE: ["a"] * 50 + ["b"] * 50})
    assert report["auc"]["value"] == pytest.approx(0.8)
    for source in ("a", "b"):
        assert report["per_source"][source]["auc"]["value"] == pytest.approx(0.5)
    # Each source's table counts its own films: "a" calls everything COVID, "b" nothing.
    a, b = report["per_source"]["a"], report["per_source"]["b"]
    assert [(a[m]["k"], a[m]["n"]) for m in ("sensitivity", "specificity")] == [(40, 40), (0, 10)]
    assert [(b[m]["k"], b[m]["n"]) for m in ("sensitivity", "specificity")] == [(0, 10), (40, 40)]
    assert report["sources_below_pooled_auc"] == ["a", "b"]
    from covid_cxr.evaluation import html_report

    full = dict(report, task=task.name, threshold=0.5, threshold_note="test",
                model={"path": "m", "version": 1}, data={"path": "d", "format": "x", "skipped": 0})
    page = html_report.render(full, pngs={})
    assert "<p class=warn>Warning: within-source AUC wholly below the pooled AUC&#x27;s interval: a, b;" in page
    assert "WARNING: within-source AUC wholly below the pooled AUC's interval: a, b;" in evaluate.summary_text(full)
    # The page also says which epoch of which phase each ensemble member serves.
    fit = {"family": "mobilenet_v2_035", "epochs_run": [["frozen backbone", 4], ["fine-tuning", 4]],
           "kept": {"phase": "frozen backbone", "epoch_in_phase": 3, "val_selection": 0.97, "val_auc": 0.9778}}
    page = html_report.render(dict(full, training_history={"source": "s", "epochs": 8, "members": [fit]}), pngs={})
    assert ("<tr><td>mobilenet_v2_035</td><td>frozen backbone 4, fine-tuning 4</td>"
            "<td>frozen backbone, epoch 3 (fine-tuning did not beat it)</td><td>0.9778</td><td>n/a</td></tr>") in page
    assert "Not served" not in page
    # ... and which members it leaves out, and why.
    dropped = dict(fit, family="cnn4", eval_auc=0.5, served=False)
    page = html_report.render(dict(full, training_history={"source": "s", "epochs": 8, "members": [fit, dropped],
                                                           "member_min_auc": 0.6}), pngs={})
    assert "<p class=note>Not served: cnn4 (eval AUC 0.500), below training.member_min_auc 0.60.</p>" in page
    assert "<tr><td>cnn4</td>" in page and "<td>0.9778</td><td>0.5000</td></tr>" in page  # Keras's AUC, then the exact one


def test_the_html_page_shows_every_part_of_the_report():
    from covid_cxr.evaluation import html_report

    task = features.TASKS["covid-vs-normal"]
    pos = task.positive_index
    labels = np.array([pos, pos, pos, 1 - pos, 1 - pos, 1 - pos])
    covid = np.array([0.9, 0.8, 0.2, 0.1, 0.3, 0.7])
    outputs = {"label_index": np.where(covid > 0.5, pos, 1 - pos), "covid_probability": covid,
               "probabilities": np.stack([1 - covid, covid] if pos == 1 else [covid, 1 - covid], axis=1),
               "atypical": np.array([0, 0, 1, 0, 0, 0], bool)}
    slices = {features.SOURCE: ["a"] * 3 + ["b"] * 3, features.VIEW: ["PA", "AP", "PA", "PA", "AP", "PA"]}
    report = evaluate.compute(task, labels, outputs, n_boot=100, slices=slices)
    report.update(task=task.name, threshold=0.5, threshold_note="the note", model={"path": "m", "version": 3},
                  data={"path": "d", "format": "folders", "skipped": 1, "hidden_skipped": 0,
                        "skipped_files": [{"file": "d/x.txt", "reason": "not an image file"}]},
                  errors=errors.misclassified(task, labels, outputs["label_index"], outputs["probabilities"],
                                              [f"g{i}" for i in range(6)], [f"r{i}" for i in range(6)], slices, threshold=0.5),
                  shortcut_audit={"verdict": "SHORTCUT: borders", "flagged": True, "method": "borders", "n": 6,
                                  "n_groups": 6, "auc": {"value": 0.9, "ci95": [0.8, 0.95]}, "flag_auc": 0.6})
    pipeline = {"root": "r", "evaluation": {"uri": "u", "blessed": False, "failures": ["AUC 0.700 is below 0.8"],
                                            "metrics": {"AUC": 0.7, "AUC change": -0.1, "Precision": float("nan")},
                                            "slices": {}}}
    page = html_report.render(report, pngs={}, pipeline=pipeline)
    sens = report["sensitivity"]
    assert (f"<tr><td>sensitivity (COVID recall)</td><td>{sens['value']:.3f}</td><td>{sens['ci95'][0]:.3f} – "
            f"{sens['ci95'][1]:.3f}</td><td>2/3</td></tr>") in page
    assert "0.5000: the note" in page and "; 1 skipped" in page
    # Per source: "a" holds COVID films only (no specificity), "b" normal ones only; the atypical column.
    a, b = report["per_source"]["a"], report["per_source"]["b"]
    assert (f"<td>{a['sensitivity']['value']:.3f} <span class=note>({a['sensitivity']['ci95'][0]:.3f} – "
            f"{a['sensitivity']['ci95'][1]:.3f})</span></td><td>n/a <span class=note>(n/a)</span></td>") in page
    assert (f"<td>n/a <span class=note>(n/a)</span></td><td>{b['specificity']['value']:.3f} <span class=note>"
            f"({b['specificity']['ci95'][0]:.3f} – {b['specificity']['ci95'][1]:.3f})</span></td>") in page
    assert "<th>atypical</th>" in page and "<h2>Per view</h2>" in page
    assert "<h2>Misclassified films (2)</h2>" in page and "<th>patient (pseudonym)</th>" in page
    assert "<p class=warn>SHORTCUT: borders</p>" in page
    assert "TFMA (Evaluator, test split): NOT BLESSED" in page and "<li>AUC 0.700 is below 0.8</li>" in page
    assert "AUC change" not in page and ">nan<" not in page
    assert "<h2>Skipped inputs (1)</h2>" in page and "<td>not an image file</td>" in page


def test_a_source_is_flagged_only_when_its_whole_interval_is_below_the_pooled_one():
    pooled = {"value": 0.97, "ci95": [0.94, 0.99]}
    per_source = {"cohen": {"auc": {"value": 0.40, "ci95": [0.12, 0.75]}},
                  "radiography": {"auc": {"value": 0.93, "ci95": [0.88, 0.96]}},  # overlaps: not flagged
                  "rsna": {"auc": {"value": None, "ci95": None}}}  # one class only: no AUC
    assert metrics.sources_below_pooled_auc(pooled, per_source) == ["cohen"]
    assert metrics.sources_below_pooled_auc({"value": None, "ci95": None}, per_source) == []


def _write_fake_pipeline_root(root):
    """StatisticsGen and ExampleValidator outputs as the TFX executors lay them out (two executions)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

    for execution, n in ((3, 5), (11, 40)):  # the newest (11) must win
        for split in ("train", "test"):
            stats = statistics_pb2.DatasetFeatureStatisticsList()
            ds = stats.datasets.add(num_examples=n)
            label = ds.features.add(type=statistics_pb2.FeatureNameStatistics.STRING)
            label.path.step.append("label")
            label.string_stats.unique = 2
            label.string_stats.common_stats.num_non_missing = n
            label.string_stats.top_values.add(value="covid", frequency=n // 2)
            label.string_stats.top_values.add(value="normal", frequency=n - n // 2)
            age = ds.features.add(type=statistics_pb2.FeatureNameStatistics.INT)
            age.path.step.append("age")
            age.num_stats.mean, age.num_stats.min, age.num_stats.max = 50.0, 18.0, 90.0
            age.num_stats.common_stats.num_non_missing = n
            path = os.path.join(root, "StatisticsGen", "statistics", str(execution), f"Split-{split}")
            os.makedirs(path)
            with open(os.path.join(path, "FeatureStats.pb"), "wb") as f:
                f.write(stats.SerializeToString())
            anomalies = anomalies_pb2.Anomalies()
            if split == "test":
                anomalies.anomaly_info["view"].short_description = "Unexpected string values"
            path = os.path.join(root, "ExampleValidator", "anomalies", str(execution + 1), f"Split-{split}")
            os.makedirs(path)
            with open(os.path.join(path, "SchemaDiff.pb"), "wb") as f:
                f.write(anomalies.SerializeToString())


def test_pipeline_root_statistics_and_anomalies(binary_model, tmp_path):
    root = tmp_path / "root"
    _write_fake_pipeline_root(str(root))
    pipeline = artifacts.read_pipeline(str(root))
    assert pipeline["statistics"]["uri"].endswith(os.path.join("statistics", "11"))
    assert pipeline["statistics"]["splits"]["train"]["num_examples"] == 40
    assert pipeline["statistics"]["splits"]["train"]["features"]["label"]["top_values"] == {"covid": 20, "normal": 20}
    assert pipeline["anomalies"]["splits"] == {"test": ["feature view: Unexpected string values"], "train": []}
    assert "evaluation" not in pipeline and pipeline["errors"] == []
    out = tmp_path / "report"
    result = _run(["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--json", "--no-audit",
                   "--bootstrap", "200", "--out", str(out), "--pipeline-root", str(root)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["pipeline"]["anomalies"]["splits"]["test"] == ["feature view: Unexpected string values"]
    html = (out / "report.html").read_text()
    assert "TFDV statistics" in html and "Unexpected string values" in html
    empty = tmp_path / "not-a-root"
    empty.mkdir()
    result = CliRunner().invoke(cli.main, ["evaluate", "--model", binary_model.serving_dir, "--data", binary_model.data_dir,
                                           "--no-audit", "--bootstrap", "100", "--pipeline-root", str(empty)])
    assert result.exit_code == 2 and f"no pipeline run under '{empty}'" in result.output, result.output


def test_the_push_record_is_read_once_per_evaluation(binary_model, tmp_path, monkeypatch):
    """The gate decision, the Trainer artifact (for the history and the pipeline's evaluation) and the
    Evaluator's output all come from the one push record: read once, at load, not once per use."""
    root = tmp_path / "root"
    _write_fake_pipeline_root(str(root))
    served = testing.push_copy(binary_model.model_dir, str(tmp_path / "serving"), 3,
                               extra={"model_uri": str(root / "Trainer" / "model" / "9")})
    reads = []
    monkeypatch.setattr(predict, "read_push_record", lambda path, read=predict.read_push_record: reads.append(path) or read(path))
    result = _run(["--model", served, "--data", binary_model.data_dir, "--json", "--no-audit", "--bootstrap", "100",
                   "--out", str(tmp_path / "report"), "--pipeline-root", str(root)])
    assert result.exit_code == 0, result.output
    assert reads == [served]
    # A Trainer artifact's export: loading it reads no record (the Pusher writes none there), evaluate its one.
    artifact = tmp_path / "other-root" / "Trainer" / "model" / "9"
    os.makedirs(artifact)
    os.symlink(binary_model.model_dir, artifact / "Format-Serving")
    reads.clear()
    result = _run(["--model", str(artifact), "--data", binary_model.data_dir, "--json", "--no-audit", "--bootstrap",
                   "100", "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert reads == [str(artifact / "Format-Serving")]


def test_the_push_record_of_a_renamed_export_is_read_once_per_evaluation(binary_model, tmp_path, monkeypatch):
    """A pushed version copied under another name (not a number): its version comes from the push record,
    the same one read that serves the gate decision, the history and the pipeline."""
    root = tmp_path / "root"
    _write_fake_pipeline_root(str(root))
    served = testing.push_copy(binary_model.model_dir, str(tmp_path / "serving"), 3,
                               extra={"model_uri": str(root / "Trainer" / "model" / "9")})
    renamed = shutil.copytree(served, tmp_path / "current")
    reads = []
    monkeypatch.setattr(predict, "read_push_record", lambda path, read=predict.read_push_record: reads.append(path) or read(path))
    result = _run(["--model", str(renamed), "--data", binary_model.data_dir, "--json", "--no-audit", "--bootstrap",
                   "100", "--out", str(tmp_path / "report"), "--pipeline-root", str(root)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"]["version"] == 3  # the record's
    assert reads == [str(renamed)]


def test_history_found_next_to_the_trainer_artifact(binary_model, tmp_path, monkeypatch):
    """Without a history in the metadata, the push record's model_uri leads to the model_run dir."""
    root = tmp_path / "root"
    run_dir = root / "Trainer" / "model_run" / "9"
    os.makedirs(run_dir)
    (run_dir / "history.json").write_text(json.dumps({"loss": [0.7, 0.6], "val_loss": [0.8, 0.7], "phase": [1, 1]}))
    served = testing.push_copy(binary_model.model_dir, str(tmp_path / "serving"), 3,
                               extra={"model_uri": str(root / "Trainer" / "model" / "9")})
    with open(os.path.join(served, predict.PUSH_RECORD)) as f:
        record = json.load(f)
    assert record["model_uri"] == str(root / "Trainer" / "model" / "9")
    model = predict.load_model(served)
    model.metadata.pop("history")
    history, source = evaluate.find_history(model)
    assert history["loss"] == [0.7, 0.6] and source.endswith("history.json")
    model_no_record = predict.load_model(binary_model.model_dir)
    model_no_record.metadata.pop("history")
    assert evaluate.find_history(model_no_record)[0] is None
    assert evaluate.find_history(model_no_record, str(root))[0]["val_loss"] == [0.8, 0.7]
    # A model from another root: that root's newest curves are another model's, not this one's.
    other = tmp_path / "another-root" / "Trainer" / "model_run" / "4"
    os.makedirs(other)
    (other / "history.json").write_text(json.dumps({"loss": [0.5], "val_loss": [0.5], "phase": [1]}))
    shutil.rmtree(run_dir)
    assert evaluate.find_history(model, str(tmp_path / "another-root")) == (None, "not found")
    # The run's relative path (the default pipeline root is relative), read from another directory: not
    # another root's model, so the root's newest curves are still found.
    relative = testing.push_copy(binary_model.model_dir, str(tmp_path / "serving-rel"), 4,
                                 extra={"model_uri": "out/root/Trainer/model/9"})
    model = predict.load_model(relative)
    model.metadata.pop("history")
    monkeypatch.chdir(tmp_path / "serving-rel")
    assert evaluate.find_history(model, str(tmp_path / "another-root"))[0]["val_loss"] == [0.5]


def _card(model_path, report):
    """The model card as `evaluate --out` writes it: the gate decision read, then the card."""
    model = predict.load_model(model_path)
    return evaluate.model_card_text(model, report, evaluate.gate_decision(model)[0])


def test_the_evaluation_card_of_a_pushed_model_keeps_its_gate_and_held_out_figures(binary_model, tmp_path):
    gate = {"min_sensitivity": 0.9, "min_specificity": 0.85, "min_auc": 0.0, "max_auc_regression": 0.01}
    served = testing.push_copy(binary_model.model_dir, str(tmp_path / "serving"), 5, extra={
        "gate": gate, "metrics": {"sensitivity": 0.93, "specificity": 0.88, "AUC": 0.95, "examples": 40.0}})
    report = {"data": {"path": "elsewhere", "format": "tfrecords"}, "n": 40, "class_counts": {"normal": 20, "covid": 20},
              "sensitivity": {"value": 0.9, "ci95": [0.7, 0.97], "k": 18, "n": 20},
              "per_source": {"rsna": {"n": 40, "sensitivity": {"value": None}, "specificity": {"value": None},
                                      "auc": {"value": None}}}}
    card = _card(served, report)
    # From the push record: the gate the model passed and its figures on the pipeline's test split.
    assert "- deployment gate on the held-out test split: sensitivity >= 0.9, specificity >= 0.85" in card
    assert "## Held-out test evaluation (BLESSED)" in card and "0.93" in card
    # From this evaluation.
    assert "## Metrics with 95% confidence intervals (elsewhere)" in card and "| rsna | 40 |" in card
    # A model that was never pushed has no gate section, only this evaluation.
    unpushed = _card(binary_model.model_dir, report)
    assert "Held-out test evaluation" not in unpushed and "## Metrics with 95% confidence intervals" in unpushed


def test_a_refused_trainer_artifact_s_card_and_summary_say_what_the_gate_decided(binary_model, tmp_path):
    root = tmp_path / "root"
    artifact = root / "Trainer" / "model" / "9"
    os.makedirs(artifact)
    os.symlink(binary_model.model_dir, artifact / "Format-Serving")
    gate = {"min_sensitivity": 0.9, "min_specificity": 0.85, "min_auc": 0.0, "max_auc_regression": 0.01}
    failure = "sensitivity 0.8500 is below the required minimum 0.9000"

    def decision(execution, model_uri, blessed):
        folder = root / "VersionedPusher" / "pushed_model" / str(execution)
        os.makedirs(folder)
        (folder / "covid_cxr_decision.json").write_text(json.dumps({
            "blessed": blessed, "failures": [] if blessed else [failure], "gate": gate, "model_uri": model_uri,
            "metrics": {"sensitivity": 0.85, "specificity": 0.9, "examples": 40.0}}))
        return folder / "covid_cxr_decision.json"

    # The run named the artifact by its own (relative) path; a newer decision judged another model.
    record = decision(12, "out/root/Trainer/model/9", False)
    decision(13, str(root / "Trainer" / "model" / "10"), True)
    report = {"data": {"path": "elsewhere", "format": "tfrecords"}, "n": 40, "class_counts": {"normal": 20, "covid": 20}}
    card = _card(str(artifact), report)
    assert "## Held-out test evaluation (NOT BLESSED)" in card
    assert f"Gate failures:\n- {failure}" in card
    assert "- deployment gate on the held-out test split: sensitivity >= 0.9, specificity >= 0.85" in card
    result = CliRunner(mix_stderr=False).invoke(cli.main, [
        "evaluate", "--model", str(artifact), "--data", binary_model.data_dir, "--no-audit", "--bootstrap", "100",
        "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output + result.stderr
    assert result.stdout.splitlines()[1] == f"the run's gate decided NOT BLESSED: {failure} ({record})"
    assert "(NOT BLESSED)" in (tmp_path / "report" / "model_card.md").read_text()
    record.write_text("{")  # a damaged record is named, not passed over as "no decision"
    with pytest.raises(ValueError, match=re.escape(f"{record}: not a gate decision record (invalid JSON")):
        _card(str(artifact), report)


def test_an_unpushed_artifact_the_gate_blessed_is_named_so_not_as_unapproved(binary_model, tmp_path, monkeypatch):
    """The Pusher copies nothing when the same model is serving already: its Trainer artifact has no push
    record, but its run's gate blessed it. "no gate approval on file" beside "BLESSED" contradicted itself."""
    root = tmp_path / "root"
    artifact = root / "Trainer" / "model" / "9"
    os.makedirs(artifact)
    os.symlink(binary_model.model_dir, artifact / "Format-Serving")
    folder = root / "VersionedPusher" / "pushed_model" / "12"
    os.makedirs(folder)
    record = folder / "covid_cxr_decision.json"
    record.write_text(json.dumps({"blessed": True, "failures": [], "model_uri": str(artifact),
                                  "metrics": {"sensitivity": 0.95, "specificity": 0.9, "examples": 40.0}}))
    args = ["--data", binary_model.data_dir, "--no-audit", "--bootstrap", "100", "--out", str(tmp_path / "report")]
    reads = []
    monkeypatch.setattr(artifacts, "gate_decision", lambda uri, read=artifacts.gate_decision: reads.append(uri) or read(uri))
    result = CliRunner(mix_stderr=False).invoke(cli.main, ["evaluate", "--model", str(artifact), *args])
    assert result.exit_code == 0, result.output + result.stderr
    assert len(reads) == 1  # one read for the warning, the summary, the report and the model card
    header = result.stdout.splitlines()[0]
    assert header.endswith(f"/Format-Serving (not pushed; the run's gate decided BLESSED (record: {record}))"), header
    assert "no gate approval" not in result.stdout + result.stderr and "decided BLESSED" not in result.stdout.splitlines()[1]
    assert "warning" not in result.stderr, result.stderr
    assert f"not pushed; the run&#x27;s gate decided BLESSED (record: {record})" in \
        (tmp_path / "report" / "report.html").read_text()
    record.write_text(json.dumps({"blessed": True, "failures": [], "model_uri": str(artifact), "pushed": True,
                                  "pushed_destination": "/srv/cvn/17", "metrics": {"sensitivity": 0.95}}))
    pushed = CliRunner(mix_stderr=False).invoke(cli.main, ["evaluate", "--model", str(artifact), *args])
    assert pushed.stdout.splitlines()[0].endswith(
        f"/Format-Serving (served as /srv/cvn/17; the run's gate decided BLESSED (record: {record}))"), pushed.stdout
    assert "served as /srv/cvn/17" in (tmp_path / "report" / "report.html").read_text()
    record.write_text(json.dumps({"blessed": False, "failures": ["too few"], "model_uri": str(artifact),
                                  "metrics": {"sensitivity": 0.5}}))
    refused = CliRunner(mix_stderr=False).invoke(cli.main, ["evaluate", "--model", str(artifact), *args])
    assert "no push record, so no gate approval on file" in refused.stdout.splitlines()[0]
    assert "covid-cxr: warning: model " in refused.stderr  # a refused model keeps its warning


def test_the_run_s_decision_record_speaks_for_a_model_without_a_version_only():
    """A pushed version carries its own record (its version names the approval); a Trainer artifact or bare
    export is named by its run's decision record, when there is one."""
    record, path = {"blessed": False, "failures": ["too few"]}, "/r/VersionedPusher/pushed_model/12/decision.json"
    unversioned, pushed = types.SimpleNamespace(version=None), types.SimpleNamespace(version=3)
    assert evaluate.run_decision(unversioned, record, path) == (record, path)
    assert evaluate.run_decision(pushed, dict(record, blessed=True), "/srv/3/covid_cxr_push.json") is None
    assert evaluate.run_decision(unversioned, {}, None) is None


def test_default_folder_names_follow_the_curation_adapters():
    mapping = evaluate._default_folder_map()
    for folder, finding in (("COVID", "covid"), ("Normal", "normal"), ("NORMAL", "normal"), ("PNEUMONIA", "pneumonia"),
                            ("Viral Pneumonia", "pneumonia"), ("Lung_Opacity", "other_opacity")):
        assert mapping[folder.lower()] == finding
    assert evaluate._finding_of(["train", "NORMAL"], None) == ("normal", 1)
    assert evaluate._finding_of(["COVID", "batch1"], None) == ("covid", 0)
    assert evaluate._finding_of(["misc"], None) == (None, -1)
    assert features.get_task("covid-vs-noncovid").class_of(evaluate._finding_of(["Lung Opacity"], None)[0]) == "noncovid"


def test_evaluating_on_the_training_dataset_is_flagged(tmp_path):
    import types

    summary = {"task": "covid-vs-normal", "accepted": 12, "per_source_class": {"rsna": {"normal": 12}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    trained = types.SimpleNamespace(metadata={"data_summary": dict(summary, patients=9)})
    assert "Split-test" in evaluate.training_data_warning(trained, str(tmp_path))
    other = types.SimpleNamespace(metadata={"data_summary": dict(summary, accepted=40)})
    assert evaluate.training_data_warning(other, str(tmp_path)) is None
    assert evaluate.training_data_warning(types.SimpleNamespace(metadata={}), str(tmp_path)) is None


def test_an_out_folder_that_cannot_be_made_fails_before_the_work(binary_model, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    result = CliRunner().invoke(cli.main, ["evaluate", "--model", binary_model.serving_dir, "--data",
                                           binary_model.data_dir, "--out", str(a_file / "r")])
    assert result.exit_code == 2 and result.output.startswith("covid-cxr: error: --out "), result.output
    assert "is a file" in result.output


def test_class_map_mistakes_are_one_line_and_one_class_is_warned(binary_model, tmp_path):
    records = testing.read_records(binary_model.data_dir)
    image = tf.train.Example.FromString(records[0]).features.feature["image"].bytes_list.value[0]
    for name in ("Positive/a.png", "Positive/b.png"):
        os.makedirs((tmp_path / "tree" / name).parent, exist_ok=True)
        (tmp_path / "tree" / name).write_bytes(image)
    base = ["evaluate", "--model", binary_model.serving_dir, "--data", str(tmp_path / "tree"), "--out", str(tmp_path / "r")]
    for class_map, message in (("", "empty class map"),
                               ("Positive=covid,Healthy=normal", "--class-map names folder(s) Healthy that hold no image"),
                               # as curation matches a map: the folder's exact name, or the same map picks other films
                               ("positive=covid", "--class-map names folder(s) positive that hold no image under "
                                                  f"{str(tmp_path / 'tree')!r} (exact names, case included, as curation")):
        result = CliRunner().invoke(cli.main, [*base, "--class-map", class_map])
        assert result.exit_code == 2 and message in result.output, result.output
    result = CliRunner().invoke(cli.main, [*base, "--class-map", "Positive=covid", "--no-audit"])
    assert result.exit_code == 0, result.output
    assert "covid-cxr: warning: every film is labelled covid: sensitivity or specificity, and AUC, cannot be measured" \
        in result.output


def test_one_class_data_of_another_task_is_refused_as_a_mismatch_not_a_crash(binary_model, three_class_model, tmp_path):
    """Three-class records all of class 2 (covid) against a binary model: the task mismatch in one line,
    not an IndexError from the one-class warning (index 2 of a two-class model)."""
    data = tmp_path / "covid-only"
    data.mkdir()
    shutil.copy(os.path.join(three_class_model.data_dir, features.SUMMARY), data / features.SUMMARY)
    covid = [r for r in testing.read_records(three_class_model.data_dir)
             if tf.train.Example.FromString(r).features.feature[features.LABEL_INDEX].int64_list.value[0] == 2]
    assert covid
    with tf.io.TFRecordWriter(str(data / "records-00000-of-00001.tfrecord.gz"), options="GZIP") as w:
        for record in covid:
            w.write(record)
    result = CliRunner().invoke(cli.main, ["evaluate", "--model", binary_model.serving_dir, "--data", str(data),
                                           "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "curated for task 'three-class'" in result.output


def test_a_film_that_fails_outside_the_decoders_is_skipped_as_curation_rejects_it(binary_model, tmp_path, monkeypatch):
    """Out of memory on one huge film (or any failure images.process does not turn into an ImageError):
    skipped with curation's reason, as predict and curate treat it, not the end of the evaluation."""
    records = testing.read_records(binary_model.data_dir)
    root = tmp_path / "tree"
    for i, r in enumerate(records):
        feats = tf.train.Example.FromString(r).features.feature
        folder = {"covid": "COVID", "normal": "Normal"}[feats["label"].bytes_list.value[0].decode()]
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"img{i}.png").write_bytes(feats["image"].bytes_list.value[0])
    huge = root / "COVID" / "img0.png" if (root / "COVID" / "img0.png").exists() else root / "Normal" / "img0.png"
    process = images.process

    def out_of_memory(path, *args, **kwargs):
        if os.path.basename(path) == huge.name:
            raise MemoryError()
        return process(path, *args, **kwargs)

    monkeypatch.setattr(images, "process", out_of_memory)
    result = _run(["--model", binary_model.serving_dir, "--data", str(root), "--json", "--bootstrap", "200",
                   "--no-audit", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["n"] == len(records) - 1
    assert [s["reason"] for s in report["data"]["skipped_files"]] == ["unreadable image: image too large (out of memory)"]


def test_a_damaged_history_file_costs_the_training_curves_not_the_evaluation(binary_model, tmp_path):
    """A truncated history.json: the report goes on without curves and says which file, as for any broken
    artifact under --pipeline-root, not a bare "Expecting value: line 1 column 1" that ends the command."""
    root = tmp_path / "root"
    run_dir = root / "Trainer" / "model_run" / "9"
    os.makedirs(run_dir)
    (run_dir / "history.json").write_text('{"loss": [0.7,')
    served = testing.push_copy(binary_model.model_dir, str(tmp_path / "serving"), 3,
                               extra={"model_uri": str(root / "Trainer" / "model" / "9")})
    model = predict.load_model(served)
    model.metadata.pop("history")
    history, source = evaluate.find_history(model)
    assert history is None and str(run_dir / "history.json") in source and "not a training history" in source
    history, source = artifacts.newest_history(str(root))
    assert history is None
    (run_dir / "history.json").write_text("[0.7, 0.6]")  # JSON, but not the history's object
    history, source = evaluate.find_history(model)
    assert history is None and "not a training history" in source


def test_a_plot_this_evaluation_has_not_does_not_stay_from_an_earlier_report(binary_model, tmp_path, monkeypatch):
    """Re-run into the same --out: errors.png / training_curves.png of an earlier evaluation (other films,
    another model) must not sit beside a report that has no misclassified films or no history."""
    out = tmp_path / "report"
    out.mkdir()
    for name in (evaluate.ERRORS_PNG, evaluate.HISTORY_PNG):
        (out / name).write_bytes(b"an earlier evaluation's plot")
    make_plots = evaluate.make_plots
    monkeypatch.setattr(evaluate, "make_plots", lambda ev: {k: v for k, v in make_plots(ev).items()
                                                            if k not in (evaluate.ERRORS_PNG, evaluate.HISTORY_PNG)})
    result = _run(["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--no-audit",
                   "--bootstrap", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["confusion_matrix.png", "model_card.md", "report.html", "report.json", "roc.png"]


def test_the_evaluator_section_of_another_pipeline_root_is_not_shown_as_this_models(tmp_path, monkeypatch):
    """`evaluate --model <a pushed model> --pipeline-root <another run's root>`: that root's newest TFMA
    figures judged another model and sat in the report beside this model's own, disagreeing."""
    root = tmp_path / "root"
    _write_fake_pipeline_root(str(root))
    monkeypatch.setattr(artifacts, "read_evaluation", lambda *args: {"uri": "e", "blessed": False, "metrics": {}})
    own = artifacts.read_pipeline(str(root), str(root / "Trainer" / "model" / "9"))
    assert own["evaluation"]["uri"] == "e" and own["errors"] == []
    other = str(tmp_path / "other-root" / "Trainer" / "model" / "9")
    pipeline = artifacts.read_pipeline(str(root), other)
    assert "evaluation" not in pipeline and "statistics" in pipeline
    assert pipeline["errors"] == [f"evaluation: not shown: the model was trained under another pipeline root ({other}), "
                                  "so this root's Evaluator judged another model"]


def _no_model_load(monkeypatch):
    """A refused --out is refused before the model loads (a minute on a busy machine), not after."""
    monkeypatch.setattr(predict, "load_model", lambda path: pytest.fail(f"the model was loaded ({path})"))


def _unloadable_model_and_tree(tmp_path, monkeypatch):
    """A model folder that `--model` accepts and that must not load, and a folder tree `tree/COVID/a.png`."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")
    data_testing.write_image(tmp_path / "tree" / "COVID" / "a.png", data_testing.radiograph(1))
    _no_model_load(monkeypatch)
    return model


def test_a_bad_class_map_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """`--class-map COVID=banana` was refused only after the model had loaded (half a minute or more)."""
    model = _unloadable_model_and_tree(tmp_path, monkeypatch)
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "records-00000-of-00001.tfrecord.gz").write_bytes(b"")
    for data, class_map, message in (
            ("tree", "COVID=banana", "bad class map entry 'COVID=banana': finding must be one of"),
            ("tree", "COVID", "bad class map entry 'COVID': expected FOLDER=FINDING"),
            ("records", "sick=covid", "--class-map applies to folder trees, not to TFRecords")):
        result = CliRunner().invoke(cli.main, ["evaluate", "--model", str(model), "--data", str(tmp_path / data),
                                               "--class-map", class_map, "--out", str(tmp_path / "r")])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and len(result.output) < 300


def test_folder_tree_options_on_tfrecords_are_refused_not_ignored(tmp_path, monkeypatch):
    """--max-side, --equalize and --key prepare and name a folder tree's files: on TFRecords (already curated,
    already pseudonymous) they were ignored without a word, a 5-character --key included; --class-map was refused."""
    model = _unloadable_model_and_tree(tmp_path, monkeypatch)
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "records-00000-of-00001.tfrecord.gz").write_bytes(b"")
    for option in (["--max-side", "256"], ["--equalize", "clahe"], ["--key", "short"]):
        result = CliRunner().invoke(cli.main, ["evaluate", "--model", str(model), "--data", str(tmp_path / "records"),
                                               *option, "--out", str(tmp_path / "r")])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            f"covid-cxr: error: Invalid value for {option[0]}: {option[0]} applies to folder trees, not to TFRecords "
            "(see `main evaluate --help`)"]


def test_a_pipeline_root_with_no_run_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """`--data X --pipeline-root <a typo>` ran the whole evaluation, then refused the root and lost it."""
    model = _unloadable_model_and_tree(tmp_path, monkeypatch)
    (tmp_path / "empty").mkdir()
    for root, message in ((tmp_path / "gone", f"pipeline root '{tmp_path / 'gone'}' does not exist"),
                          (tmp_path / "empty", f"no pipeline run under '{tmp_path / 'empty'}'")):
        for data in (["--data", str(tmp_path / "tree")], []):
            result = CliRunner().invoke(cli.main, ["evaluate", "--model", str(model), *data, "--pipeline-root",
                                                   str(root), "--out", str(tmp_path / "r")])
            assert result.exit_code == 2 and message in result.output, result.output
            assert len(result.output.strip().splitlines()) == 1


def test_the_report_is_not_written_into_the_model_or_its_serving_directory(binary_model, tmp_path, monkeypatch):
    """`--out` = the pushed version: its model_card.md (the Pusher's, with the gate's figures) was replaced
    by this evaluation's; `--out` = the serving directory: report files among TF Serving's versions."""
    served = testing.push_copy(binary_model.model_dir, str(tmp_path / "serving"), 3)
    _no_model_load(monkeypatch)
    card = os.path.join(served, "model_card.md")
    pathlib.Path(card).write_text("the pushed card")
    for out in (served, os.path.join(served, "report"), str(tmp_path / "serving")):
        result = CliRunner().invoke(cli.main, ["evaluate", "--model", str(tmp_path / "serving"), "--data",
                                               binary_model.data_dir, "--no-audit", "--bootstrap", "100", "--out", out])
        assert result.exit_code == 2 and "choose another folder" in result.output, result.output
    assert pathlib.Path(card).read_text() == "the pushed card"
    assert sorted(os.listdir(tmp_path / "serving")) == ["3"]


def test_the_report_is_not_written_into_another_version_of_the_serving_directory(binary_model, tmp_path, monkeypatch):
    """`--model serving/2 --out serving/3` replaced version 3's pushed model_card.md; `--out serving/report`
    put report files among TF Serving's versions."""
    serving = str(tmp_path / "serving")
    older = testing.push_copy(binary_model.model_dir, serving, 2)
    newer = testing.push_copy(binary_model.model_dir, serving, 3)
    _no_model_load(monkeypatch)
    card = os.path.join(newer, "model_card.md")
    pathlib.Path(card).write_text("the pushed card")
    for out in (newer, os.path.join(serving, "report")):
        result = CliRunner().invoke(cli.main, ["evaluate", "--model", older, "--data", binary_model.data_dir,
                                               "--no-audit", "--bootstrap", "100", "--out", out])
        assert result.exit_code == 2 and "choose another folder" in result.output, result.output
    assert pathlib.Path(card).read_text() == "the pushed card"
    assert sorted(os.listdir(serving)) == ["2", "3"]


def test_the_report_is_not_written_into_the_models_trainer_artifact(binary_model, tmp_path, monkeypatch):
    """`--model root/Trainer/model/9 --out root/Trainer/model/9/rep`: beside Format-Serving (the SavedModel),
    not in it, so the report went into the TFX artifact; with --model its Format-Serving too."""
    artifact = tmp_path / "root" / "Trainer" / "model" / "9"
    artifact.mkdir(parents=True)
    shutil.copytree(binary_model.model_dir, artifact / "Format-Serving")
    _no_model_load(monkeypatch)
    for model in (artifact, artifact / "Format-Serving"):
        for out in (artifact / "rep", artifact, artifact / "rep" / "deeper"):
            result = CliRunner().invoke(cli.main, ["evaluate", "--model", str(model), "--data", binary_model.data_dir,
                                                   "--no-audit", "--bootstrap", "100", "--out", str(out)])
            assert result.exit_code == 2 and "choose another folder" in result.output, result.output
            assert "TFX artifact" in result.output and "Traceback" not in result.output, result.output
            assert len(result.output.strip().splitlines()[-1]) < 300, result.output
    assert sorted(os.listdir(artifact)) == ["Format-Serving"]


def test_the_html_page_shows_this_reports_threshold_counts_and_table_columns():
    import html

    from covid_cxr.evaluation import html_report
    from covid_cxr.serving import typicality

    task = features.TASKS["covid-vs-normal"]
    pos = task.positive_index
    labels = np.array([pos] * 4 + [1 - pos] * 2)
    covid = np.array([0.9, 0.8, 0.45, 0.2, 0.1, 0.6])
    outputs = {"label_index": np.where(covid > 0.4, pos, 1 - pos), "covid_probability": covid,
               "probabilities": np.stack([1 - covid, covid] if pos == 1 else [covid, 1 - covid], axis=1),
               "atypical": np.array([0, 1, 0, 0, 0, 0], bool)}
    report = evaluate.compute(task, labels, outputs, n_boot=100, slices={features.SOURCE: ["a"] * 3 + ["b"] * 3})
    entry = {"index": 3, "ref": "r3", "true": "covid", "predicted": "normal", "covid_probability": 0.2, "view": "AP"}
    report.update(task=task.name, threshold=0.4, threshold_note="chosen", data={"path": "d", "format": "folders", "skipped": 2},
                  model={"path": "m", "version": None, "gate_decision": {"blessed": True, "record": "rec.json"}},
                  errors={"n": 120, "order": "o", "listed": [entry]})  # more errors than the page lists
    pipeline = {"root": "r", "anomalies": {"uri": "a", "splits": {"train": [], "eval": []}},
                "evaluation": {"uri": "u", "blessed": True, "failures": [], "metrics": {"examples": 200.0}, "slices": {}}}
    page = html_report.render(report, pngs={}, pipeline=pipeline)
    assert "<td>0.4000: chosen</td>" in page
    counts = ", ".join(f"{k} {v}" for k, v in report["class_counts"].items())
    assert f"<td>{report['n']} ({counts}); 2 skipped</td>" in page  # no "0 hidden ..." when none were
    auc = report["auc"]
    assert (auc["n_positive"], auc["n_negative"]) == (4, 2)
    assert "<td>4 pos / 2 neg</td></tr>" in page
    cm = report["confusion_matrix"]
    assert len({tuple(row) for row in cm["matrix"]}) == 2  # the rows differ: each must sit beside its class
    for c, row in zip(cm["classes"], cm["matrix"]):
        assert "<tr><td>" + c + "</td>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" in page
    a = report["per_source"]["a"]  # COVID films only: an accuracy, no AUC
    assert f"<td>{a['accuracy']['value']:.3f}</td><td>n/a</td>" in page
    assert "<h2>Misclassified films (120)</h2>" in page
    assert html.escape(predict.approval_text(None, "rec.json")) in page  # the gate's BLESSED, not "not pushed" alone
    assert "<th>view</th>" in page and "<td>AP</td></tr>" in page  # each listed film's view
    assert html.escape(typicality.rate_text(report["atypical"])) in page
    assert "<p class=ok>No anomalies in splits train, eval.</p>" in page
    assert "<tr><td>overall</td><td>200</td></tr>" in page  # TFMA's example count, a whole number


def _three_class_argmax_outputs(task, films_per_class):
    """(labels, outputs) of a three-class argmax model that leans to each film's true class."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), films_per_class)
    probabilities = rng.dirichlet(np.ones(3), size=labels.size) + np.eye(3)[labels] * 0.5
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return labels, {"label_index": probabilities.argmax(1), "probabilities": probabilities,
                    "covid_probability": probabilities[:, task.positive_index]}


def test_the_html_three_class_table_gives_each_class_its_own_recall_and_specificity():
    from covid_cxr.evaluation import html_report

    task = features.TASKS["three-class"]
    labels, outputs = _three_class_argmax_outputs(task, 10)
    report = evaluate.compute(task, labels, outputs, n_boot=50)
    report.update(task=task.name, threshold=0.5, threshold_note="n", model={"path": "m", "version": 1},
                  data={"path": "d", "format": "tfrecords", "skipped": 0})
    page = html_report.render(report, pngs={})
    for c, m in report["multiclass"]["per_class"].items():
        sens, spec = m["sensitivity"], m["specificity"]
        assert sens["value"] != spec["value"]
        assert (f"<tr><td>{c}</td><td>{m['support']}</td><td>{sens['value']:.3f} ({sens['ci95'][0]:.3f} – "
                f"{sens['ci95'][1]:.3f})</td><td>{spec['value']:.3f} ({spec['ci95'][0]:.3f} – {spec['ci95'][1]:.3f})</td>") in page


def _binary_outputs(task, covid, threshold=0.5):
    pos = task.positive_index
    covid = np.asarray(covid, np.float64)
    return {"label_index": np.where(covid > threshold, pos, 1 - pos), "covid_probability": covid,
            "probabilities": np.stack([1 - covid, covid] if pos == 1 else [covid, 1 - covid], axis=1)}


def test_each_sources_row_counts_its_own_films_in_source_order():
    """Per source: its own class counts and accuracy (correct films of its own), sources in sorted order; patient
    intervals only when some patient has several films; no empty per-slice table beside the per-source one."""
    task = features.TASKS["covid-vs-normal"]
    pos = task.positive_index
    labels = np.array([pos, pos, 1 - pos, pos, 1 - pos, 1 - pos, 1 - pos])
    outputs = _binary_outputs(task, [0.9, 0.2, 0.1, 0.8, 0.7, 0.3, 0.2])
    sources = ["z", "z", "z", "a", "a", "a", "a"]
    report = evaluate.compute(task, labels, outputs, n_boot=100, slices={features.SOURCE: sources},
                              groups=[f"g{i}" for i in range(7)])
    assert list(report["per_source"]) == ["a", "z"]
    z, a = report["per_source"]["z"], report["per_source"]["a"]
    assert (z["class_counts"], a["class_counts"]) == ({"normal": 1, "covid": 2}, {"normal": 3, "covid": 1})
    assert ((z["accuracy"]["k"], z["accuracy"]["n"]), (a["accuracy"]["k"], a["accuracy"]["n"])) == ((2, 3), (3, 4))
    assert "slices" not in report and "patient_bootstrap" not in report  # seven films, seven patients
    shared = evaluate.compute(task, labels, outputs, n_boot=100, groups=["g0", "g0", *[f"g{i}" for i in range(2, 7)]])
    assert shared["patient_bootstrap"]["patients"] == 6


def test_three_class_macro_auc_is_none_when_a_class_has_no_films():
    task = features.TASKS["three-class"]
    labels = np.array([0, 0, 0, 2, 2, 2])  # no pneumonia films: its one-vs-rest AUC cannot be measured
    probabilities = np.array([[0.7, 0.2, 0.1], [0.6, 0.1, 0.3], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6], [0.1, 0.3, 0.6],
                              [0.5, 0.1, 0.4]])
    outputs = {"label_index": probabilities.argmax(1), "covid_probability": probabilities[:, 2],
               "probabilities": probabilities}
    report = evaluate.compute(task, labels, outputs, n_boot=50)
    assert report["multiclass"]["per_class"]["pneumonia"]["auc"]["value"] is None
    assert report["multiclass"]["macro_auc"] is None


def test_three_class_per_class_auc_intervals_resample_with_the_seed_asked_for():
    """The COVID one-vs-rest AUC is in the report twice (overall and per class): one seed, one interval."""
    task = features.TASKS["three-class"]
    labels, outputs = _three_class_argmax_outputs(task, 20)
    report = evaluate.compute(task, labels, outputs, n_boot=200, seed=7)
    per_class = report["multiclass"]["per_class"]
    assert per_class[features.COVID]["auc"] == report["auc"]
    assert all("seed 7" in per_class[c]["auc"]["method"] for c in task.classes)


def test_json_safe_turns_non_finite_numbers_into_null_inside_tuples_too():
    value = {"ci95": (np.float64("nan"), 0.5), "x": [float("inf")], 1: np.int64(3)}
    assert evaluate.json_safe(value) == {"ci95": [None, 0.5], "x": [None], "1": 3}
    json.dumps(evaluate.json_safe(value), allow_nan=False)


def _summary_report(task, labels, outputs, **extra):
    report = evaluate.compute(task, labels, outputs, n_boot=50, slices=extra.pop("slices", None))
    report.update(task=task.name, threshold=0.5, threshold_note="the note", model={"path": "m", "version": 3},
                  data={"path": "d", "format": "tfrecords", "skipped": 0}, **extra)
    return report


def test_the_terminal_summary_lines_follow_the_report():
    """The confusion matrix's rows beside their classes, each source's own figures, the three most confidently
    wrong films, the data warning and the written files; three-class adds macro-F1."""
    task = features.TASKS["covid-vs-normal"]
    pos = task.positive_index
    labels = np.array([pos] * 4 + [1 - pos] * 2)
    outputs = _binary_outputs(task, [0.9, 0.8, 0.45, 0.2, 0.1, 0.6], threshold=0.4)
    outputs["atypical"] = np.array([0, 1, 0, 0, 0, 0], bool)
    wrong = [{"index": i, "ref": f"r{i}", "true": "covid", "predicted": "normal", "covid_probability": 0.1}
             for i in range(4)]
    report = _summary_report(task, labels, outputs, slices={features.SOURCE: ["a"] * 3 + ["b"] * 3},
                             errors={"n": 4, "order": "o", "listed": wrong},
                             files={"report.html": "out/report.html", "model_card.md": "out/model_card.md"})
    report["data"]["warning"] = "this is the curated dataset the model was trained on"
    lines = evaluate.summary_text(report).splitlines()
    cm = report["confusion_matrix"]
    assert len({tuple(row) for row in cm["matrix"]}) == 2
    width = max(len(c) for c in cm["classes"]) + 2
    for c, row in zip(cm["classes"], cm["matrix"]):
        assert f"  {c:<{width}}" + "".join(f"{v:>{width}}" for v in row) in lines
    a, b = report["per_source"]["a"], report["per_source"]["b"]
    assert (f"  source b: n=3 sensitivity {evaluate._fmt(b['sensitivity'])}; specificity "
            f"{evaluate._fmt(b['specificity'])}; AUC within the source {evaluate._fmt(b['auc'])}; atypical 0") in lines
    assert b["sensitivity"]["value"] != b["specificity"]["value"] and a["atypical"] == 1
    assert any(line.startswith("  source a: n=3 ") and line.endswith("; atypical 1") for line in lines)
    assert ("misclassified: 4; most confidently wrong: " + "; ".join(
        f"r{i} covid -> normal ({errors.odds(wrong[i])})" for i in range(3))) in lines
    assert "WARNING: this is the curated dataset the model was trained on" in lines
    assert lines[-2:] == ["report: out/report.html", "model card with this evaluation: out/model_card.md"]
    right = _summary_report(task, labels, outputs, errors={"n": 0, "order": "o", "listed": []})
    assert not any(line.startswith(("misclassified", "WARNING", "report:")) for line in evaluate.summary_text(right).splitlines())
    three = features.TASKS["three-class"]
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.1, 0.2, 0.7], [0.3, 0.5, 0.2]])
    report = _summary_report(three, np.array([0, 1, 2, 0]), {"label_index": probabilities.argmax(1),
                                                             "covid_probability": probabilities[:, 2],
                                                             "probabilities": probabilities})
    assert f"  macro-F1    {report['multiclass']['macro_f1']:.3f}" in evaluate.summary_text(report).splitlines()


def test_the_roc_point_and_the_galleries_title_follow_the_report(monkeypatch):
    """The ROC marks the served decision at (1 - specificity, sensitivity); three-class draws COVID vs rest and
    each other class once; the gallery's title counts the thumbnails it can show of all the errors."""
    from covid_cxr.evaluation import plots

    drawn = {}
    monkeypatch.setattr(plots, "roc_png", lambda curves, point, title, point_label: drawn.update(curves=curves, point=point) or b"roc")
    monkeypatch.setattr(plots, "confusion_png", lambda *args: b"cm")
    monkeypatch.setattr(errors, "gallery_png", lambda images, listed, title: drawn.update(title=title) or b"gallery")
    task = features.TASKS["covid-vs-normal"]
    pos = task.positive_index
    labels = np.array([pos] * 4 + [1 - pos] * 6)
    outputs = _binary_outputs(task, [0.9, 0.8, 0.7, 0.2, 0.1, 0.2, 0.3, 0.1, 0.6, 0.2])
    report = evaluate.compute(task, labels, outputs, n_boot=50)
    report["errors"] = {"n": 30, "listed": [{"index": 0}] * 30}
    evaluation = evaluate.Evaluation(report, labels, outputs["label_index"], outputs["probabilities"],
                                     outputs["covid_probability"], task, images=[b"png"] * 10)
    assert set(evaluate.make_plots(evaluation)) == {evaluate.ROC_PNG, evaluate.CONFUSION_PNG, evaluate.ERRORS_PNG}
    assert drawn["point"] == pytest.approx((1 - 5 / 6, 3 / 4))
    assert drawn["title"] == f"Misclassified: {errors.MAX_GALLERY} of 30, most confidently wrong first"
    three = features.TASKS["three-class"]
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2], [0.1, 0.2, 0.7], [0.3, 0.5, 0.2]])
    labels = np.array([0, 1, 2, 0])
    report = evaluate.compute(three, labels, {"label_index": probabilities.argmax(1),
                                              "covid_probability": probabilities[:, 2], "probabilities": probabilities},
                              n_boot=50)
    evaluate.make_plots(evaluate.Evaluation(report, labels, probabilities.argmax(1), probabilities, probabilities[:, 2],
                                            three))
    assert [name for name, _, _ in drawn["curves"]] == ["covid vs rest", "normal vs rest", "pneumonia vs rest"]


def test_the_roc_point_is_named_by_the_decision_the_model_makes(monkeypatch):
    """A model thresholding P(covid) marks its stored threshold; an older three-class model, whose label is
    the argmax and which stores no COVID threshold, marks its argmax decision, not a threshold it lacks."""
    from covid_cxr.evaluation import plots

    labels_drawn = []
    monkeypatch.setattr(plots, "roc_png", lambda curves, point, title, point_label: labels_drawn.append(point_label) or b"roc")
    monkeypatch.setattr(plots, "confusion_png", lambda *args: b"cm")
    three = features.TASKS["three-class"]
    labels, outputs = _three_class_argmax_outputs(three, 4)
    binary = features.TASKS["covid-vs-normal"]
    binary_labels = np.array([binary.positive_index, 1 - binary.positive_index] * 4)
    cases = [(three, labels, None, {"classes": list(three.classes)}, outputs),  # exported before the threshold rule
             (three, labels, 0.4, {"classes": list(three.classes), "decision_rule": model_metadata.COVID_THRESHOLD_RULE},
              outputs),
             (binary, binary_labels, 0.5, {"classes": list(binary.classes)},
              _binary_outputs(binary, [0.9, 0.2, 0.7, 0.4, 0.6, 0.1, 0.3, 0.8]))]
    for task, task_labels, threshold, metadata, model_outputs in cases:
        outputs_with_threshold = dict(model_outputs, threshold=np.full(task_labels.size, 0.5))
        model = types.SimpleNamespace(task=task, threshold=threshold, metadata=metadata, path="m", version=1,
                                      predict_images=lambda images, o=outputs_with_threshold: o)
        data = evaluate.EvalData("d", "folders", task.name, [b"png"] * task_labels.size, task_labels,
                                 [f"g{i}" for i in range(task_labels.size)], [f"r{i}" for i in range(task_labels.size)], {})
        evaluation = evaluate.evaluate(model, data, n_boot=20, audit=False)
        evaluation.images = None  # no gallery: the films are not real images
        evaluate.make_plots(evaluation)
    assert labels_drawn == [plots.ARGMAX_DECISION, plots.STORED_THRESHOLD, plots.STORED_THRESHOLD]


def test_a_report_written_without_a_model_has_no_model_card(tmp_path):
    task = features.TASKS["covid-vs-normal"]
    pos = task.positive_index
    labels = np.array([pos, pos, 1 - pos, 1 - pos])
    outputs = _binary_outputs(task, [0.9, 0.2, 0.1, 0.3])
    report = _summary_report(task, labels, outputs)
    evaluation = evaluate.Evaluation(report, labels, outputs["label_index"], outputs["probabilities"],
                                     outputs["covid_probability"], task)
    files = evaluate.write_report(evaluation, str(tmp_path / "out"))
    assert sorted(files) == ["confusion_matrix.png", "report.html", "report.json", "roc.png"]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(files)


def test_a_pushed_version_whose_record_holds_no_figures_is_judged_by_its_runs_decision(monkeypatch):
    """An older push record (no metrics) does not stand for the gate's verdict: the run's decision record on its
    Trainer artifact does."""
    run = ({"blessed": False, "failures": ["too few"]}, "/r/VersionedPusher/pushed_model/12/covid_cxr_decision.json")
    asked = []
    monkeypatch.setattr(artifacts, "gate_decision", lambda uri: asked.append(uri) or run)
    model = types.SimpleNamespace(path="/srv/3", version=3, push_record={"model_uri": "/r/Trainer/model/9", "version": 3})
    assert evaluate.gate_decision(model) == run
    assert asked == ["/r/Trainer/model/9"]
    model.push_record = {"model_uri": "/r/Trainer/model/9", "metrics": {"AUC": 0.9}}
    pushed = evaluate.gate_decision(model)
    assert pushed == ({"model_uri": "/r/Trainer/model/9", "metrics": {"AUC": 0.9}, "blessed": True},
                      os.path.join("/srv/3", predict.PUSH_RECORD))


def test_the_held_out_split_is_a_runs_newest_split_test(tmp_path):
    root = tmp_path / "root"
    (root / "ImportExampleGen" / "examples" / "4" / "Split-test").mkdir(parents=True)
    (root / "ImportExampleGen" / "examples" / "4" / "Split-test" / "data_tfrecord-00000-of-00001.gz").write_bytes(b"")
    assert evaluate.held_out_split(str(root)) == str(root / "ImportExampleGen" / "examples" / "4" / "Split-test")
    (root / "ImportExampleGen" / "examples" / "7" / "Split-train").mkdir(parents=True)  # newest, without a test split
    with pytest.raises(click.BadParameter, match="no ImportExampleGen test split under"):
        evaluate.held_out_split(str(root))
    with pytest.raises(click.UsageError, match="pass --data DIR, or --pipeline-root DIR"):
        evaluate.held_out_split(None)


def test_a_runs_split_folder_and_an_empty_one_are_read_as_tfrecords(tmp_path):
    """ExampleGen names its shards data_tfrecord-*.gz: `evaluate --data <root>/.../Split-test` reads them; a
    folder of shards holding no record is refused in one line."""
    from covid_cxr.data import synthetic

    synthetic.generate(str(tmp_path / "curated"), "covid-vs-normal", patients_per_class=2, seed=0)
    records = testing.read_records(str(tmp_path / "curated"))
    split = tmp_path / "Split-test"
    split.mkdir()
    edited = []
    for i, record in enumerate(records):  # a duplicate group spanning patients; records without a group
        example = tf.train.Example.FromString(record)
        feats = example.features.feature
        if i < 2:
            feats[features.GROUP].bytes_list.value[:] = [b"dup-1"]
        elif i == 2:
            del feats[features.GROUP]
        elif i == 3:
            del feats[features.GROUP], feats[features.PATIENT_ID]
        feats[features.VIEW].bytes_list.value[:] = [b"PA" if i == 0 else features.UNKNOWN.encode()]
        del feats[features.SEX]
        edited.append(example.SerializeToString())
    with tf.io.TFRecordWriter(str(split / "data_tfrecord-00000-of-00001.gz"), options="GZIP") as w:
        for record in edited:
            w.write(record)
    assert evaluate.is_tfrecord_dir(str(split))
    data = evaluate.load_tfrecords(str(split))
    assert data.n == len(records) and data.refs[-1] == f"record {len(records) - 1}"
    patient = tf.train.Example.FromString(records[2]).features.feature[features.PATIENT_ID].bytes_list.value[0].decode()
    assert data.groups[:4] == ["dup-1", "dup-1", patient, "record-3"]
    # A slice known for some films only is kept (the rest "unknown"); one known for none is dropped.
    assert data.slices[features.VIEW] == ["PA"] + [features.UNKNOWN] * (len(records) - 1)
    assert features.SEX not in data.slices
    empty = tmp_path / "empty"
    empty.mkdir()
    with tf.io.TFRecordWriter(str(empty / "data_tfrecord-00000-of-00001.gz"), options="GZIP"):
        pass
    with pytest.raises(ValueError, match=re.escape(f"no records in {str(empty)!r}")):
        evaluate.load_tfrecords(str(empty))


def test_the_training_data_warning_needs_the_same_films_per_source(tmp_path):
    """As many films of the task, but from other sources: another dataset, not the one trained on."""
    summary = {"task": "covid-vs-normal", "accepted": 12, "per_source_class": {"rsna": {"normal": 12}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    other = types.SimpleNamespace(metadata={"data_summary": dict(summary, per_source_class={"cohen": {"normal": 12}})})
    assert evaluate.training_data_warning(other, str(tmp_path)) is None
    assert evaluate.training_data_warning(types.SimpleNamespace(metadata={"data_summary": summary}), str(tmp_path))


def test_an_out_folder_beside_the_model_or_its_serving_directory_is_fine(tmp_path):
    """Only the model's own folder and its serving directory are refused: a sibling whose name starts like the
    serving directory's, or a folder beside an exported model that is no version, is not."""
    (tmp_path / "serving" / "3").mkdir(parents=True)
    (tmp_path / "export").mkdir()
    evaluate.check_out_beside_model(str(tmp_path / "serving-report"), str(tmp_path / "serving" / "3"))
    evaluate.check_out_beside_model(str(tmp_path / "report"), str(tmp_path / "export"))
    with pytest.raises(click.BadParameter, match="is its serving directory"):
        evaluate.check_out_beside_model(str(tmp_path / "serving"), str(tmp_path / "serving" / "3"))
    with pytest.raises(click.BadParameter, match="is the model's own folder"):  # a folder inside an export
        evaluate.check_out_beside_model(str(tmp_path / "export" / "report"), str(tmp_path / "export"))


def test_covid19_folders_are_covid_by_default():
    assert evaluate._finding_of(["COVID19", "x"], None) == ("covid", 0)
    assert evaluate._finding_of(["covid-19"], None) == ("covid", 0)


def test_a_folder_trees_patients_are_named_by_file_within_their_folder(tmp_path):
    """Kermany's person<N>_ films of one folder are one patient; the same file name in two class folders is two."""
    root = tmp_path / "tree"
    for i, name in enumerate(("COVID/person3_virus_1.png", "COVID/person3_virus_2.png", "COVID/img1.png",
                              "Normal/img1.png")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data_testing.radiograph(i)).save(root / name)
    data = evaluate.load_folders(str(root), features.get_task("covid-vs-normal"))
    assert data.n == 4
    assert len(set(data.groups)) == 3
    assert data.groups.count(os.path.join("COVID", "person3")) == 2


def test_a_class_map_on_tfrecords_is_refused_and_the_training_data_warning_reaches_the_report(
        binary_model, tmp_path, monkeypatch):
    args = ["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--no-audit", "--bootstrap", "100",
            "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(cli.main, ["evaluate", *args, "--class-map", "sick=covid"])
    assert result.exit_code == 2 and "--class-map applies to folder trees, not to TFRecords" in result.output, result.output
    monkeypatch.setattr(evaluate, "training_data_warning", lambda model, data_dir: "trained on these films")
    result = CliRunner(mix_stderr=False).invoke(cli.main, ["evaluate", *args, "--json"])
    assert result.exit_code == 0, result.output + result.stderr
    assert json.loads(result.stdout)["data"]["warning"] == "trained on these films"
    assert "covid-cxr: warning: trained on these films" in result.stderr
    assert "every film is labelled" not in result.stderr  # both classes are there


def test_a_dicoms_patient_id_is_grouped_by_its_pseudonym_only(tmp_path):
    """Films of one DICOM PatientID are one patient group, named by a keyed pseudonym: the raw id is in no field
    load_folders returns."""
    root = tmp_path / "tree"
    for i, (folder, patient) in enumerate((("COVID", "MRN-4711"), ("COVID", "MRN-4711"), ("Normal", "MRN-0815"))):
        data_testing.write_dicom(root / folder / f"film{i}.dcm", data_testing.radiograph(i), patient_id=patient)
    data = evaluate.load_folders(str(root), features.get_task("covid-vs-normal"))
    assert data.n == 3 and len(set(data.groups)) == 2 and data.groups[0] == data.groups[1]
    assert not any("MRN" in str(value) for value in (*data.groups, *data.refs, data.slices))


def test_the_shortcut_audit_takes_covid_as_its_positive_class():
    """evaluate() hands the audit COVID films as positives: its counts are the report's COVID count."""
    task = features.TASKS["covid-vs-normal"]
    pos = task.positive_index
    encoded = []
    for i in range(12):
        buffer = io.BytesIO()
        Image.fromarray(data_testing.radiograph(i, border=8 if i < 3 else 0)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    labels = np.array([pos] * 3 + [1 - pos] * 9)
    covid = np.linspace(0.9, 0.1, 12)
    model = types.SimpleNamespace(task=task, threshold=0.5, metadata={}, path="m", version=1,
                                  predict_images=lambda images: _binary_outputs(task, covid))
    data = evaluate.EvalData("d", "folders", None, encoded, labels, [f"g{i}" for i in range(12)],
                             [f"r{i}" for i in range(12)], {})
    report = evaluate.evaluate(model, data, n_boot=100).report
    audit = report["shortcut_audit"]
    assert report["class_counts"]["covid"] == audit["n_positive"] == 3 and audit["n"] == 12


def test_the_scripts_one_line_errors_cover_os_errors_too():
    for error in (FileNotFoundError(2, "No such file or directory", "root/Split-test"), ValueError("bad split"),
                  click.BadParameter("not a model")):
        with pytest.raises(SystemExit) as info:
            with evaluate.one_line_errors("threshold_check.py"):
                raise error
        message = error.format_message() if isinstance(error, click.ClickException) else str(error)
        assert info.value.code == f"threshold_check.py: {message}"


def test_the_attention_audit_is_asked_for_and_reaches_the_report_the_summary_and_the_page(binary_model, tmp_path):
    out = tmp_path / "report"
    args = ["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--bootstrap", "200", "--no-audit"]
    plain = json.loads(_run([*args, "--json", "--out", str(tmp_path / "plain")]).output)
    assert "attention_audit" not in plain  # a heat map per film costs about a second: only when asked for
    result = _run([*args, "--attention", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    attention = report["attention_audit"]
    assert attention["method"] == "grad-cam" and attention["target"] == "conv2"
    assert sum(entry["films"] for entry in attention["per_true_class"].values()) == report["n"]
    assert set(attention["per_source"]) == set(report["per_source"])  # each source's films apart too
    assert "covid-cxr: attention audit: film 1 of " in result.stderr  # progress on stderr: stdout stays JSON
    # The figures are the heat maps' of the predicted class, as predict --explain draws them.
    from covid_cxr.evaluation import attention_audit

    model = predict.load_model(binary_model.serving_dir)
    data = evaluate.load_tfrecords(binary_model.data_dir)
    predicted = model.predict_examples(data.serialized)["label_index"]
    again = attention_audit.audit_model(model, data.images, data.labels, predicted, model.classes,
                                        sources=data.slices["source"])
    assert again["per_true_class"] == attention["per_true_class"] and again["per_source"] == attention["per_source"]
    assert again["per_predicted_class"] == attention["per_predicted_class"]  # by the served model's calls
    assert {name: e["films"] for name, e in attention["per_predicted_class"].items()} == {
        name: int(np.sum(predicted == i)) for i, name in enumerate(model.classes) if np.any(predicted == i)}
    card = (out / "model_card.md").read_text()  # the card written with this evaluation carries it too
    assert "- attention audit (where the heat maps by grad-cam at layer conv2 lie; `covid-cxr evaluate --attention`)" in card
    assert "```\n" + "\n".join(attention_audit.summary_lines(attention)) + "\n```" in card
    page = (out / "report.html").read_text()
    assert "<h2>Attention audit (where the heat maps lie)</h2>" in page and "<th>peak in border</th>" in page
    assert "<p class=note>Heat maps by grad-cam at layer conv2 for the predicted class; " in page
    assert any(f"<td>all</td><td>called {name}</td>" in page for name in attention["per_predicted_class"])
    summary = _run([*args, "--attention", "--out", str(tmp_path / "text")]).output
    assert "attention audit (heat maps by grad-cam at layer conv2), outer 15% band: " in summary
    assert all(f"  {name}: " in summary for name in attention["per_true_class"])


def test_the_attention_audit_measures_each_films_grad_cam_of_its_predicted_class(binary_model, tmp_path):
    """Recomputed film by film with serving/explain.py, as predict --explain draws the maps: of the class the
    served model predicts, not of the true class."""
    from covid_cxr.evaluation import attention_audit
    from covid_cxr.serving import explain

    result = _run(["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--bootstrap", "200",
                   "--no-audit", "--attention", "--json", "--out", str(tmp_path / "report")])
    attention = json.loads(result.output)["attention_audit"]
    model = predict.load_model(binary_model.serving_dir)
    data = evaluate.load_tfrecords(binary_model.data_dir)
    predicted = model.predict_examples(data.serialized)["label_index"]
    explainer = explain.Explainer(model)
    shares = {name: [] for name in model.classes}
    for image, label, index in zip(data.images, data.labels, predicted):
        heat, _ = explainer.heatmap(model.transform_images([image])[0], int(index))
        shares[model.classes[label]].append(attention_audit.border_share(heat))
    for name, values in shares.items():
        entry = attention["per_true_class"][name]
        assert entry["films"] == len(values) == int(np.sum(data.labels == model.classes.index(name)))
        measured = [v for v in values if v is not None]
        assert entry["blank_maps"] == len(values) - len(measured)
        assert entry["border_share"]["value"] == pytest.approx(np.mean(measured), abs=1e-6)
    assert attention["band_area_share"] == pytest.approx(attention_audit.band_area_share(testing.TINY_IMAGE_SIZE))
    assert attention["limit"] is None


def test_attention_limit_audits_n_films_of_each_class_and_the_report_says_so(binary_model, tmp_path):
    """A quicker look: the maps of N films of each true class; the other figures still use every film."""
    from covid_cxr.evaluation import attention_audit

    out = tmp_path / "report"
    args = ["--model", binary_model.serving_dir, "--data", binary_model.data_dir, "--bootstrap", "200", "--no-audit"]
    result = _run([*args, "--attention", "--attention-limit", "2", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    attention = report["attention_audit"]
    classes = predict.load_model(binary_model.serving_dir).classes
    assert attention["limit"] == 2 and report["n"] > 2 * len(classes)  # the metrics: every film
    assert result.stderr.count("covid-cxr: attention audit: film 1 of 4\n") == 1  # the maps: 2 of each class
    lines = evaluate.summary_text(report).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("attention audit ("))
    assert lines[start] == ("attention audit (heat maps by grad-cam at layer conv2), outer 15% band: "
                            f"{attention['band_area_share']:.0%} of the film's area; films: 2 of each true class, spread over the data")
    block = [line for line in lines[start + 1:] if line.startswith("  ")]
    per_class = [line for line in block if not line.startswith(("    ", "  called "))]
    assert sorted(line.split(":")[0].strip() for line in per_class) == sorted(classes)
    assert all(": 2 films: border share " in line for line in per_class)
    # Then the films by the class the model called them, and each source's films of each class.
    called = [line for line in block if line.startswith("  called ")]
    assert called and sum(int(line.split(": ")[1].split()[0]) for line in called) == 2 * len(classes)
    by_source = block[len(per_class) + len(called):]
    assert by_source and all(line.startswith("    synthetic-") for line in by_source)
    assert "```\n" + "\n".join(attention_audit.summary_lines(attention)) + "\n```" in (out / "model_card.md").read_text()
    assert ("<p class=note>Only 2 films of each true class, spread over the data, were measured (--attention-limit).</p>"
            in (out / "report.html").read_text())


def test_attention_limit_without_attention_or_below_one_is_one_line_before_the_work(tmp_path):
    for extra, message in ((["--attention-limit", "2"], "Invalid value for --attention-limit: applies to the "
                                                         "attention audit: add --attention"),
                           (["--attention", "--attention-limit", "0"], "Invalid value for '--attention-limit': 0 is "
                                                                        "not in the range x>=1.")):
        # No model there: the line comes before it is looked for.
        result = CliRunner().invoke(cli.main, ["evaluate", "--model", str(tmp_path / "none"), "--data", str(tmp_path),
                                               *extra])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert message in result.output


def test_the_attention_audits_figures_reach_the_summary_and_the_page_class_by_class():
    """Each true class's figures on their own line and in their own row (each source's too); a class whose
    maps are all blank is n/a; no source, no source rows; an audit without films, no section."""
    from covid_cxr.evaluation import attention_audit, html_report
    from covid_cxr.evaluation.attention_audit_test import _spot

    task = features.TASKS["covid-vs-normal"]
    pos = task.positive_index
    labels = np.array([pos] * 4 + [1 - pos] * 2)
    maps = [_spot(0, 0), _spot(10, 10), _spot(10, 10), _spot(0, 5) + _spot(10, 10) * 3] + [_spot(0, 0) * 0] * 2  # blank
    attention = attention_audit.audit([lambda heat=heat: heat for heat in maps], labels, task.classes,
                                      sources=["a", "b", "b", "b", "a", "a"])
    attention.update(method="saliency", target=None)  # as audit_model adds them
    report = _summary_report(task, labels, _binary_outputs(task, [0.9, 0.8, 0.45, 0.2, 0.1, 0.6]),
                             attention_audit=attention)
    assert ("\nattention audit (heat maps by saliency), " + "\n".join(attention_audit.summary_lines(attention))
            + "\n") in evaluate.summary_text(report) + "\n"
    page = html_report.render(report, pngs={})
    assert ("Heat maps by saliency for the predicted class; the outer 15% band is 51% of the film's area,"
            in page)
    covid = attention["per_true_class"][task.classes[pos]]
    share, peak = covid["border_share"], covid["peak_in_border"]
    assert (f"<tr><td>all</td><td>{task.classes[pos]}</td><td>4</td><td>0</td><td>{share['value']:.3f}</td>"
            f"<td>{share['ci95'][0]:.3f} – {share['ci95'][1]:.3f}</td><td>{peak['k']}/4</td><td>{peak['value']:.3f}</td>"
            f"<td>{peak['ci95'][0]:.3f} – {peak['ci95'][1]:.3f}</td></tr>") in page
    assert (f"<tr><td>a</td><td>{task.classes[1 - pos]}</td><td>2</td><td>2</td>"
            + "<td>n/a</td>" * 2 + "<td></td>" + "<td>n/a</td>" * 2 + "</tr>") in page
    assert f"<tr><td>b</td><td>{task.classes[pos]}</td><td>3</td>" in page
    del attention["per_source"]
    page = html_report.render(report, pngs={})
    assert "<tr><td>all</td>" in page and "<tr><td>a</td>" not in page
    report["attention_audit"] = dict(attention_audit.audit([], [], task.classes), method="saliency", target=None)
    assert "Attention audit" not in html_report.render(report, pngs={})


def test_without_a_task_in_the_model_or_the_data_the_classes_are_not_guessed():
    untasked = types.SimpleNamespace(task=None)
    with pytest.raises(click.UsageError, match=r"^the model's metadata names no task and the data has none: "
                                               r"cannot tell the classes$"):
        evaluate.task_of(untasked, types.SimpleNamespace(task_name=None, path="d", labels=np.array([0, 1])))
    # The curated data's own task tells them when the model's metadata does not.
    data = types.SimpleNamespace(task_name="three-class", path="d", labels=np.array([0, 2]))
    assert evaluate.task_of(untasked, data) is features.TASKS["three-class"]


def test_data_that_is_not_a_directory_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    _no_model_load(monkeypatch)
    (tmp_path / "films.zip").write_bytes(b"PK")
    for data in (tmp_path / "nope", tmp_path / "films.zip"):
        result = CliRunner().invoke(cli.main, ["evaluate", "--model", str(tmp_path / "model"), "--data", str(data)])
        assert result.exit_code == 2, result.output
        assert f"Invalid value for --data: '{data}' is not a directory" in result.output, result.output


def _fingerprinted_copy(model, target: str, films: list) -> str:
    """A copy of the tiny model whose metadata carries the Trainer's fingerprints of ``films``: each
    curated (``images.process``, as `covid-cxr curate`), decoded by the Transform's own function and hashed."""
    from covid_cxr.serving import near_copies
    from covid_cxr.transform import preprocessing

    shutil.copytree(model.model_dir, target)
    asset = os.path.join(target, "assets", "covid_cxr.json")
    with open(asset, encoding="utf-8") as f:
        metadata = json.load(f)
    curated = []
    for i, film in enumerate(films):
        path = os.path.join(target, f"film{i}.png")
        pathlib.Path(path).write_bytes(film)
        curated.append(images.process(path).png)
        os.remove(path)
    transformed = preprocessing.decode_images(tf.constant(curated), testing.TINY_IMAGE_SIZE).numpy()
    metadata[near_copies.KEY] = near_copies.fingerprints(near_copies.hash_batch(transformed), testing.TINY_IMAGE_SIZE, 0.0)
    # Counted as trained on real films: the check does not run for a synthetic-trained model (below).
    metadata["data_summary"] = dict(metadata.get("data_summary") or {}, synthetic=False)
    with open(asset, "w", encoding="utf-8") as f:
        json.dump(metadata, f)
    return target


def test_films_that_are_near_copies_of_training_films_are_reported_and_the_figures_kept(binary_model, tmp_path, monkeypatch):
    monkeypatch.setenv("COVID_CXR_PSEUDONYM_KEY", "evaluate-test-key-0123456789abcdef")
    films = [tf.train.Example.FromString(r).features.feature["image"].bytes_list.value[0]
             for r in testing.read_records(binary_model.data_dir)]
    # Films 0-11 "trained on"; 15 and 16 (another patient's films) were not.
    model_dir = _fingerprinted_copy(binary_model, str(tmp_path / "model"), films[:12])
    root = tmp_path / "tree"
    os.makedirs(root / "covid")
    (root / "covid" / "a.png").write_bytes(films[0])  # a copy
    big = Image.open(io.BytesIO(films[7])).convert("L")
    big.resize((big.width * 3, big.height * 2)).save(root / "covid" / "b.jpg", quality=75)  # resized and re-encoded
    (root / "covid" / "c.png").write_bytes(films[15])
    (root / "covid" / "d.png").write_bytes(films[16])
    out = tmp_path / "out"
    result = _run(["--model", model_dir, "--data", str(root), "--bootstrap", "100", "--no-audit", "--out", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    warning = ("WARNING: 2 of 4 films are near copies of films the model trained or validated on: the figures overstate it "
               "(reporting only: the figures include them)")
    report = json.loads((out / "report.json").read_text())
    assert warning in result.output
    near = report["near_copies"]
    assert (near["checked"], near["copies"], near["n"], near["trained_films"]) == (True, 2, 4, 12)
    refs = sorted(os.path.basename(f) for f in near["films"])
    # Shown by their pseudonymous names, as every other film of a folder tree.
    assert len(refs) == 2 and all(re.fullmatch(r"file-[0-9a-f]{8}\.(png|jpg)", r) for r in refs), refs
    assert {r.rsplit(".", 1)[1] for r in refs} == {"png", "jpg"}
    assert report["n"] == 4  # reporting only: the near copies stay in the figures
    assert warning in (out / "report.html").read_text()
    assert warning in (out / "model_card.md").read_text()
    # A model exported before the fingerprints: a note, not an error.
    old = json.loads(_run(["--model", binary_model.serving_dir, "--data", str(root), "--bootstrap", "100", "--no-audit",
                           "--json"]).output)
    assert old["near_copies"]["checked"] is False and "could not be checked" in old["near_copies"]["note"]
    assert "near-copy check: the model carries no fingerprints" in evaluate.summary_text(old)
    # The tiny model itself was trained on synthetic films, which all look alike to the hash: not checked.
    with open(os.path.join(model_dir, "assets", "covid_cxr.json"), encoding="utf-8") as f:
        synthetic = json.load(f)
    synthetic["data_summary"]["synthetic"] = True
    from covid_cxr.serving import near_copies

    assert near_copies.check(synthetic, films[:1], ["x.png"]) == {
        "checked": False, "note": "the model was trained on synthetic films, which all look alike to the near-copy hash: "
                                  "not checked"}


def _evaluated(task, labels, model_outputs, threshold, metadata, graph_threshold=0.5):
    """evaluate.evaluate on a stand-in model whose graph also outputs `graph_threshold`."""
    outputs = dict(model_outputs, threshold=np.full(labels.size, graph_threshold))
    model = types.SimpleNamespace(task=task, threshold=threshold, metadata=metadata, path="m", version=1,
                                  predict_images=lambda images: outputs)
    data = evaluate.EvalData("d", "folders", task.name, [b"png"] * labels.size, labels,
                             [f"g{i}" for i in range(labels.size)], [f"r{i}" for i in range(labels.size)], {})
    return evaluate.evaluate(model, data, n_boot=20, audit=False).report


def test_an_argmax_models_header_and_summary_name_its_argmax_not_a_threshold_it_never_used():
    """An older three-class model labels by argmax: the 0.4375 its graph outputs decided nothing, so neither the
    HTML header nor the terminal prints it; a model that thresholds P(covid) still shows its threshold."""
    from covid_cxr.evaluation import html_report

    three = features.TASKS["three-class"]
    labels, outputs = _three_class_argmax_outputs(three, 4)
    argmax = _evaluated(three, labels, outputs, None, {"classes": list(three.classes)}, graph_threshold=0.4375)
    header = html_report.render(argmax, {}).split("<h2>")[0]
    summary = evaluate.summary_text(argmax)
    for text in (header, summary):
        assert "0.4375" not in text and "decision threshold" not in text
    assert "<tr><td>decision</td><td>argmax (no COVID threshold used): " in header
    assert "decision argmax (no COVID threshold used): " in summary
    ruled = _evaluated(three, labels, outputs, 0.4375, {"classes": list(three.classes),
                                                        "decision_rule": model_metadata.COVID_THRESHOLD_RULE})
    assert "<tr><td>decision threshold</td><td>0.4375: COVID when its probability" in html_report.render(ruled, {})
    assert "decision threshold 0.4375: COVID when its probability" in evaluate.summary_text(ruled)


def test_a_three_class_model_with_the_rule_but_no_stored_threshold_is_described_by_its_graphs_threshold():
    """Its metadata names the threshold rule, which only serving/export.py writes, and that export's graph
    applies the rule with the threshold it outputs: the report, its note and its model card all say so,
    with the graph's threshold, instead of counting it an argmax model under a threshold-rule note."""
    three = features.TASKS["three-class"]
    labels, outputs = _three_class_argmax_outputs(three, 4)
    metadata = {"classes": list(three.classes), "decision_rule": model_metadata.COVID_THRESHOLD_RULE}
    report = _evaluated(three, labels, outputs, None, metadata, graph_threshold=0.4375)
    assert report["threshold_applies"] is True
    assert report["threshold_note"] == model_metadata.decision_note(metadata)
    assert "decision threshold 0.4375: COVID when its probability" in evaluate.summary_text(report)
    card = evaluate.model_card_text(types.SimpleNamespace(metadata=metadata), report, {})
    assert "- decision threshold on the COVID probability: 0.4375 (COVID when above it, else" in card
    assert "most probable class (no threshold)" not in card


def test_a_binary_model_without_metadata_is_not_described_as_an_argmax_one():
    """Its task comes from the data; it labels by its graph's threshold (the ROC point says so), and so do its
    note and its model card, with that threshold, not a default 0.5."""
    task = features.TASKS["covid-vs-normal"]
    labels = np.array([task.positive_index, 1 - task.positive_index] * 4)
    outputs = _binary_outputs(task, [0.9, 0.2, 0.7, 0.4, 0.6, 0.1, 0.3, 0.8], threshold=0.4375)
    report = _evaluated(task, labels, outputs, None, {}, graph_threshold=0.4375)
    assert report["threshold_applies"] is True
    assert report["threshold_note"] == model_metadata.decision_note({"classes": list(task.classes)})
    assert "argmax" not in evaluate.summary_text(report)
    card = evaluate.model_card_text(types.SimpleNamespace(metadata={}), report, {})
    assert f"- task: covid-vs-normal; classes (output index order): {', '.join(task.classes)}" in card
    assert "- decision threshold on the COVID probability: 0.4375 (COVID when above it)" in card
    assert "most probable class" not in card


def test_a_macro_f1_that_counts_an_absent_class_as_zero_says_so_in_every_report():
    """pneumonia is neither true nor predicted here: its F1 0 halves nothing silently. Reports without an
    absent class carry no such note."""
    from covid_cxr.evaluation import html_report, model_card

    three = features.TASKS["three-class"]
    probabilities = np.array([[0.7, 0.1, 0.2], [0.6, 0.1, 0.3], [0.2, 0.1, 0.7], [0.3, 0.1, 0.6], [0.2, 0.2, 0.6]])
    labels = np.array([0, 0, 2, 2, 0])
    outputs = {"label_index": probabilities.argmax(1), "covid_probability": probabilities[:, 2],
               "probabilities": probabilities}
    report = _summary_report(three, labels, outputs)
    assert report["multiclass"]["absent_classes"] == ["pneumonia"]
    note = metrics.absent_classes_text(["pneumonia"])
    assert "pneumonia" in note and "F1 0" in note
    assert f"  macro-F1    {report['multiclass']['macro_f1']:.3f}  ({note})" in evaluate.summary_text(report).splitlines()
    assert f"<p class=note>{note}.</p>" in html_report.render(report, {})
    card = model_card.render({"task": three.name, "classes": list(three.classes)}, None, evaluate.json_safe(report))
    assert f"- three-class macro-F1: {report['multiclass']['macro_f1']:.3f} ({note})" in card
    everyone = _summary_report(three, np.array([0, 1, 2, 0]), {"label_index": np.array([0, 1, 2, 1]),
                                                              "covid_probability": probabilities[:4, 2],
                                                              "probabilities": probabilities[:4]})
    assert everyone["multiclass"]["absent_classes"] == []
    card = model_card.render({"task": three.name, "classes": list(three.classes)}, None, evaluate.json_safe(everyone))
    for text in (evaluate.summary_text(everyone), html_report.render(everyone, {}), card):
        assert "F1 0" not in text
