import csv
import filecmp
import gzip
import hashlib
import io
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from covid_cxr import cli
from covid_cxr.data import curate as curate_mod
from covid_cxr.data import features, images, pseudonym, testing
from covid_cxr.data.curate import CurationError, curate, curate_command
from covid_cxr.data.sources import Candidate
from covid_cxr.data.testing import REAL_DATA, REAL_DATA_REASON, REAL_SOURCE_DIRS

KEY = "curate-test-key-0123456789abcdef"  # MIN_KEY_CHARS or more
RSNA_IDS = ("11111111-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "22222222-bbbb-4bbb-8bbb-bbbbbbbbbbbb", "33333333-cccc-4ccc-8ccc-cccccccccccc")
DICOM_PID = "SECRETPID-123"
ACCESSION = "ACC20200101077"
SOP_UID = "1.2.826.0.1.3680043.999"
COHEN_IDS = ("cohen-pat-0001", "cohen-pat-0007")


def build_corpus(root: Path) -> dict:
    """Five small sources with every selection/rejection case; returns {name: path}."""
    cohen = testing.make_cohen(root / "cohen", [
        dict(patientid=COHEN_IDS[0], finding="COVID-19", view="PA", filename="a.png", seed=1, border=12, sex="F", age="61"),
        dict(patientid=COHEN_IDS[0], finding="COVID-19", view="AP", filename="b.png", seed=2),
        dict(patientid="cohen-pat-0002", finding="COVID-19", view="L", filename="lat.png", seed=3),
        dict(patientid="cohen-pat-0003", finding="COVID-19", view="Axial", modality="CT", filename="ct.png", seed=4),
        dict(patientid="cohen-pat-0004", finding="todo", view="AP", filename="todo.png", seed=5),
        dict(patientid="cohen-pat-0005", finding="No Finding", view="PA", filename="n.png", seed=6),
        dict(patientid="cohen-pat-0006", finding="Streptococcus", view="PA", filename="s.png", seed=7),
        dict(patientid=COHEN_IDS[1], finding="COVID-19", view="PA", filename="a.png", seed=1),  # same file, other id
        dict(patientid=COHEN_IDS[1], finding="COVID-19", view="AP Supine", filename="c7b.png", seed=8),
    ])
    rsna = testing.make_rsna(root / "rsna", [
        dict(id=RSNA_IDS[0], target="0", cls="Normal", seed=10, sex="M", age="58"),
        dict(id=RSNA_IDS[1], target="1", cls="Lung Opacity", seed=11, boxes=2),
        dict(id=RSNA_IDS[2], target="0", cls="No Lung Opacity / Not Normal", seed=12),
    ])
    rad = root / "radiography"
    # The public re-encodings: 224x224 RGB PNG copies of a Cohen and an RSNA film.
    testing.write_image(rad / "COVID" / "COVID-1.png", testing.radiograph(2), rgb=True, size=(224, 224))
    testing.write_image(rad / "COVID" / "COVID-2.png", testing.radiograph(20))
    testing.write_image(rad / "Normal" / "Normal-1.png", testing.radiograph(10, (128, 128)), rgb=True, size=(224, 224))
    testing.write_image(rad / "Normal" / "Normal-2.png", testing.radiograph(21))
    (rad / "Normal" / "Normal-3.png").write_bytes(b"\x89PNG\r\n\x1a\n corrupt")
    ker = root / "kermany"
    testing.write_image(ker / "train" / "NORMAL" / "IM-0001-0001.jpeg", testing.radiograph(30))
    testing.write_image(ker / "test" / "NORMAL" / "IM-0001-0002.jpeg", testing.radiograph(31))
    testing.write_image(ker / "train" / "PNEUMONIA" / "person5_virus_1.jpeg", testing.radiograph(32))
    fol = root / "folder"
    testing.write_dicom(fol / "COVID" / f"{DICOM_PID}_scan.dcm", 255 - testing.radiograph(40), photometric="MONOCHROME1",
                        patient_id=DICOM_PID, view=None, sex="F", age="047Y")
    testing.write_dicom(fol / "COVID" / "lat.dcm", testing.radiograph(41), view="LL", patient_id="PID-LAT-9")
    testing.write_dicom(fol / "COVID" / "ct.dcm", testing.radiograph(42), modality="CT", patient_id="PID-CT-99")
    # Hospital exports name folders and files by date, accession number, UID: none of it may be written.
    testing.write_dicom(fol / "COVID" / testing.SECRET_DATE / f"{ACCESSION}.dcm", testing.radiograph(46), view="LL",
                        patient_id="PID-ACC-3")
    (fol / "COVID" / f"{ACCESSION}-{SOP_UID}.dcm").write_bytes(b"DICM but truncated")  # rejected before loading
    testing.write_image(fol / "healthy" / "h.png", testing.radiograph(43))
    testing.write_image(fol / "other" / "o.png", testing.radiograph(44))
    testing.write_dicom(fol / "other" / "PID-OTHER-5.dcm", testing.radiograph(45), patient_id="PID-OTHER-5")
    return {"cohen": str(cohen), "rsna": str(rsna), "radiography": str(rad), "kermany": str(ker), "folder": str(fol)}


CLASS_MAP = {"COVID": "covid", "healthy": "normal"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "cvn"
    summary = curate(corpus, str(out), "covid-vs-normal", class_map=CLASS_MAP, key=KEY, workers=1)
    return out, summary


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_records(out):
    rows = []
    for path in sorted(tf.io.gfile.glob(str(out / features.TFRECORD_PATTERN))):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            rows.append(tf.train.Example.FromString(raw.numpy()))
    return rows


def test_accepted_and_rejected_account_for_every_input(run):
    out, summary = run
    manifest, rejected = read_csv(out / "manifest.csv"), read_csv(out / "rejected.csv")
    assert summary["inputs_per_source"] == {"cohen": 9, "rsna": 3, "radiography": 5, "kermany": 3, "folder": 8}
    assert len(manifest) + len(rejected) == 28
    assert summary["per_class"] == {"covid": 5, "normal": 6}
    assert summary["per_source_class"] == {
        "cohen": {"covid": 3, "normal": 1}, "folder": {"covid": 1, "normal": 1}, "kermany": {"normal": 2},
        "radiography": {"covid": 1, "normal": 1}, "rsna": {"normal": 1},
    }
    reasons = {(r["source"], r["source_ref"]): r["reason"] for r in rejected}
    rsna_refs = {r["source_ref"] for r in rejected if r["source"] == "rsna"}
    assert reasons[("cohen", "images/lat.png")] == "lateral view: L"
    assert reasons[("cohen", "images/ct.png")] == "not an X-ray: CT"
    assert reasons[("cohen", "images/todo.png")] == "unlabelled: todo"
    assert reasons[("cohen", "images/s.png")] == "not used by task covid-vs-normal"
    assert reasons[("cohen", "images/a.png")] == ("near-duplicate of cohen:images/a.png (the same file, listed again "
                                                  "in the metadata)")
    assert reasons[("radiography", "COVID/COVID-1.png")] == "near-duplicate of cohen:images/b.png"
    normal_1 = reasons[("radiography", "Normal/Normal-1.png")]
    assert normal_1.startswith("near-duplicate of rsna:stage_2_train_images/") and normal_1.endswith(".dcm")
    assert reasons[("radiography", "Normal/Normal-3.png")].startswith("unreadable image: ")
    assert reasons[("kermany", "train/PNEUMONIA/person5_virus_1.jpeg")] == "not used by task covid-vs-normal"
    # The folder source's files are written under pseudonyms (test_no_raw_identifier_in_any_output,
    # test_names_in_an_export_tree_...): found by reason.
    [unmapped_png] = [ref for (src, ref) in reasons if src == "folder" and ref.endswith(".png")]
    # An unmapped folder ("other") may be named by patient: only its pseudonym is written.
    unmapped = "unmapped class folder: neither named like a finding nor in --class-map"
    assert re.fullmatch(r"folder-[0-9a-f]{8}/[0-9a-f]{16}-[0-9a-f]{8}\.png", unmapped_png), unmapped_png
    assert reasons[("folder", unmapped_png)] == unmapped
    dicom_reasons = sorted(why for (src, ref), why in reasons.items() if src == "folder" and ref.endswith(".dcm"))
    assert dicom_reasons[:4] == ["lateral view: DICOM ViewPosition"] * 2 + ["not an X-ray: CT", unmapped]
    assert len(dicom_reasons) == 5 and dicom_reasons[4].startswith("unreadable image: ")
    assert sorted(reasons[("rsna", r)].split(":")[0] for r in rsna_refs) == ["abnormal, no lung opacity", "not used by task covid-vs-normal"]
    assert summary["duplicates"]["within_source"] == 1 and summary["duplicates"]["cross_source"] == 2
    assert summary["duplicates"]["by_sources"] == {"cohen": 1, "cohen/radiography": 1, "radiography/rsna": 1}
    assert summary["rejections"]["near-duplicate"] == 3
    assert summary["duplicates"]["label_conflicts"] == 0  # the cross-source copies carry the same finding
    assert summary["settings"]["task"] == "covid-vs-normal" and summary["settings"]["pseudonym_key"] == "option"


def test_records_have_exactly_the_record_fields(run):
    out, summary = run
    manifest = read_csv(out / "manifest.csv")
    examples = read_records(out)
    assert len(examples) == len(manifest) == summary["accepted"]
    fields = {f.name for f in __import__("dataclasses").fields(features.Record)}
    expected_keys = {features.IMAGE, features.LABEL, features.LABEL_INDEX, features.PATIENT_ID, features.GROUP,
                     features.SOURCE, features.VIEW, features.SEX, features.AGE}
    assert len(fields) == len(expected_keys)
    task = features.get_task("covid-vs-normal")
    for ex, row in zip(examples, manifest):
        f = ex.features.feature
        assert set(f.keys()) == expected_keys
        label = f[features.LABEL].bytes_list.value[0].decode()
        assert label == row["label"] and task.classes[f[features.LABEL_INDEX].int64_list.value[0]] == label
        assert f[features.PATIENT_ID].bytes_list.value[0].decode() == row["patient_id"]
        assert f[features.GROUP].bytes_list.value[0].decode() == row["group"]
        assert f[features.VIEW].bytes_list.value[0].decode() in features.VIEWS
        assert f[features.SEX].bytes_list.value[0].decode() in features.SEXES
        with Image.open(io.BytesIO(f[features.IMAGE].bytes_list.value[0])) as im:
            assert im.format == "PNG" and im.mode == "L" and max(im.size) <= 512
    by_ref = {(r["source"], r["source_ref"]): r for r in manifest}
    a = by_ref[("cohen", "images/a.png")]
    assert (a["view"], a["sex"], a["age"]) == ("PA", "F", "61")
    assert a["note"] == "" and by_ref[("cohen", "images/c7b.png")]["view"] == "AP Supine"
    [dcm] = [r for r in manifest if r["patient_id"] == pseudonym.pseudonymize(KEY.encode(), "folder", DICOM_PID)]
    assert (dcm["view"], dcm["sex"], dcm["age"]) == ("unknown", "F", "47")  # from the DICOM header
    rsna = [r for r in manifest if r["source"] == "rsna"][0]
    assert (rsna["view"], rsna["sex"], rsna["age"]) == ("AP", "M", "58")


def test_monochrome1_dicom_is_stored_as_the_positive_picture(run):
    out, _ = run
    manifest = read_csv(out / "manifest.csv")
    i = [n for n, r in enumerate(manifest) if r["source"] == "folder" and r["label"] == "covid"][0]
    png = read_records(out)[i].features.feature[features.IMAGE].bytes_list.value[0]
    stored = images.decode_png(png).astype(float)
    original = testing.radiograph(40).astype(float)
    assert stored.shape == original.shape
    assert np.corrcoef(stored.ravel(), original.ravel())[0, 1] > 0.99


def test_groups_merge_patients_through_duplicates(run):
    out, summary = run
    manifest = read_csv(out / "manifest.csv")
    by_ref = {(r["source"], r["source_ref"]): r for r in manifest}
    a, b, c7b = (by_ref[("cohen", f"images/{n}")] for n in ("a.png", "b.png", "c7b.png"))
    assert a["patient_id"] == b["patient_id"] != c7b["patient_id"]
    # cohen-pat-0007's copy of a.png was rejected as a near-duplicate: its other film joins a's group.
    assert a["group"] == b["group"] == c7b["group"] == a["patient_id"]
    k1, k2 = by_ref[("kermany", "train/NORMAL/IM-0001-0001.jpeg")], by_ref[("kermany", "test/NORMAL/IM-0001-0002.jpeg")]
    assert k1["patient_id"] == k2["patient_id"] and k1["group"] == k2["group"]
    groups_of_patient = {}
    for r in manifest:
        groups_of_patient.setdefault(r["patient_id"], set()).add(r["group"])
    assert all(len(g) == 1 for g in groups_of_patient.values())  # no patient in two groups
    assert summary["patients"] == 9 and summary["groups"] == 8 and summary["largest_group"] == 3


def test_a_re_cropped_copy_too_far_to_reject_still_shares_its_films_group(tmp_path):
    """A copy with burnt-in marks between the reject and the group thresholds is kept, in its film's
    group (the thresholds are set around this pair's distance; the real-data test checks 40 / 56)."""
    film = testing.radiograph(50)
    marked = film.copy()
    marked[10:30, 12:60] = 255  # a burnt-in label
    marked[90:96, 40:100] = 255  # an arrow
    rad = tmp_path / "radiography"
    testing.write_image(rad / "COVID" / "COVID-1.png", film)
    testing.write_image(rad / "COVID" / "COVID-2.png", marked)
    testing.write_image(rad / "Normal" / "Normal-1.png", testing.radiograph(51))
    curate({"radiography": str(rad)}, str(tmp_path / "a"), "covid-vs-normal", key=KEY, workers=1, hash_threshold=0,
           group_threshold=0)
    curated = read_csv(tmp_path / "a" / "manifest.csv")
    distance = testing.hamming(*(bytes.fromhex(r["hash"]) for r in curated if r["label"] == "covid"))
    assert 0 < distance <= 128

    def groups(group_threshold):
        out = tmp_path / f"t{group_threshold}"
        summary = curate({"radiography": str(rad)}, str(out), "covid-vs-normal", key=KEY, workers=1,
                         hash_threshold=distance - 1, group_threshold=group_threshold)
        rows = read_csv(out / "manifest.csv")
        assert len(rows) == 3 and summary["rejected"] == 0  # both copies kept either way
        return summary, {r["source_ref"]: r["group"] for r in rows}

    summary, apart = groups(distance - 1)
    assert apart["COVID/COVID-1.png"] != apart["COVID/COVID-2.png"] and summary["duplicates"]["grouped_pairs"] == 0
    summary, joined = groups(distance)
    assert joined["COVID/COVID-1.png"] == joined["COVID/COVID-2.png"] != joined["Normal/Normal-1.png"]
    assert summary["groups"] == 2 and summary["duplicates"]["grouped_pairs"] == 1
    assert summary["settings"]["group_threshold"] == distance
    with pytest.raises(CurationError, match=r"^the group threshold \(3\) must be at least the near-duplicate "
                                            r"threshold \(40\)$"):
        curate({"radiography": str(rad)}, str(tmp_path / "b"), "covid-vs-normal", key=KEY, group_threshold=3)
    # A looser reject threshold alone raises the group threshold with it.
    summary = curate({"radiography": str(rad)}, str(tmp_path / "c"), "covid-vs-normal", key=KEY, hash_threshold=100)
    assert summary["settings"]["group_threshold"] == 100


def test_no_raw_identifier_in_any_output(run, corpus, tmp_path, caplog):
    out, _ = run
    secrets = [*RSNA_IDS, DICOM_PID, "PID-LAT-9", "PID-CT-99", "PID-OTHER-5", "PID-ACC-3", *COHEN_IDS, "Doe", "Johanna",
               testing.SECRET_INSTITUTION, testing.SECRET_DATE, ACCESSION, SOP_UID]
    blobs = {}
    for path in out.iterdir():
        data = path.read_bytes()
        blobs[path.name] = gzip.decompress(data) if path.name.endswith(".gz") else data
    # the CLI's printed summary and the logs too
    caplog.set_level(logging.DEBUG)
    result = CliRunner().invoke(curate_command, [*sum((["--source", f"{k}={v}"] for k, v in corpus.items()), []),
                                                 "--class-map", "COVID=covid,healthy=normal", "--key", KEY,
                                                 "--out", str(tmp_path / "cli"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    blobs["stdout"] = result.output.encode()
    blobs["logs"] = caplog.text.encode()
    for name, data in blobs.items():
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} leaked into {name}"
    # A DICOM file is written as its class folder and "<patient pseudonym>-<file pseudonym>.dcm".
    rows = read_csv(out / "rejected.csv") + read_csv(out / "manifest.csv")
    dicom_refs = sorted(r["source_ref"] for r in rows if r["source"] == "folder" and r["source_ref"].endswith(".dcm"))
    assert len(dicom_refs) == 6
    assert all(re.fullmatch(r"(COVID|folder-[0-9a-f]{8})/[0-9a-f]{16}-[0-9a-f]{8}\.dcm", ref) for ref in dicom_refs), dicom_refs


def test_the_owner_of_the_key_can_locate_the_file_behind_a_pseudonymous_ref(run, corpus):
    out, _ = run
    rows = read_csv(out / "rejected.csv") + read_csv(out / "manifest.csv")
    refs = sorted(r["source_ref"] for r in rows if r["source"] == "folder" and r["source_ref"].endswith(".dcm"))
    result = CliRunner().invoke(cli.main, ["locate", "--source", f"folder={corpus['folder']}", "--key", KEY, *refs])
    assert result.exit_code == 0, result.output
    located = dict(line.split("\t") for line in result.output.strip().splitlines())
    assert sorted(os.path.relpath(p, corpus["folder"]) for p in located.values()) == sorted([
        f"COVID/{DICOM_PID}_scan.dcm", "COVID/lat.dcm", "COVID/ct.dcm", f"COVID/{testing.SECRET_DATE}/{ACCESSION}.dcm",
        f"COVID/{ACCESSION}-{SOP_UID}.dcm", "other/PID-OTHER-5.dcm"])
    wrong_key = CliRunner().invoke(cli.main, ["locate", "--source", f"folder={corpus['folder']}",
                                              "--key", "another-key-0123456789abcdef0123", refs[0]])
    assert wrong_key.exit_code == 1 and "not found" in wrong_key.output
    # A row pasted whole from rejected.csv still names its pseudonym; a file's own name does not.
    row = f"folder,{refs[0]},some reason"
    pasted = CliRunner().invoke(cli.main, ["locate", "--source", f"folder={corpus['folder']}", "--key", KEY, row])
    assert pasted.exit_code == 0 and row in pasted.output, pasted.output
    for bad, message in (("COVID/lat.dcm", "'COVID/lat.dcm' is not a pseudonymous ref"),
                         ("", "'' is not a pseudonymous ref")):
        result = CliRunner().invoke(cli.main, ["locate", "--source", f"folder={corpus['folder']}", "--key", KEY, bad])
        assert result.exit_code == 2 and message in result.output, result.output
    result = CliRunner().invoke(cli.main, ["locate", "--source", f"folder={corpus['folder']}/nope", "--key", KEY, refs[0]])
    assert result.exit_code == 2 and "nope' is not a directory" in result.output, result.output
    # RSNA films are written as "<patient pseudonym>.dcm", accepted and rejected alike.
    rsna = sorted(r["source_ref"] for r in rows if r["source"] == "rsna")
    assert rsna and all(re.fullmatch(r"stage_2_train_images/[0-9a-f]{16}\.dcm", ref) for ref in rsna), rsna
    result = CliRunner().invoke(cli.main, ["locate", "--source", f"rsna={corpus['rsna']}", "--key", KEY, *rsna])
    assert result.exit_code == 0, result.output
    located = dict(line.split("\t") for line in result.output.strip().splitlines())
    assert sorted(os.path.basename(p) for p in located.values()) == sorted(
        f"{i}.dcm" for i in RSNA_IDS if os.path.exists(os.path.join(corpus["rsna"], "stage_2_train_images", f"{i}.dcm")))


def test_locate_takes_an_rsna_films_folder_and_a_pasted_rows_own_ref(tmp_path):
    key, rid = KEY.encode(), RSNA_IDS[0]
    rsna = tmp_path / "rsna"
    for rel in (f"stage_2_train_images/{rid}.dcm", f"previews/{rid}.dcm", f"stage_2_train_images/{rid}.txt"):
        (rsna / rel).parent.mkdir(parents=True, exist_ok=True)
        (rsna / rel).write_bytes(b"x")
    film = f"stage_2_train_images/{pseudonym.pseudonymize(key, 'rsna', rid)}.dcm"
    assert curate_mod.locate("rsna", str(rsna), [film], key) == {film: [str(rsna / "stage_2_train_images" / f"{rid}.dcm")]}
    # A rejected.csv row pasted whole names its own file first, then the copy it duplicates.
    folder = tmp_path / "folder"
    (folder / "COVID").mkdir(parents=True)
    refs = {}
    for name in ("a.dcm", "b.dcm"):
        (folder / "COVID" / name).write_bytes(b"x")
        refs[name] = f"COVID/{'0' * 16}-{pseudonym.file_pseudonym(key, 'folder', f'COVID/{name}')}.dcm"
    row = f"folder,{refs['b.dcm']},near-duplicate of folder:{refs['a.dcm']}"
    assert curate_mod.locate("folder", str(folder), [row], key) == {row: [str(folder / "COVID" / "b.dcm")]}
    result = CliRunner().invoke(cli.main, ["locate", "--source", f"rsna={rsna}", "--key", "short-old-key", film])
    assert result.exit_code == 1 and "not found" in result.output, result.output  # an older short key is taken


def test_locate_finds_the_top_folder_behind_evaluates_source_pseudonym(tmp_path):
    # `covid-cxr evaluate` names a tree's top folders (a site, a patient's name) folder-<pseudonym>.
    key = KEY.encode()
    for rel in ("Doe_Jane/COVID/a.png", "Doe_Jane_2/Normal/b.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    source = pseudonym.folder_pseudonym(key, "folder", "Doe_Jane")
    assert curate_mod.locate("folder", str(tmp_path), [source], key) == {source: [str(tmp_path / "Doe_Jane")]}
    # The same pseudonym asked for twice (a ref and a pasted row naming it) is found for both.
    row = f"folder,{source},not in a mapped class folder"
    assert curate_mod.locate("folder", str(tmp_path), [source, row], key) == {
        source: [str(tmp_path / "Doe_Jane")], row: [str(tmp_path / "Doe_Jane")]}


def test_locate_exits_1_unless_every_ref_is_found_and_takes_a_film_with_spaces_around(tmp_path):
    key, rid = KEY.encode(), RSNA_IDS[0]
    rsna = tmp_path / "rsna"
    (rsna / "stage_2_train_images").mkdir(parents=True)
    (rsna / "stage_2_train_images" / f"{rid}.dcm").write_bytes(b"x")
    film = f"stage_2_train_images/{pseudonym.pseudonymize(key, 'rsna', rid)}.dcm"
    pasted = f"rsna, {film} ,near-duplicate"  # a row pasted with spaces after its commas
    assert curate_mod.locate("rsna", str(rsna), [pasted], key) == {pasted: [str(rsna / "stage_2_train_images" / f"{rid}.dcm")]}
    other = f"stage_2_train_images/{'0' * 16}.dcm"
    result = CliRunner().invoke(cli.main, ["locate", "--source", f"rsna={rsna}", "--key", KEY, film, other])
    assert result.exit_code == 1, result.output
    assert f"{film}\t{rsna / 'stage_2_train_images' / f'{rid}.dcm'}" in result.output and f"{other}\tnot found" in result.output
    assert CliRunner().invoke(cli.main, ["locate", "--source", f"rsna={rsna}", "--key", KEY, film]).exit_code == 0


def test_locate_without_any_key_refuses_instead_of_creating_one(tmp_path, monkeypatch):
    # A key made now could not find files an earlier curation named: say so, and leave no key file behind.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv(pseudonym.ENV_VAR, raising=False)
    (tmp_path / "rsna" / "stage_2_train_images").mkdir(parents=True)
    result = CliRunner().invoke(cli.main, ["locate", "--source", f"rsna={tmp_path / 'rsna'}",
                                           f"stage_2_train_images/{'0' * 16}.dcm"])
    assert result.exit_code == 2, result.output
    assert "no pseudonym key file at" in result.output and "--key" in result.output
    assert not (tmp_path / "cfg").exists()


def test_names_in_an_export_tree_are_not_written_but_can_be_located(tmp_path):
    """Beside its DICOMs a hospital export holds previews, notes and bare-UID files, in folders named
    by patient and accession number; an RSNA copy may have subfolders. Only class folders survive,
    and a name that is not UTF-8 is written as a pseudonym from any source."""
    export, rsna = tmp_path / "export", tmp_path / "rsna"
    study = export / "COVID" / "DOE_JANE" / ACCESSION
    testing.write_dicom(study / "img.dcm", testing.radiograph(50), patient_id="PID-EXP-1")
    testing.write_image(study / "DOE_JANE_preview.jpg", testing.radiograph(51))
    (study / "DOE_JANE_notes.txt").write_text("notes")
    (export / "COVID" / SOP_UID).write_bytes(b"no preamble, no extension")  # a bare-UID name
    testing.write_image(export / "healthy" / "h1.png", testing.radiograph(52))
    # A name that is not UTF-8 (an old export's Latin-1 "Müller"), in the export and in a public source.
    latin1 = os.fsdecode(b"M\xfcller.png")
    testing.write_image(export / "healthy" / latin1, testing.radiograph(54))
    radiography = tmp_path / "radiography"
    testing.write_image(radiography / "Normal" / latin1, testing.radiograph(55))
    testing.write_image(radiography / "Normal" / "Normal-1.png", testing.radiograph(56))
    testing.write_image(radiography / os.fsdecode(b"M\xfcller") / "x.png", testing.radiograph(59))  # not a class
    testing.make_rsna(rsna, [dict(id=RSNA_IDS[0], target="0", cls="Normal", seed=53)])
    os.makedirs(rsna / "stage_2_train_images" / "batch-DOE")
    os.rename(rsna / "stage_2_train_images" / f"{RSNA_IDS[0]}.dcm",
              rsna / "stage_2_train_images" / "batch-DOE" / f"{RSNA_IDS[0]}.dcm")
    # Names RSNA's layout does not expect: a tail after the id (one not UTF-8), a folder beside it.
    (rsna / "stage_2_train_images" / f"{RSNA_IDS[1]}.DOE").write_bytes(b"not a film")
    (rsna / "stage_2_train_images" / os.fsdecode(RSNA_IDS[2].encode() + b".M\xfcller")).write_bytes(b"not a film")
    testing.write_dicom(rsna / "DOE_BATCH" / "x.dcm", testing.radiograph(57))
    testing.write_image(export / "DOE_UNMAPPED" / "u.png", testing.radiograph(58))  # not a class folder
    out = tmp_path / "out"
    curate({"folder": str(export), "rsna": str(rsna), "radiography": str(radiography)}, str(out), "covid-vs-normal",
           class_map=CLASS_MAP, key=KEY, workers=1)
    rows = read_csv(out / "rejected.csv") + read_csv(out / "manifest.csv")
    written = (out / "rejected.csv").read_text() + (out / "manifest.csv").read_text() + (out / "summary.json").read_text()
    for secret in ("DOE", ACCESSION, SOP_UID, SOP_UID.rsplit(".", 1)[-1], *RSNA_IDS, "ller"):
        assert secret not in written, secret
    refs = {r["source"]: [] for r in rows}
    for r in rows:
        refs[r["source"]].append(r["source_ref"])
    # Every file of the export, plainly named images too: a preview may be named after the patient.
    pseudonymous = refs["folder"]
    assert sorted(re.sub(r"[0-9a-f]{16}-[0-9a-f]{8}", "P", ref) for ref in pseudonymous) == sorted([
        "COVID/P", "COVID/P", "COVID/P.dcm", "COVID/P.jpg", "healthy/P.png", "healthy/P.png",
        f"folder-{pseudonym.file_pseudonym(KEY.encode(), 'folder', 'DOE_UNMAPPED/')}/P.png"])
    # A public collection keeps its own names, except one that cannot be written as it is.
    assert sorted(re.sub(r"[0-9a-f]{16}-[0-9a-f]{8}", "P", ref) for ref in refs["radiography"]) == [
        "Normal/Normal-1.png", "Normal/P.png",
        f"{pseudonym.folder_pseudonym(KEY.encode(), 'radiography', os.fsdecode(b'M' + bytes([252]) + b'ller'))}/P.png"]
    # The file in a subfolder is outside RSNA's layout, and its label row finds no image: both named by
    # pseudonym; so are the two names with a tail after the id, and the folder beside the layout's.
    assert sorted(re.sub(r"[0-9a-f]{16}(-[0-9a-f]{8})?", "P", ref) for ref in refs["rsna"]) == [
        f"folder-{pseudonym.file_pseudonym(KEY.encode(), 'rsna', 'DOE_BATCH/')}/P.dcm",
        "stage_2_train_images/P", "stage_2_train_images/P", "stage_2_train_images/P.dcm", "stage_2_train_images/P.dcm"]
    # Not an image, so rejected: the reason names no "extension" (here a UID's tail) for such trees.
    reasons = {r["source_ref"]: r["reason"] for r in read_csv(out / "rejected.csv")}
    assert list(reasons.values()).count("unknown class folder: a name that is not UTF-8") == 1  # the Latin-1 folder
    assert sorted(reason for ref, reason in reasons.items() if ref.startswith("COVID/") and "." not in ref) == [
        "not an image file", "not an image file"]
    located = curate_mod.locate("folder", str(export), pseudonymous, KEY.encode())
    assert sorted(os.path.relpath(paths[0], export) for paths in located.values()) == sorted([
        f"COVID/DOE_JANE/{ACCESSION}/img.dcm", f"COVID/DOE_JANE/{ACCESSION}/DOE_JANE_preview.jpg",
        f"COVID/DOE_JANE/{ACCESSION}/DOE_JANE_notes.txt", f"COVID/{SOP_UID}", "healthy/h1.png", f"healthy/{latin1}",
        "DOE_UNMAPPED/u.png"])


def test_a_dicom_that_declares_burned_in_text_is_rejected_and_a_cohen_dicom_folder_is_not_written(tmp_path):
    import pydicom

    cohen = tmp_path / "cohen"
    testing.write_dicom(cohen / "images" / "a.dcm", testing.radiograph(60), patient_id="PID-C-1")
    testing.write_dicom(cohen / "DOE_JOHN" / "b.dcm", testing.radiograph(61), patient_id="PID-C-2")
    burned = testing.write_dicom(cohen / "images" / "c.dcm", testing.radiograph(62), patient_id="PID-C-3")
    ds = pydicom.dcmread(burned)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(burned)
    for i in (1, 2):
        testing.write_image(cohen / "images" / f"n{i}.png", testing.radiograph(62 + i))
    row = ("0", "M", "50")
    testing.write_csv(cohen / "metadata.csv", testing.COHEN_FIELDS, [
        ("pc1", *row, "COVID-19", "PA", "X-ray", "images", "a.dcm"),
        ("pc2", *row, "COVID-19", "PA", "X-ray", "DOE_JOHN", "b.dcm"),  # a hospital's folder, beside the layout's
        ("pc3", *row, "COVID-19", "PA", "X-ray", "images", "c.dcm"),
        ("pn1", *row, "No Finding", "PA", "X-ray", "images", "n1.png"),
        ("pn2", *row, "No Finding", "PA", "X-ray", "images", "n2.png")])
    out = tmp_path / "out"
    curate({"cohen": str(cohen)}, str(out), "covid-vs-normal", key=KEY, workers=1)
    accepted = sorted(r["source_ref"] for r in read_csv(out / "manifest.csv"))
    rejected = {r["source_ref"]: r["reason"] for r in read_csv(out / "rejected.csv")}
    assert list(rejected.values()) == [images.BURNED_IN]
    assert re.fullmatch(r"images/[0-9a-f]{16}-[0-9a-f]{8}\.dcm", next(iter(rejected)))
    folder = pseudonym.folder_pseudonym(KEY.encode(), "cohen", "DOE_JOHN")
    assert [re.sub(r"[0-9a-f]{16}-[0-9a-f]{8}", "P", ref) for ref in accepted] == [
        f"{folder}/P.dcm", "images/P.dcm", "images/n1.png", "images/n2.png"]
    assert "DOE" not in (out / "manifest.csv").read_text() + (out / "summary.json").read_text()


def test_a_dicom_tagged_as_another_body_part_is_rejected_naming_the_tag_and_its_value(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [
        dict(id="aaa-1", target="0", cls="Normal", seed=81),  # CHEST, as RSNA's own files
        dict(id="bbb-2", target="0", cls="Normal", seed=82, body_part=None),  # no tag, as many real files
        dict(id="ccc-3", target="0", cls="Normal", seed=83, body_part="PORT CHEST"),
        dict(id="ddd-4", target="0", cls="Normal", seed=84, body_part="ABDOMEN"),
        dict(id="eee-5", target="0", cls="Normal", seed=85, body_part="knee"),
    ])
    out = tmp_path / "out"
    summary = curate({"rsna": str(root)}, str(out), "covid-vs-normal", key=KEY, workers=1)
    assert summary["per_source_class"] == {"rsna": {"normal": 3}}
    assert summary["rejections"] == {"not a chest film": 2}
    assert sorted(r["reason"] for r in read_csv(out / "rejected.csv")) == [
        "not a chest film: DICOM BodyPartExamined ABDOMEN", "not a chest film: DICOM BodyPartExamined KNEE"]


def test_the_metadata_s_patient_view_and_sex_win_over_a_dicom_header_s(tmp_path):
    cohen = tmp_path / "cohen"
    for name, seed, pid in (("a.dcm", 70, "PID-X-1"), ("b.dcm", 71, "PID-X-2")):  # one patient, two DICOM ids
        testing.write_dicom(cohen / "images" / name, testing.radiograph(seed), patient_id=pid, view="PA", sex="M")
    for i in (1, 2):
        testing.write_image(cohen / "images" / f"n{i}.png", testing.radiograph(72 + i))
    testing.write_csv(cohen / "metadata.csv", testing.COHEN_FIELDS, [
        ("pc1", "0", "F", "50", "COVID-19", "AP", "X-ray", "images", "a.dcm"),
        ("pc1", "0", "F", "50", "COVID-19", "AP", "X-ray", "images", "b.dcm"),
        ("pn1", "0", "M", "50", "No Finding", "PA", "X-ray", "images", "n1.png"),
        ("pn2", "0", "M", "50", "No Finding", "PA", "X-ray", "images", "n2.png")])
    out = tmp_path / "out"
    summary = curate({"cohen": str(cohen)}, str(out), "covid-vs-normal", key=KEY, workers=1)
    covid = [{k: ex.features.feature[k].bytes_list.value[0].decode() for k in (features.VIEW, features.SEX,
                                                                             features.PATIENT_ID)}
             for ex in read_records(out) if ex.features.feature[features.LABEL].bytes_list.value[0] == b"covid"]
    assert len(covid) == 2 and covid[0] == covid[1]  # one patient, as the metadata says
    assert (covid[0][features.VIEW], covid[0][features.SEX]) == ("AP", "F")
    assert summary["patients"] == 3
    with pytest.raises(CurationError, match=rf"^max side must be at least {images.MIN_SIDE} px$"):
        curate({"cohen": str(cohen)}, str(tmp_path / "small"), "covid-vs-normal", key=KEY, max_side=images.MIN_SIDE - 1)


def test_rerun_is_byte_identical_and_independent_of_workers(run, corpus, tmp_path, monkeypatch):
    out, _ = run
    again = tmp_path / "again"
    curate(corpus, str(again), "covid-vs-normal", class_map=CLASS_MAP, key=KEY, workers=1)
    monkeypatch.setattr(curate_mod, "_PARALLEL_MIN_JOBS", 1)  # force the process pool on this small input
    parallel = tmp_path / "parallel"
    curate(corpus, str(parallel), "covid-vs-normal", class_map=CLASS_MAP, key=KEY, workers=2)
    names = sorted(os.listdir(out))
    assert names == sorted(os.listdir(again)) == sorted(os.listdir(parallel))
    for name in names:
        assert filecmp.cmp(out / name, again / name, shallow=False), name
        assert filecmp.cmp(out / name, parallel / name, shallow=False), name


def test_key_changes_pseudonyms_and_default_key_file_is_stable(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("COVID_CXR_PSEUDONYM_KEY", raising=False)
    s1 = curate(corpus, str(tmp_path / "k1"), "covid-vs-normal", class_map=CLASS_MAP, workers=1)
    s2 = curate(corpus, str(tmp_path / "k2"), "covid-vs-normal", class_map=CLASS_MAP, workers=1)
    assert (tmp_path / "cfg" / "covid-cxr" / "pseudonym.key").is_file()
    assert s1["settings"]["pseudonym_key"] == "key file"
    assert filecmp.cmp(tmp_path / "k1" / "manifest.csv", tmp_path / "k2" / "manifest.csv", shallow=False)
    monkeypatch.setenv("COVID_CXR_PSEUDONYM_KEY", "another-key-0123456789abcdef0123")
    s3 = curate(corpus, str(tmp_path / "k3"), "covid-vs-normal", class_map=CLASS_MAP, workers=1)
    ids1 = {r["patient_id"] for r in read_csv(tmp_path / "k1" / "manifest.csv")}
    ids3 = {r["patient_id"] for r in read_csv(tmp_path / "k3" / "manifest.csv")}
    assert len(ids1) == len(ids3) and not ids1 & ids3
    assert s3["settings"]["pseudonym_key"] == "environment" and s2["settings"]["pseudonym_key_id"] != s3["settings"]["pseudonym_key_id"]


def test_three_class_and_noncovid_tasks(corpus, tmp_path):
    s = curate(corpus, str(tmp_path / "3"), "three-class", class_map=CLASS_MAP, key=KEY, workers=1)
    assert s["per_class"] == {"covid": 5, "normal": 6, "pneumonia": 3}
    assert s["classes"] == ["normal", "pneumonia", "covid"]
    s = curate(corpus, str(tmp_path / "nc"), "covid-vs-noncovid", class_map=CLASS_MAP, key=KEY, workers=1)
    assert s["per_class"] == {"covid": 5, "noncovid": 9}


def test_balance_cap_is_deterministic_and_recorded(corpus, tmp_path):
    s = curate(corpus, str(tmp_path / "b1"), "covid-vs-normal", class_map=CLASS_MAP, key=KEY, balance_cap=2, workers=1)
    assert s["per_class"] == {"covid": 2, "normal": 2}
    assert s["balance"] == {"cap": 2, "before": {"covid": 5, "normal": 6}}
    assert s["rejections"]["balance cap"] == 7
    curate(corpus, str(tmp_path / "b2"), "covid-vs-normal", class_map=CLASS_MAP, key=KEY, balance_cap=2, workers=1)
    assert filecmp.cmp(tmp_path / "b1" / "manifest.csv", tmp_path / "b2" / "manifest.csv", shallow=False)
    assert sum(r["reason"] == "balance cap" for r in read_csv(tmp_path / "b1" / "rejected.csv")) == 7


def test_the_balance_cap_keeps_films_by_hash_not_by_source_priority():
    # Input order is source priority: keeping the first N would fill a class from one source.
    candidates = [Candidate(source, f"x/{n}.png", None, finding="covid") for source in ("cohen", "radiography")
                  for n in range(4)]

    def kept(order):
        items = [curate_mod._Item(i, c, label="covid") for i, c in enumerate(order)]
        assert curate_mod._apply_balance_cap(items, 3) == {"cap": 3, "before": {"covid": 8}}
        return {(it.candidate.source, it.candidate.source_ref) for it in items if it.reject is None}

    by_hash = sorted(((c.source, c.source_ref) for c in candidates),
                     key=lambda k: hashlib.sha256(f"{k[0]}:{k[1]}".encode()).hexdigest())
    assert kept(candidates) == kept(candidates[::-1]) == set(by_hash[:3])


def test_patients_are_per_source_and_films_without_an_id_are_their_own(tmp_path):
    cohen = testing.make_cohen(tmp_path / "cohen", [dict(patientid="IM-0001", finding="COVID-19", filename="a.png", seed=1)])
    # Kermany's IM-0001 is another source's patient: the same raw id does not make them one.
    testing.write_image(tmp_path / "kermany" / "train" / "NORMAL" / "IM-0001-0001.jpeg", testing.radiograph(2))
    testing.write_image(tmp_path / "f" / "covid" / "b.png", testing.radiograph(3))  # no id: each file its own patient
    testing.write_image(tmp_path / "f" / "covid" / "c.png", testing.radiograph(4))
    sources = {"cohen": str(cohen), "kermany": str(tmp_path / "kermany"), "folder": str(tmp_path / "f")}
    summary = curate(sources, str(tmp_path / "o"), "covid-vs-normal", key=KEY, workers=1)
    rows = read_csv(tmp_path / "o" / "manifest.csv")
    assert len(rows) == summary["accepted"] == 4
    assert len({r["patient_id"] for r in rows}) == len({r["group"] for r in rows}) == 4
    assert summary["patients"] == summary["groups"] == 4


def test_a_film_refused_by_its_dicom_header_rejects_no_copy_of_it(tmp_path):
    # Near-duplicates are looked for among the films the task uses: a lateral film is not one.
    testing.write_dicom(tmp_path / "f" / "covid" / "lat.dcm", testing.radiograph(60), view="LL", patient_id="PID-1")
    testing.write_image(tmp_path / "f" / "normal" / "copy.png", testing.radiograph(60))
    summary = curate({"folder": str(tmp_path / "f")}, str(tmp_path / "o"), "covid-vs-normal", key=KEY, workers=1)
    assert summary["accepted"] == 1 and summary["per_class"]["normal"] == 1
    assert summary["rejections"] == {"lateral view": 1} and summary["duplicates"]["rejected"] == 0


def test_processing_options(corpus, tmp_path):
    base = curate(corpus, str(tmp_path / "o1"), "covid-vs-normal", class_map=CLASS_MAP, key=KEY, workers=1,
                  max_side=64, crop=False, equalize="clahe")
    assert base["settings"]["max_side"] == 64 and base["settings"]["equalize"] == "clahe" and not base["settings"]["crop"]
    assert base["crop"] == {"unchanged": 11}
    for ex in read_records(tmp_path / "o1"):
        png = ex.features.feature[features.IMAGE].bytes_list.value[0]
        assert max(images.decode_png(png).shape) == 64
    cropped = curate(corpus, str(tmp_path / "o2"), "covid-vs-normal", class_map=CLASS_MAP, key=KEY, workers=1)
    assert cropped["crop"]["cropped"] >= 1  # a.png has a 12-px black frame


@pytest.mark.parametrize("arguments, message", [
    (dict(task="covid-vs-flu"), "^unknown task"),
    (dict(equalize="magic"), "^unknown equalization 'magic'"),
    (dict(max_side=8), "^max side must be at least"),
    (dict(balance_cap=0), "^balance cap must be at least 1$"),
    (dict(hash_threshold=6, group_threshold=5), r"^the group threshold \(5\) must be at least the near-duplicate"),
    (dict(hold_out=("kermany", "held")), "^--hold-out kermany: not one of the sources given"),
    (dict(key=" "), "^the pseudonym key given is empty")])
def test_each_argument_is_checked_before_the_sources_are_read(corpus, tmp_path, monkeypatch, arguments, message):
    """A mistake costs no time: every check comes before the first film is listed or read (the sources' own
    listing errors are test_curate_user_errors'), and --out is not created."""
    monkeypatch.setattr(curate_mod, "_label", lambda *a, **k: pytest.fail("the sources were read first"))
    arguments = {"task": "covid-vs-normal", "key": KEY, **arguments}
    with pytest.raises(CurationError, match=message):
        curate({"cohen": corpus["cohen"]}, str(tmp_path / "x"), **arguments)
    assert not (tmp_path / "x").exists()


def test_curate_user_errors(corpus, tmp_path):
    with pytest.raises(CurationError, match="unknown source 'nih'"):
        curate({"nih": corpus["cohen"]}, str(tmp_path / "x"), "covid-vs-normal", key=KEY)
    with pytest.raises(CurationError, match="does not exist"):
        curate({"cohen": str(tmp_path / "nope")}, str(tmp_path / "x"), "covid-vs-normal", key=KEY)
    with pytest.raises(CurationError, match="unknown task"):
        curate({"cohen": corpus["cohen"]}, str(tmp_path / "x"), "covid-vs-flu", key=KEY)
    with pytest.raises(CurationError, match="metadata.csv not found"):
        curate({"cohen": corpus["kermany"]}, str(tmp_path / "x"), "covid-vs-normal", key=KEY)
    with pytest.raises(CurationError, match="no folder source"):
        curate({"cohen": corpus["cohen"]}, str(tmp_path / "x"), "covid-vs-normal", key=KEY, class_map={"A": "covid"})
    with pytest.raises(CurationError, match="inside the cohen source"):
        curate({"cohen": corpus["cohen"]}, os.path.join(corpus["cohen"], "out"), "covid-vs-normal", key=KEY)
    with pytest.raises(CurationError, match="balance cap must be at least 1"):
        curate({"cohen": corpus["cohen"]}, str(tmp_path / "x"), "covid-vs-normal", key=KEY, balance_cap=0)
    assert not (tmp_path / "x").exists()
    # Beside a source, under a name that starts with the source folder's: not inside it.
    cohen = testing.make_cohen(tmp_path / "cohen", [dict(patientid="1", finding="COVID-19", filename="a.png", seed=1)])
    assert curate({"cohen": str(cohen)}, str(tmp_path / "cohen-curated"), "covid-vs-normal", key=KEY, workers=1)["accepted"] == 1


@pytest.mark.parametrize("args, message", [
    (["--source", "nih=/tmp"], "unknown source 'nih'"),
    (["--source", "cohen"], "expected NAME=PATH"),
    (["--source", "cohen=/definitely/not/here"], "does not exist"),
    (["--source", "cohen={kermany}"], "metadata.csv not found"),
    (["--source", "folder={folder}", "--class-map", "COVID=flu"], "--class-map: bad class map entry"),
    (["--source", "folder={folder}", "--class-map", "Nope=covid"], "do not exist"),
    (["--source", "cohen={cohen}", "--task", "covid-vs-flu"], "Invalid value for '--task'"),
    (["--source", "cohen={cohen}", "--equalize", "magic"], "Invalid value for '--equalize'"),
    (["--source", "cohen={cohen}", "--source", "cohen={cohen}"], "given twice"),
])
def test_cli_errors_are_one_line_usage_errors(corpus, tmp_path, args, message):
    args = [a.format(**corpus) for a in args] + ["--out", str(tmp_path / "o"), "--key", KEY]
    result = CliRunner().invoke(cli.main, ["curate", *args])  # as `covid-cxr curate ...` runs
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.startswith("covid-cxr: error: ") and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "o").exists()


def test_rsna_label_rows_without_a_patient_id_are_in_rejected_csv_and_the_counts(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id=RSNA_IDS[0], target="0", cls="Normal", seed=1)])
    with open(root / "stage_2_train_labels.csv", "a", encoding="utf-8") as f:
        f.write(",,,,,1\n ,,,,,0\n")
    summary = curate({"rsna": str(root)}, str(tmp_path / "o"), "covid-vs-normal", key=KEY, workers=1)
    rows = [(r["source_ref"], r["reason"]) for r in read_csv(tmp_path / "o" / features.REJECTED)]
    reason = "malformed stage_2_train_labels.csv row: blank patientId"
    assert rows == [("stage_2_train_labels.csv row 2", reason), ("stage_2_train_labels.csv row 3", reason)]
    assert summary["rejections"] == {"malformed stage_2_train_labels.csv row": 2}
    assert summary["inputs_per_source"] == {"rsna": 3} and summary["accepted"] == 1


def test_a_label_csv_that_cannot_be_read_is_a_one_line_user_error_naming_it(tmp_path, monkeypatch):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="aaa-1", target="1", cls="Lung Opacity", seed=1)])
    labels = root / "stage_2_train_labels.csv"
    labels.write_bytes(labels.read_bytes() + b"bbb-2,,,,," + b"1" * 200_000 + b"\n")
    limit = csv.field_size_limit()
    monkeypatch.setattr(csv, "field_size_limit", lambda *new: limit)  # a csv.Error: was "the run failed", exit 1
    for content, message in ((None, f"{labels}: row 2 (line 3) cannot be read as CSV: field larger than field limit"),
                             (b"patientId,Target\nM\xfcller,1\n", f"{labels} is not UTF-8 text (byte 18): save it as UTF-8")):
        if content:
            labels.write_bytes(content)
        result = CliRunner().invoke(cli.main, ["curate", "--source", f"rsna={root}", "--out", str(tmp_path / "o"),
                                               "--key", KEY])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"covid-cxr: error: {message}") and len(result.output.splitlines()) == 1


