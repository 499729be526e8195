import csv
import json

import pytest

from covid_cxr.data import testing
from covid_cxr.data.sources import RsnaSource, SourceError, rsna
from covid_cxr.data.testing import REAL_DATA, REAL_DATA_REASON


def test_labels_one_candidate_per_patient(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [
        dict(id="aaa-1", target="1", cls="Lung Opacity", seed=1, boxes=3),
        dict(id="bbb-2", target="0", cls="Normal", seed=2),
        dict(id="ccc-3", target="0", cls="No Lung Opacity / Not Normal", seed=3),
        dict(id="ddd-4", target="1", cls="Normal", seed=4),
        dict(id="eee-5", target="0", cls="Normal", seed=None),
        dict(id="ggg-7", target="0", cls="DOE^JANE 1977", seed=7),  # a cell holding anything
    ])
    testing.write_dicom(root / "stage_2_train_images" / "fff-6.dcm", testing.radiograph(6))
    got = {c.patient_id: c for c in RsnaSource(str(root)).candidates()}
    assert sorted(got) == ["aaa-1", "bbb-2", "ccc-3", "ddd-4", "eee-5", "fff-6", "ggg-7"]
    assert got["ggg-7"].reject == "inconsistent labels: Target 0 class an unknown value"  # not quoted
    assert got["aaa-1"].finding == "pneumonia" and got["aaa-1"].source_ref == "stage_2_train_images/aaa-1.dcm"
    assert got["bbb-2"].finding == "normal"
    assert got["ccc-3"].reject.startswith("abnormal, no lung opacity")
    assert got["ddd-4"].reject.startswith("inconsistent labels")
    assert got["eee-5"].reject == "missing image file"
    assert got["fff-6"].reject.startswith("no label")
    assert all(c.ref_id == c.patient_id for c in got.values())  # no NIH mapping: each film its own patient
    assert got["aaa-1"].load().shape == (128, 128)


def test_a_patient_with_conflicting_rows_is_rejected():
    # Two train_labels rows of one patientId, Target 0 and 1: neither may win (by set order or otherwise).
    for classes in ({rsna.LUNG_OPACITY}, {rsna.NORMAL}, set()):
        finding, reason = rsna._label({"0", "1"}, classes)
        assert finding is None and reason == f"inconsistent labels: Target ['0', '1'] class {sorted(classes)}"
    finding, reason = rsna._label({"1"}, {rsna.LUNG_OPACITY, rsna.NORMAL})
    assert finding is None and reason.startswith("inconsistent labels")


def test_a_missing_class_is_no_label_for_target_0_and_pneumonia_for_target_1():
    # Target 1 needs no class to be an opacity; Target 0 without one is normal or "not normal": unknown.
    assert rsna._label({"1"}, set()) == rsna._label({"1"}, {""}) == ("pneumonia", None)
    assert rsna._label({"0"}, set()) == (None, "no label: Target 0 without a class in stage_2_detailed_class_info.csv")


def test_an_upper_case_dcm_extension_is_an_rsna_image_file(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="aaa-1", target="1", cls="Lung Opacity", seed=None)])
    testing.write_dicom(root / "stage_2_train_images" / "aaa-1.DCM", testing.radiograph(1))
    [c] = RsnaSource(str(root)).every_candidate()
    assert (c.source_ref, c.finding, c.ref_id) == ("stage_2_train_images/aaa-1.DCM", "pneumonia", "aaa-1")


def test_layout_errors(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="a", target="1", cls="Lung Opacity", seed=1)])
    (root / "stage_2_detailed_class_info.csv").unlink()
    with pytest.raises(SourceError, match="stage_2_detailed_class_info.csv not found"):
        RsnaSource(str(root))


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=REAL_DATA_REASON)
def test_real_rsna_counts():
    cands = list(RsnaSource(str(REAL_DATA / "rsna-pneumonia")).candidates())
    assert len(cands) == 200 and not [c for c in cands if c.reject]
    assert sum(c.finding == "pneumonia" for c in cands) == 100
    assert sum(c.finding == "normal" for c in cands) == 100


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=REAL_DATA_REASON)
def test_real_rsna_films_are_grouped_by_their_nih_patient(tmp_path):
    """The corpus's 200 RSNA-style films come from fewer NIH patients (one has 11 films)."""
    source = RsnaSource(str(testing.real_rsna_with_nih_mapping(tmp_path / "rsna")))
    films = [c for c in source.candidates() if c.finding]
    patients = {c.patient_id for c in films}
    assert len(films) == 200 and all(p.startswith("nih:") for p in patients) and len(patients) < 150
    assert max(sum(c.patient_id == p for c in films) for p in patients) >= 5
    assert source.patient_grouping.startswith(f"NIH patients from {rsna.NIH_MAPPING}: 200 of 200 patientIds mapped")