def test_cli_prints_a_summary(corpus, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(curate_command, [
        "--source", f"cohen={corpus['cohen']}", "--source", f"radiography={corpus['radiography']}",
        "--task", "covid-vs-normal", "--out", str(out), "--key", KEY, "--equalize", "hist", "--balance-cap", "3"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert f"into {out}" in text and "accepted per class: normal 3, covid 3" in text
    assert "near-duplicates rejected: 2 (within a source 1, across sources 1)" in text
    assert "lateral view" in text and "balance cap" in text
    assert json.loads((out / "summary.json").read_text())["settings"]["equalize"] == "hist"
    assert "warning" not in text
    # A source with nothing the task can use: curated, but said plainly.
    result = CliRunner().invoke(curate_command, ["--source", f"kermany={corpus['kermany']}", "--task", "covid-vs-normal",
                                                 "--out", str(tmp_path / "no-covid"), "--key", KEY])
    assert result.exit_code == 0, result.output
    assert "covid-cxr: warning: no accepted image of class covid: this directory cannot train task covid-vs-normal, and evaluate on it reports one class only" in result.output
    # Nothing accepted at all: the summary, then a failure naming where the reasons are.
    result = CliRunner().invoke(curate_command, ["--source", f"folder={corpus['folder']}", "--class-map", "other=pneumonia",
                                                 "--task", "covid-vs-normal", "--out", str(tmp_path / "none"), "--key", KEY])
    assert result.exit_code == 1, result.output
    assert "curated 0 images" in result.output
    assert result.output.strip().endswith(f"Error: no image was accepted for task covid-vs-normal: the reasons are in "
                                          f"{tmp_path / 'none' / 'rejected.csv'}")


def test_hidden_files_and_lung_masks_are_counted_not_listed(tmp_path):
    rad = tmp_path / "rad"
    testing.write_image(rad / "COVID" / "images" / "COVID-1.png", testing.radiograph(1))
    testing.write_image(rad / "Normal" / "Normal-1.png", testing.radiograph(2))
    testing.write_image(rad / "COVID" / "masks" / "COVID-1.png", testing.radiograph(4))
    testing.write_image(rad / "Normal" / "masks" / "Normal-1.png", testing.radiograph(5))
    (rad / "COVID" / "images" / "._COVID-1.png").write_bytes(b"\0\5\26\7 AppleDouble")
    (rad / ".DS_Store").write_bytes(b"Bud1")
    testing.write_image(rad / ".thumbnails" / "t.png", testing.radiograph(3))
    result = CliRunner().invoke(curate_command, ["--source", f"radiography={rad}", "--task", "covid-vs-normal",
                                                 "--out", str(tmp_path / "o"), "--key", KEY])
    assert result.exit_code == 0, result.output
    assert "radiography: 3 hidden files or folders skipped (names starting with '.', __MACOSX)" in result.output
    assert "radiography: 2 lung-mask files not read (masks/ holds masks, not films)" in result.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["not_read_per_source"] == {"radiography": {
        "hidden files or folders skipped (names starting with '.', __MACOSX)": 3,
        "lung-mask files not read (masks/ holds masks, not films)": 2}}
    written = (tmp_path / "o" / features.MANIFEST).read_text() + (tmp_path / "o" / features.REJECTED).read_text()
    assert "._COVID" not in written and "DS_Store" not in written and "thumbnails" not in written
    assert "masks" not in written


def test_films_in_a_linked_sub_folder_are_curated_and_a_broken_link_is_rejected(tmp_path):
    rad = tmp_path / "rad"
    testing.write_image(rad / "Normal" / "Normal-1.png", testing.radiograph(2))
    testing.write_image(tmp_path / "site-b" / "COVID-7.png", testing.radiograph(7))
    (rad / "COVID").mkdir()
    os.symlink(tmp_path / "site-b", rad / "COVID" / "site-b")
    os.symlink(tmp_path / "gone.png", rad / "COVID" / "COVID-8.png")
    summary = curate({"radiography": str(rad)}, str(tmp_path / "o"), "covid-vs-normal", key=KEY, workers=1)
    assert summary["per_class"] == {"covid": 1, "normal": 1}
    [row] = read_csv(tmp_path / "o" / features.REJECTED)
    assert (row["source_ref"], row["reason"]) == ("COVID/COVID-8.png", "broken symbolic link: its target does not exist")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_in_a_source_is_a_rejection_not_a_hang(tmp_path):
    rad, tree = tmp_path / "rad", tmp_path / "tree"
    testing.write_image(rad / "COVID" / "COVID-1.png", testing.radiograph(1))
    testing.write_image(rad / "Normal" / "Normal-1.png", testing.radiograph(2))
    testing.write_image(tree / "COVID" / "a.png", testing.radiograph(3))
    (tree / "COVID" / "Doe_Jane").mkdir()
    with testing.fifo(rad / "COVID" / "COVID-2.png"), testing.fifo(tree / "COVID" / "Doe_Jane" / "scan.dcm"):
        result = CliRunner().invoke(curate_command, ["--source", f"radiography={rad}", "--source", f"folder={tree}",
                                                     "--task", "covid-vs-normal", "--out", str(tmp_path / "o"),
                                                     "--key", KEY])
    assert result.exit_code == 0, result.output
    rejected = read_csv(tmp_path / "o" / features.REJECTED)
    reasons = {(r["source"], r["source_ref"]): r["reason"] for r in rejected}
    assert reasons[("radiography", "COVID/COVID-2.png")] == "not a regular file: a named pipe (FIFO)"
    [(ref, reason)] = [(ref, why) for (src, ref), why in reasons.items() if src == "folder"]
    assert reason == "not a regular file: a named pipe (FIFO)" and "Doe" not in ref  # a private tree's name
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["rejections"]["not a regular file"] == 2


# ---- real corpus ------------------------------------------------------------------------------

real = [pytest.mark.realdata, pytest.mark.skipif(not REAL_DATA.is_dir(), reason=REAL_DATA_REASON)]
REAL_SOURCES = {name: REAL_DATA / folder for name, folder in REAL_SOURCE_DIRS.items()}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    if not REAL_DATA.is_dir():
        pytest.skip(REAL_DATA_REASON)
    out = tmp_path_factory.mktemp("real") / "cvn"
    summary = curate({k: str(v) for k, v in REAL_SOURCES.items()}, str(out), "covid-vs-normal", key=KEY)
    return out, summary


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=REAL_DATA_REASON)
def test_real_corpus_counts_are_plausible(real_run):
    out, s = real_run
    assert s["inputs_per_source"] == {"cohen": 716, "rsna": 200, "kermany": 800, "radiography": 1200}
    assert s["accepted"] + s["rejected"] == 2916
    # 427 frontal COVID X-rays in Cohen, 600 COVID in radiography, minus duplicates
    assert 800 <= s["per_class"]["covid"] <= 1027
    assert 900 <= s["per_class"]["normal"] <= 1119
    assert s["per_source_class"]["rsna"] == {"normal": 100}
    assert s["per_source_class"]["kermany"]["normal"] >= 395
    assert s["rejections"]["not used by task covid-vs-normal"] >= 500  # pneumonia films of 3 sources
    assert s["crop"].get("cropped", 0) > 300 and not s["crop"].get("refused")


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=REAL_DATA_REASON)
def test_real_corpus_duplicates_and_rejections(real_run):
    out, s = real_run
    d = s["duplicates"]
    assert d["cross_source"] > 50 and d["by_sources"]["cohen/radiography"] > 50  # the 224-px Cohen copies
    assert d["by_sources"].get("kermany/radiography", 0) > 5  # radiography normals re-use Kermany films
    rejected = read_csv(out / "rejected.csv")
    reasons = {r["reason"] for r in rejected}
    assert "lateral view: L" in reasons and "not an X-ray: CT" in reasons and "unlabelled: todo" in reasons
    assert "near-duplicate of cohen:images/covid-19-pneumonia-bilateral.jpg" in {
        r["reason"] for r in rejected if r["source_ref"] == "COVID/COVID-1173.png"}
    manifest = read_csv(out / "manifest.csv")
    groups_of_patient = {}
    for r in manifest:
        groups_of_patient.setdefault(r["patient_id"], set()).add(r["group"])
    assert all(len(g) == 1 for g in groups_of_patient.values())
    assert len({(r["source"], r["hash"]) for r in manifest}) == len(manifest)  # no exact duplicate left
    # Re-crops of one film too far apart to reject (hash distance 48 and 52) are kept, in one group.
    by_ref = {r["source_ref"]: r for r in manifest}
    for cohen_ref, copy_ref in (("images/kjr-21-e25-g001-l-a.jpg", "COVID/COVID-1529.png"),
                                ("images/16654_1_1.png", "COVID/COVID-326.png")):
        assert by_ref[cohen_ref]["group"] == by_ref[copy_ref]["group"], (cohen_ref, copy_ref)
    assert s["largest_group"] <= 12  # the looser grouping threshold does not chain films into a lump
    rsna_ids = {p.stem for p in (REAL_DATA / "rsna-pneumonia" / "stage_2_train_images").glob("*.dcm")}
    text = (out / "manifest.csv").read_text() + (out / "rejected.csv").read_text() + (out / "summary.json").read_text()
    assert not [i for i in rsna_ids if i in text]


def test_label_conflicts_are_reported(tmp_path, capsys):
    cohen = testing.make_cohen(tmp_path / "cohen", [
        dict(patientid="p1", finding="COVID-19", view="PA", filename="a.png", seed=1),
        dict(patientid="p2", finding="No Finding", view="PA", filename="b.png", seed=2),
    ])
    testing.write_image(tmp_path / "f" / "healthy" / "copy-of-a.jpg", testing.radiograph(1), quality=70, size=(100, 120))
    testing.write_image(tmp_path / "f" / "healthy" / "c.png", testing.radiograph(3))
    s = curate([("folder", str(tmp_path / "f")), ("cohen", str(cohen))], str(tmp_path / "o"), "covid-vs-normal",
               class_map={"healthy": "normal"}, key=KEY, progress=True)
    assert s["per_class"] == {"covid": 1, "normal": 2}
    assert s["duplicates"]["label_conflicts"] == 1
    [example] = s["duplicates"]["label_conflict_examples"]
    assert re.fullmatch(r"folder:healthy/[0-9a-f]{16}-[0-9a-f]{8}\.jpg \(normal\) duplicates cohen:images/a\.png \(covid\)",
                        example), example
    assert "curating" in capsys.readouterr().err  # the progress bar


def test_an_output_that_cannot_be_a_folder_is_refused_before_any_image_is_read(corpus, tmp_path, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    monkeypatch.setattr(curate_mod, "_label", lambda *a, **k: pytest.fail("images were read"))
    for out in (a_file, a_file / "cvn"):
        with pytest.raises(CurationError, match=r"^output \(--out\) '.*' cannot be a directory: '.*a-file' is a file$"):
            curate(corpus, str(out), "covid-vs-normal", class_map=CLASS_MAP, key=KEY, workers=1)


def test_hold_out_writes_one_source_apart_and_loses_nothing(run, corpus, tmp_path):
    out, held = tmp_path / "train", tmp_path / "external"
    summary = curate(corpus, str(out), "covid-vs-normal", class_map=CLASS_MAP, key=KEY, workers=1,
                     hold_out=("cohen", str(held)))
    together = read_csv(run[0] / "manifest.csv")
    kept, apart = read_csv(out / "manifest.csv"), read_csv(held / "manifest.csv")
    # The same curation as without --hold-out, its records split by source: none lost, none in both.
    assert sorted(map(str, kept + apart)) == sorted(map(str, together))
    assert {r["source"] for r in apart} == {"cohen"} and "cohen" not in {r["source"] for r in kept}
    assert len(read_records(held)) == len(apart) == 4 and len(read_records(out)) == len(kept)
    assert not {r["group"] for r in kept} & {r["group"] for r in apart}
    # Every rejection, the held-out source's too, stays in one rejected.csv.
    assert read_csv(out / "rejected.csv") == read_csv(run[0] / "rejected.csv") and read_csv(held / "rejected.csv") == []
    assert summary["held_out"] == {"source": "cohen", "dir": str(held), "accepted": 4,
                                   "per_source_class": {"cohen": {"covid": 3, "normal": 1}}}
    assert summary["accepted"] == len(kept) and "cohen" not in summary["per_source_class"]
    held_summary = json.loads((held / "summary.json").read_text())
    assert held_summary["settings"] == summary["settings"] and held_summary["task"] == "covid-vs-normal"
    assert held_summary["held_out_of"] == {"source": "cohen", "training_data": str(out)}
    assert run[1]["held_out"] is None


def test_the_balance_cap_counts_the_training_films_only(corpus, tmp_path):
    summary = curate(corpus, str(tmp_path / "train"), "covid-vs-normal", class_map=CLASS_MAP, key=KEY, workers=1,
                     hold_out=("cohen", str(tmp_path / "external")), balance_cap=1)
    assert summary["per_class"] == {"covid": 1, "normal": 1}
    assert summary["held_out"]["per_source_class"] == {"cohen": {"covid": 3, "normal": 1}}  # none cut by the cap
    assert summary["balance"] == {"cap": 1, "before": {"covid": 2, "normal": 5}}  # without Cohen's 3 + 1


def test_hold_out_takes_a_group_whole(corpus, tmp_path, monkeypatch):
    """A film of another source that shares a group with a held-out film (a near-duplicate chain) goes
    with it: training on it would show the model a held-out patient."""
    real = curate_mod.dedupe.near_pairs

    def linked(hashes, threshold):  # grouping: the first Cohen film and the last film (Radiography's) near each other
        pairs = real(hashes, threshold)
        return pairs + [(0, len(hashes) - 1, threshold)] if threshold == curate_mod.dedupe.GROUP_THRESHOLD else pairs

    monkeypatch.setattr(curate_mod.dedupe, "near_pairs", linked)
    sources = {"cohen": corpus["cohen"], "radiography": corpus["radiography"]}
    summary = curate(sources, str(tmp_path / "train"), "covid-vs-normal", key=KEY, workers=1,
                     hold_out=("cohen", str(tmp_path / "external")))
    apart = read_csv(tmp_path / "external" / "manifest.csv")
    assert [r["source_ref"] for r in apart if r["source"] == "radiography"] == ["Normal/Normal-2.png"]
    assert summary["held_out"]["per_source_class"] == {"cohen": {"covid": 3, "normal": 1}, "radiography": {"normal": 1}}
    assert "Normal/Normal-2.png" not in {r["source_ref"] for r in read_csv(tmp_path / "train" / "manifest.csv")}


def test_hold_out_errors_before_any_image_is_read(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(curate_mod, "_label", lambda *a, **k: pytest.fail("images were read"))
    two = {"cohen": corpus["cohen"], "radiography": corpus["radiography"]}
    for sources, hold_out, message in [
        (two, ("rsna", str(tmp_path / "h")), r"--hold-out rsna: not one of the sources given \(cohen, radiography\)"),
        ({"cohen": corpus["cohen"]}, ("cohen", str(tmp_path / "h")), "it is the only source; nothing would be left"),
        (two, ("cohen", str(tmp_path / "o" / "h")), "must not contain each other"),
        (two, ("cohen", str(tmp_path)), "must not contain each other"),
        (two, ("cohen", os.path.join(corpus["radiography"], "h")), "inside the radiography source; choose another --hold-out"),
    ]:
        with pytest.raises(CurationError, match=message):
            curate(sources, str(tmp_path / "o"), "covid-vs-normal", key=KEY, hold_out=hold_out)
    assert not (tmp_path / "o").exists()


def test_cli_hold_out(corpus, tmp_path):
    result = CliRunner().invoke(cli.main, [
        "curate", "--source", f"cohen={corpus['cohen']}", "--source", f"radiography={corpus['radiography']}",
        "--out", str(tmp_path / "train"), "--hold-out", f"cohen={tmp_path / 'external'}", "--key", KEY])
    assert result.exit_code == 0, result.output
    assert (f"held out for external testing: 4 images of source cohen and of the groups they share, into "
            f"{tmp_path / 'external'} (not counted above)\n    cohen: covid 3, normal 1") in result.output
    assert "accepted per class: normal 2, covid 1\n    radiography: covid 1, normal 2\n" in result.output
    assert "warning" not in result.output
    # Held out, the Radiography films hold one class only (covid-vs-pneumonia: COVID; no pneumonia folder).
    result = CliRunner().invoke(cli.main, [
        "curate", "--source", f"cohen={corpus['cohen']}", "--source", f"radiography={corpus['radiography']}",
        "--task", "covid-vs-pneumonia", "--out", str(tmp_path / "t2"), "--hold-out", f"radiography={tmp_path / 'e2'}",
        "--key", KEY])
    assert result.exit_code == 0, result.output
    assert (f"covid-cxr: warning: the held-out films in {tmp_path / 'e2'} have no image of class pneumonia: they test "
            "one class only, without an AUC") in result.output
    result = CliRunner().invoke(cli.main, ["curate", "--source", f"cohen={corpus['cohen']}", "--out", str(tmp_path / "o"),
                                           "--hold-out", "cohen"])
    assert result.exit_code == 2 and "--hold-out 'cohen': expected NAME=DIR" in result.output, result.output


def test_the_metadata_s_age_wins_over_a_dicom_header_s_which_fills_in_a_blank_one(tmp_path):
    # Round 10: the header's age replaced the metadata's (sex and view were pinned, age was not).
    cohen = tmp_path / "cohen"
    for name, seed in (("a.dcm", 80), ("b.dcm", 81)):
        testing.write_dicom(cohen / "images" / name, testing.radiograph(seed), patient_id="PID-" + name, age="033Y")
    testing.write_csv(cohen / "metadata.csv", testing.COHEN_FIELDS, [
        ("pa", "0", "F", "50", "COVID-19", "PA", "X-ray", "images", "a.dcm"),
        ("pb", "0", "F", "", "COVID-19", "PA", "X-ray", "images", "b.dcm")])
    out = tmp_path / "out"
    curate({"cohen": str(cohen)}, str(out), "covid-vs-normal", key=KEY, workers=1)
    assert sorted(ex.features.feature[features.AGE].int64_list.value[0] for ex in read_records(out)) == [33, 50]


def test_a_held_out_sources_rejected_copy_does_not_take_the_kept_film_with_it(corpus, tmp_path):
    # Round 10: Radiography's COVID-1.png, a re-encoding of Cohen's images/b.png, is rejected as its
    # near-duplicate; only the held-out source's accepted films take their groups apart, so b.png (and its
    # patient's a.png) stay with the training data.
    out, held = tmp_path / "train", tmp_path / "external"
    sources = {"cohen": corpus["cohen"], "radiography": corpus["radiography"]}
    curate(sources, str(out), "covid-vs-normal", key=KEY, workers=1, hold_out=("radiography", str(held)))
    kept = {(r["source"], r["source_ref"]) for r in read_csv(out / "manifest.csv")}
    assert {("cohen", "images/a.png"), ("cohen", "images/b.png")} <= kept
    assert {r["source"] for r in read_csv(held / "manifest.csv")} == {"radiography"}
    assert {r["source_ref"]: r["reason"] for r in read_csv(out / "rejected.csv")}["COVID/COVID-1.png"].startswith(
        "near-duplicate of cohen:images/b.png")


def test_an_adapter_passed_as_an_object_and_a_missing_dicom_keep_their_names_private(tmp_path):
    # Round 10: a Source subclass curation does not know (its names unknown to it) is written as a private
    # tree; a metadata row naming a DICOM that is not there gets a pseudonym too (a DICOM's name may hold an id).
    from covid_cxr.data.sources import RadiographySource

    class Hospital(RadiographySource):
        pass

    rad = tmp_path / "rad"
    testing.write_image(rad / "COVID" / "DOE_JANE" / "x.png", testing.radiograph(1))
    testing.write_image(rad / "Normal" / "y.png", testing.radiograph(2))
    cohen = testing.make_cohen(tmp_path / "cohen", [
        dict(patientid="1", finding="COVID-19", filename="a.png", seed=3),
        dict(patientid="2", finding="COVID-19", filename="DOE_JOHN.dcm", seed=None)])
    out = tmp_path / "out"
    curate([("cohen", str(cohen)), Hospital(str(rad))], str(out), "covid-vs-normal", key=KEY, workers=1)
    written = (out / "manifest.csv").read_text() + (out / "rejected.csv").read_text()
    assert "DOE" not in written and "x.png" not in written and "y.png" not in written
    assert "images/a.png" in written


def test_the_terminal_summary_lists_the_most_frequent_rejection_first():
    text = curate_mod.format_summary({"accepted": 1, "task": "covid-vs-normal", "classes": ["normal", "covid"],
                                      "rejected": 5, "rejections": {"a reason": 1, "b reason": 3, "c reason": 1}}, "out")
    assert [line.split(None, 1)[1] for line in text.splitlines() if line.endswith(" reason")] == [
        "b reason", "a reason", "c reason"]


def test_no_source_at_all_is_a_one_line_error_not_an_empty_curation(tmp_path):
    for none in ({}, []):
        with pytest.raises(CurationError, match=r"^no sources given; pass --source NAME=PATH \(cohen, "):
            curate(none, str(tmp_path / "x"), "covid-vs-normal", key=KEY)
    assert not (tmp_path / "x").exists()


def test_an_os_error_while_curating_is_a_one_line_error_naming_the_file(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "o" / "train-00000.tfrecord.gz"))

    monkeypatch.setattr(curate_mod, "curate", full_disk)
    (tmp_path / "src").mkdir()
    result = CliRunner().invoke(cli.main, ["curate", "--source", f"folder={tmp_path / 'src'}", "--out",
                                           str(tmp_path / "o"), "--key", KEY])
    assert result.exit_code == 1, result.output
    assert result.output == f"covid-cxr: error: No space left on device: {tmp_path / 'o' / 'train-00000.tfrecord.gz'}\n"


def test_locate_refuses_a_source_name_that_is_not_a_source(tmp_path):
    result = CliRunner().invoke(cli.main, ["locate", "--source", f"nih={tmp_path}", "--key", KEY,
                                           f"COVID/{'0' * 16}-{'0' * 8}.png"])
    assert result.exit_code == 2, result.output
    assert f"--source 'nih={tmp_path}': 'nih' is not a source; choose from cohen, " in result.output, result.output


class _DyingPool:  # the first films decode, then a decoder takes its worker down (a segfault in C)
    before_crash = ("first",)

    def __init__(self, workers, mp_context=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, jobs, chunksize=1):
        import concurrent.futures

        yield from self.before_crash
        raise concurrent.futures.process.BrokenProcessPool("A process in the process pool was terminated abruptly")


def test_a_worker_process_that_dies_is_a_one_line_error_naming_the_way_to_find_the_file(monkeypatch):
    import concurrent.futures

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", _DyingPool)
    results = curate_mod._run_jobs([("a.png", 512, True, "none")] * curate_mod._PARALLEL_MIN_JOBS, 2, False)
    assert next(results) == "first"
    with pytest.raises(CurationError, match=r"^an image worker process crashed \(a decoder failed hard\); re-run with "
                                            r"--workers 1 to see which file$"):
        next(results)


def test_a_worker_that_dies_under_copies_of_curated_names_its_parameter_not_curates_option(tmp_path, monkeypatch):
    """A library call (scripts/quality_benchmark.py) has no --workers option to re-run with."""
    import concurrent.futures

    curated, _, films = _curated_radiography_and_kermany_films(tmp_path)
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", _DyingPool)
    monkeypatch.setattr(_DyingPool, "before_crash", ())
    monkeypatch.setattr(curate_mod, "_PARALLEL_MIN_JOBS", 1)
    with pytest.raises(CurationError, match=r"^an image worker process crashed \(a decoder failed hard\); call "
                                            r"copies_of_curated with workers=1 to see which file$"):
        curate_mod.copies_of_curated(films, curated, workers=2)


def test_the_terminal_summary_counts_label_conflicts_only_when_there_are_some():
    summary = {"accepted": 1, "task": "covid-vs-normal", "classes": ["normal", "covid"], "rejected": 2,
               "duplicates": {"rejected": 2, "within_source": 0, "cross_source": 2, "label_conflicts": 2}}
    assert ("  label conflicts (same picture, different labels; the kept copy's label wins): 2"
            in curate_mod.format_summary(summary, "out").splitlines())
    summary["duplicates"]["label_conflicts"] = 0
    assert "label conflicts" not in curate_mod.format_summary(summary, "out")


def _curated_radiography_and_kermany_films(tmp_path):
    """A curated Radiography directory and Kermany films: two re-encoded copies of its normals, one distinct
    film and one that cannot be decoded. Returns (curated dir, {copy index: path}, [every film])."""
    rad = tmp_path / "radiography"
    for i in range(12):  # enough films that ExampleGen's deal puts them in more than one split
        testing.write_image(rad / "Normal" / f"Normal-{i}.png", testing.radiograph(60 + i), rgb=True, size=(224, 224))
    testing.write_image(rad / "COVID" / "COVID-1.png", testing.radiograph(80))
    curate({"radiography": str(rad)}, str(tmp_path / "cvn"), "covid-vs-normal", key=KEY, workers=1)
    ker = tmp_path / "kermany"
    copies = {i: str(testing.write_image(ker / f"IM-{i}.jpeg", testing.radiograph(60 + i))) for i in (2, 7)}
    distinct = str(testing.write_image(ker / "IM-99.jpeg", testing.radiograph(99)))
    (ker / "IM-bad.jpeg").write_bytes(b"not a jpeg")
    return str(tmp_path / "cvn"), copies, [copies[2], distinct, str(ker / "IM-bad.jpeg"), copies[7]]


def _assert_the_two_copies_found(found, copies, films):
    assert {path: ref for path, (ref, _) in found.copies.items()} == {
        copies[2]: "radiography:Normal/Normal-2.png", copies[7]: "radiography:Normal/Normal-7.png"}
    assert all(distance <= 40 for _, distance in found.copies.values())
    assert (found.threshold, found.curated_films) == (40, 13)
    assert found.unchecked == {films[2]: "cannot decode image (not a format Pillow knows, or a damaged header)"}


def test_films_of_another_source_that_copy_a_curated_film_are_found_in_every_split(tmp_path):
    """An 'external' source whose films another, curated source carries re-encoded (Radiography holds some of
    Kermany's normals): curation's own rule finds those and only those, against every curated film."""
    curated, copies, films = _curated_radiography_and_kermany_films(tmp_path)
    found = curate_mod.copies_of_curated(films, curated)
    _assert_the_two_copies_found(found, copies, films)  # the bad film named, not silently kept or dropped
    # The curation's own distance, not the default: at 0 bits a re-encoded copy is no longer the same film.
    summary_path = tmp_path / "cvn" / features.SUMMARY
    summary = json.loads(summary_path.read_text())
    summary["settings"]["hash_threshold"] = 0
    summary_path.write_text(json.dumps(summary))
    assert curate_mod.copies_of_curated([copies[2]], curated).copies == {}


def test_copies_of_curated_hashes_in_worker_processes_with_the_same_result(tmp_path, monkeypatch):
    """The films are hashed by curation's own job runner: in worker processes, each film's result still
    its own (job order), the undecodable one still unchecked with its reason."""
    curated, copies, films = _curated_radiography_and_kermany_films(tmp_path)
    ran = []
    run_jobs = curate_mod._run_jobs

    def spy(jobs, workers, progress, **hint):
        ran.append((len(jobs), workers))
        return run_jobs(jobs, workers, progress, **hint)

    monkeypatch.setattr(curate_mod, "_run_jobs", spy)
    monkeypatch.setattr(curate_mod, "_PARALLEL_MIN_JOBS", 1)  # the process pool, on four films
    _assert_the_two_copies_found(curate_mod.copies_of_curated(films, curated, workers=2), copies, films)
    assert ran == [(4, 2)]


def test_copies_of_curated_refuses_a_directory_without_perceptual_hashes(tmp_path):
    from covid_cxr.data import synthetic

    synthetic.generate(str(tmp_path / "syn"), "covid-vs-normal", patients_per_class=2, seed=0)
    with pytest.raises(CurationError, match=r"syn: not hashed with curation's perceptual hash .*near copies cannot be found$"):
        curate_mod.copies_of_curated([], str(tmp_path / "syn"))
    with pytest.raises(CurationError, match=r"nothing: cannot read its films' hashes \(FileNotFoundError"):
        curate_mod.copies_of_curated([], str(tmp_path / "nothing"))


def test_a_hand_edited_curated_setting_is_a_one_line_error_naming_the_field(tmp_path):
    """int("big") outside the guarded read was a bare ValueError; bool("false") hashed with the crop on."""
    curated, _, films = _curated_radiography_and_kermany_films(tmp_path)
    summary_path = Path(curated) / features.SUMMARY
    written = json.loads(summary_path.read_text())
    for field, value, wanted in (("max_side", "big", "a whole number"), ("hash_threshold", "4O", "a whole number"),
                                 ("hash_threshold", None, "a whole number"), ("crop", "false", "true or false"),
                                 ("equalize", 1, "text")):
        summary_path.write_text(json.dumps({**written, "settings": {**written["settings"], field: value}}))
        with pytest.raises(CurationError) as raised:
            curate_mod.copies_of_curated(films, curated, workers=1)
        assert str(raised.value) == f"{curated}: summary.json's settings.{field} is {value!r}, not {wanted}"
    summary_path.write_text(json.dumps({**written, "settings": "oops"}))
    with pytest.raises(CurationError, match=r"summary.json's settings is 'oops', not a mapping$"):
        curate_mod.copies_of_curated(films, curated, workers=1)


def test_a_curated_manifest_cut_short_is_a_one_line_error_not_a_traceback(tmp_path):
    curated, _, films = _curated_radiography_and_kermany_films(tmp_path)
    manifest = Path(curated) / features.MANIFEST
    text = manifest.read_text(encoding="utf-8")
    for cut, row in ((len(text) - 40, 13), (text.rindex("\n", 0, len(text) - 1) + 10, 13)):  # in its hash; before it
        manifest.write_text(text[:cut], encoding="utf-8")
        with pytest.raises(CurationError, match=rf"^{re.escape(curated)}: cannot read its films' hashes "
                                                rf"\(manifest.csv row {row} holds no 256-bit hash\)$"):
            curate_mod.copies_of_curated(films, curated, workers=1)