def test_a_copy_or_another_format_of_a_patients_film_is_rejected_not_lost(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="aaa-1", target="1", cls="Lung Opacity", seed=1)])
    images = root / "stage_2_train_images"
    testing.write_image(images / "aaa-1.png", testing.radiograph(2))  # sorted after aaa-1.dcm: used to replace it
    testing.write_dicom(images / "sub" / "aaa-1.dcm", testing.radiograph(3))
    testing.write_image(tmp_path / "rsna" / "stray.png", testing.radiograph(4))  # outside the layout
    got = {c.source_ref: c for c in RsnaSource(str(root)).every_candidate()}
    assert got["stage_2_train_images/aaa-1.dcm"].finding == "pneumonia"
    for ref in ("stage_2_train_images/aaa-1.png", "stage_2_train_images/sub/aaa-1.dcm"):
        assert got[ref].reject.startswith("not an RSNA image file") and got[ref].ref_id == "aaa-1", ref
        assert got[ref].patient_id == "aaa-1"  # so curation writes the pseudonym in place of the raw id
    assert got["stray.png"].reject.startswith("outside the layout: expected the RSNA")
    assert len(got) == 4


def test_a_film_only_in_a_subfolder_is_not_taken_for_its_patient(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="bbb-2", target="0", cls="Normal", seed=None)])
    testing.write_dicom(root / "stage_2_train_images" / "sub" / "bbb-2.dcm", testing.radiograph(3))
    got = {c.source_ref: c.reject for c in RsnaSource(str(root)).every_candidate()}
    assert got == {"stage_2_train_images/sub/bbb-2.dcm": "not an RSNA image file: expected stage_2_train_images/<patientId>.dcm",
                   "stage_2_train_images/bbb-2.dcm": "missing image file"}


def _map_to_nih(root, pairs):
    entries = [{"subset_img_id": film, "img_id": nih, "orig_labels": ["No Finding"]} for film, nih in pairs]
    (root / "pneumonia-challenge-dataset-mappings_2018.json").write_text(json.dumps(entries))


def test_rsnas_nih_mapping_ties_a_patients_films_together(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id=f"film-{n}", target="0", cls="Normal", seed=n) for n in range(4)])
    source = RsnaSource(str(root))
    assert len(list(source.candidates())) == 4 and source.patient_grouping.startswith("one per film: RSNA's patientIds")
    _map_to_nih(root, [("film-0", "00001684_000.png"), ("film-1", "00001684_003.png"), ("film-2", "00000007_000.png")])
    source = RsnaSource(str(root))
    got = {c.ref_id: c for c in source.candidates()}
    assert got["film-0"].patient_id == got["film-1"].patient_id == "nih:00001684"
    assert got["film-2"].patient_id == "nih:00000007" and got["film-3"].patient_id == "film-3"  # unmapped: its own
    assert source.patient_grouping.startswith("NIH patients from pneumonia-challenge-dataset-mappings_2018.json: "
                                              "3 of 4 patientIds mapped (1 unmapped")


@pytest.mark.parametrize("content, problem", [
    ("{not json", "is not readable JSON"),
    ('{"subset_img_id": "a"}', "entry 1 lacks a subset_img_id or an NIH img_id"),
    ('[{"subset_img_id": "SECRET-ID", "img_id": 7}]', "entry 1 lacks a subset_img_id or an NIH img_id"),
    ('[{"subset_img_id": "SECRET-ID", "img_id": "_000.png"}]', "entry 1 lacks a subset_img_id or an NIH img_id"),
    ('[{"subset_img_id": "SECRET-ID", "img_id": "00000001_000.png"}, {"subset_img_id": "SECRET-ID", "img_id": '
     '"00000001_001.png"}, {"subset_img_id": "SECRET-ID", "img_id": "00000002_000.png"}]',
     "entry 3 maps a patientId listed before to another NIH patient"),
])
def test_a_broken_nih_mapping_is_a_one_line_layout_error_without_its_ids(tmp_path, content, problem):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="a", target="1", cls="Lung Opacity", seed=1)])
    (root / "pneumonia-challenge-dataset-mappings_2018.json").write_text(content)
    with pytest.raises(SourceError, match=f"pneumonia-challenge-dataset-mappings_2018.json {problem}") as e:
        RsnaSource(str(root))
    assert "SECRET" not in str(e.value) and "\n" not in str(e.value)


def test_label_files_that_are_not_utf8_or_not_csv_are_named(tmp_path, monkeypatch):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="aaa-1", target="1", cls="Lung Opacity", seed=1)])
    labels = root / rsna.LABELS
    good = labels.read_bytes()
    labels.write_bytes(good + "bbb-2,,,,,0 # Müller\n".encode("latin-1"))
    with pytest.raises(SourceError, match=rf"^{labels} is not UTF-8 text \(byte {len(good) + 15}\): save it as UTF-8$"):
        RsnaSource(str(root))
    labels.write_bytes(good + b"bbb-2,,,,," + b"1" * 200_000 + b"\n")  # a cell over the csv module's limit
    assert len(list(RsnaSource(str(root)).candidates())) == 2  # read: the row's patient has no film
    limit = csv.field_size_limit()
    monkeypatch.setattr(csv, "field_size_limit", lambda *new: limit)  # a csv.Error all the same
    with pytest.raises(SourceError, match=rf"^{labels}: row 2 \(line 3\) cannot be read as CSV: field larger than"):
        RsnaSource(str(root))


def test_label_rows_without_a_patient_id_are_rejected_not_dropped(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="aaa-1", target="1", cls="Lung Opacity", seed=1)])
    with open(root / rsna.LABELS, "a", encoding="utf-8") as f:
        f.write(",,,,,1\n ,,,,,0\n")
    with open(root / rsna.CLASSES, "a", encoding="utf-8") as f:
        f.write(",Normal\n")
    got = {c.source_ref: c for c in RsnaSource(str(root)).candidates()}
    assert got["stage_2_train_images/aaa-1.dcm"].finding == "pneumonia"
    assert {ref: (c.path, c.reject) for ref, c in got.items() if c.reject} == {
        "stage_2_train_labels.csv row 2": (None, "malformed stage_2_train_labels.csv row: blank patientId"),
        "stage_2_train_labels.csv row 3": (None, "malformed stage_2_train_labels.csv row: blank patientId"),
        "stage_2_detailed_class_info.csv row 2": (None, "malformed stage_2_detailed_class_info.csv row: blank patientId"),
    }


def test_a_named_film_that_is_a_broken_link_is_rejected_once_with_that_reason(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="aaa-1", target="1", cls="Lung Opacity", seed=1),
                                                 dict(id="bbb-2", target="0", cls="Normal", seed=None)])
    (root / "stage_2_train_images" / "bbb-2.dcm").symlink_to(tmp_path / "nowhere.dcm")
    got = [(c.source_ref, c.reject) for c in RsnaSource(str(root)).every_candidate()]
    assert got == [("stage_2_train_images/aaa-1.dcm", None),
                   ("stage_2_train_images/bbb-2.dcm", "broken symbolic link: its target does not exist")]


# Round 10.
def test_two_classes_or_an_unknown_target_without_a_class_are_inconsistent_whichever_comes_first():
    assert rsna._label({"0"}, {rsna.NORMAL, rsna.NOT_NORMAL}) == (
        None, "inconsistent labels: Target ['0'] class ['No Lung Opacity / Not Normal', 'Normal']")
    assert rsna._label({"1"}, {rsna.LUNG_OPACITY, rsna.NORMAL}) == (
        None, "inconsistent labels: Target ['1'] class ['Lung Opacity', 'Normal']")
    assert rsna._label({"2"}, set()) == (None, "inconsistent labels: Target an unknown value class none")
    assert rsna._label({""}, {""}) == (None, "inconsistent labels: Target  class none")


def test_a_film_with_a_class_row_but_no_target_row_has_no_label(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="aaa-1", target="1", cls="Lung Opacity", seed=1)])
    testing.write_dicom(root / rsna.IMAGES / "bbb-2.dcm", testing.radiograph(2))
    with open(root / rsna.CLASSES, "a", encoding="utf-8") as f:
        f.write("bbb-2,Normal\n")
    got = {c.source_ref: c.reject for c in RsnaSource(str(root)).every_candidate()}
    assert got == {"stage_2_train_images/aaa-1.dcm": None,
                   "stage_2_train_images/bbb-2.dcm": "no label: not in stage_2_train_labels.csv"}


def test_a_second_dcm_of_one_patientid_differing_in_case_is_rejected_not_lost(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="aaa-1", target="1", cls="Lung Opacity", seed=1)])
    testing.write_dicom(root / rsna.IMAGES / "aaa-1.DCM", testing.radiograph(2))  # sorted first: the film
    got = {c.source_ref: c for c in RsnaSource(str(root)).every_candidate()}
    assert got["stage_2_train_images/aaa-1.DCM"].finding == "pneumonia"
    assert got["stage_2_train_images/aaa-1.dcm"].reject == (
        "not an RSNA image file: expected stage_2_train_images/<patientId>.dcm")
    assert len(got) == 2


def test_nih_mapping_ids_with_spaces_are_mapped(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id=f"film-{n}", target="0", cls="Normal", seed=n) for n in range(2)])
    _map_to_nih(root, [(" film-0 ", " 00001684_000.png "), ("film-1", "00001684_001.png")])
    got = {c.ref_id: c.patient_id for c in RsnaSource(str(root)).candidates()}
    assert got == {"film-0": "nih:00001684", "film-1": "nih:00001684"}


def test_the_grouping_note_counts_this_sources_patientids_only(tmp_path):
    # RSNA's mapping file lists all 26,684 challenge films: those not here are not counted as mapped.
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="film-0", target="0", cls="Normal", seed=1),
                                                 dict(id="film-1", target="0", cls="Normal", seed=None),
                                                 dict(id="film-2", target="0", cls="Normal", seed=2)])
    _map_to_nih(root, [("film-0", "00000001_000.png"), ("film-1", "00000002_000.png"),
                       ("film-8", "00000008_000.png"), ("film-9", "00000009_000.png")])
    source = RsnaSource(str(root))
    list(source.candidates())
    assert source.patient_grouping.startswith("NIH patients from pneumonia-challenge-dataset-mappings_2018.json: "
                                              "2 of 3 patientIds mapped (1 unmapped")


def test_label_cells_padded_with_spaces_are_read(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [])
    for n in (1, 2):
        testing.write_dicom(root / rsna.IMAGES / f"p-{n}.dcm", testing.radiograph(n))
    testing.write_csv(root / rsna.LABELS, ("patientId", "x", "y", "width", "height", "Target"),
                      [(" p-1 ", "", "", "", "", " 1 "), ("p-2", "", "", "", "", "0 ")])
    testing.write_csv(root / rsna.CLASSES, ("patientId", "class"), [("p-1", " Lung Opacity "), (" p-2", "Normal ")])
    got = {c.ref_id: (c.finding, c.reject) for c in RsnaSource(str(root)).candidates()}
    assert got == {"p-1": ("pneumonia", None), "p-2": ("normal", None)}


def test_conflicting_targets_without_a_class_row_show_no_class(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="aaa-1", target="0", cls="Normal", seed=1)])
    testing.write_csv(root / rsna.LABELS, ("patientId", "x", "y", "width", "height", "Target"),
                      [("aaa-1", "", "", "", "", "0"), ("aaa-1", "", "", "", "", "1")])
    testing.write_csv(root / rsna.CLASSES, ("patientId", "class"), [])
    [c] = RsnaSource(str(root)).candidates()
    assert c.reject == "inconsistent labels: Target ['0', '1'] class []"


def test_the_layout_folders_and_columns_and_private_names(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="a", target="1", cls="Lung Opacity", seed=1)])
    source = RsnaSource(str(root))
    # Both layout folders are named as they are (not as folder-<pseudonym>); any other file name may hold an id.
    assert [source.names_a_class(f) for f in (rsna.IMAGES, rsna.TEST_IMAGES, "DOE_JANE")] == [True, True, False]
    assert source.private_names is True
    testing.write_csv(root / rsna.CLASSES, ("patientId", "kind"), [("a", "Lung Opacity")])
    with pytest.raises(SourceError, match=r"stage_2_detailed_class_info.csv lacks column\(s\) class "):
        RsnaSource(str(root))
    root = testing.make_rsna(tmp_path / "empty", [])
    (root / rsna.IMAGES).rmdir()
    with pytest.raises(SourceError, match="stage_2_train_images/ not found"):
        RsnaSource(str(root))


def test_a_nih_mapping_that_is_not_utf8_is_a_layout_error(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="a", target="1", cls="Lung Opacity", seed=1)])
    (root / rsna.NIH_MAPPING).write_bytes(b'[{"subset_img_id": "M\xfcller"}]')
    with pytest.raises(SourceError, match=r"mappings_2018.json is not readable JSON \(UnicodeDecodeError\)"):
        RsnaSource(str(root))
