import collections

import pytest

from covid_cxr.data import features, testing
from covid_cxr.data.sources import CohenSource, SourceError
from covid_cxr.data.sources.cohen import age_of, finding_of, sex_of, view_of
from covid_cxr.data.testing import REAL_DATA, REAL_DATA_REASON


@pytest.mark.parametrize("text, finding", [
    ("COVID-19", "covid"), ("COVID-19, ARDS", "covid"), ("Pneumonia/Viral/COVID-19", "covid"),
    ("No Finding", "normal"),
    ("SARS", "pneumonia"), ("Pneumocystis", "pneumonia"), ("Streptococcus", "pneumonia"), ("Klebsiella", "pneumonia"),
    ("Mycoplasma Bacterial Pneumonia", "pneumonia"), ("Legionella", "pneumonia"), ("Lipoid", "pneumonia"),
    ("Varicella", "pneumonia"), ("E.Coli", "pneumonia"), ("Bacterial", "pneumonia"), ("Influenza", "pneumonia"),
    ("Pneumonia", "pneumonia"), ("Pneumonia/Viral/SARS", "pneumonia"), ("Pneumonia/Bacterial/Streptococcus", "pneumonia"),
    ("Pneumonia/Fungal/Pneumocystis", "pneumonia"), ("Pneumonia/Aspiration", "pneumonia"),
    ("ARDS", "other_opacity"), ("Tuberculosis", "other_opacity"),
    ("non-COVID pneumonia", "pneumonia"),  # COVID only as a whole term, never as a substring
])
def test_finding_mapping(text, finding):
    assert finding_of(text) == (finding, None)


@pytest.mark.parametrize("text, reason", [
    ("todo", "unlabelled: todo"), ("Unknown", "unlabelled: Unknown"), ("", "unlabelled: blank"),
    ("Cardiomegaly", "unrecognised finding: Cardiomegaly"),
    ("Finding unclear", "unrecognised finding: Finding unclear"),  # only "No Finding" is normal
    ("ARDS, Cardiomegaly", "unrecognised finding: ARDS, Cardiomegaly"),  # other_opacity only when nothing else is named
    ("No Finding, Cardiomegaly", "unrecognised finding: No Finding, Cardiomegaly"),  # normal only when nothing else is
])
def test_finding_rejections(text, reason):
    assert finding_of(text) == (None, reason)


def test_views():
    assert view_of("PA") == ("PA", None)
    assert view_of("AP") == ("AP", None)
    assert view_of("AP Supine") == ("AP Supine", None)
    assert view_of("AP Erect") == ("AP", None)
    assert view_of("L") == (None, "lateral view: L")
    assert [view_of(v) for v in ("LL", "RL", "Lateral")] == [(None, f"lateral view: {v}") for v in ("LL", "RL", "Lateral")]
    assert view_of("") == (None, "unknown view: blank")
    assert view_of("?") == (None, "unknown view: ?")
    assert view_of("Axial") == (None, "not a frontal view: Axial")
    assert view_of("Apical lordotic") == (None, "not a frontal view: Apical lordotic")  # "AP" only as a word


def test_ages_over_89_are_recorded_as_90():
    assert [age_of(a) for a in ("45", "89", "90", "93.0", "130", "", "?")] == [45, 89, 90, 90, -1, -1, -1]


def test_selection_and_rejection_rules(tmp_path):
    root = testing.make_cohen(tmp_path / "cohen", [
        dict(patientid="1", finding="COVID-19", view="PA", filename="a.png", seed=1, sex="F", age="61"),
        dict(patientid="1", finding="COVID-19", view="L", filename="a-lat.png", seed=2),
        dict(patientid="2", finding="COVID-19", view="Axial", modality="CT", filename="ct.png", seed=3),
        dict(patientid="3", finding="todo", view="AP", filename="todo.png", seed=4),
        dict(patientid="4", finding="No Finding", view="AP Supine", filename="n.png", seed=5, sex="", age=""),
        dict(patientid="5", finding="Streptococcus", view="", filename="blank.png", seed=6),
        dict(patientid="6", finding="COVID-19", view="?", filename="q.png", seed=7),
        dict(patientid="7", finding="COVID-19", view="AP", filename="gone.png", seed=None),
        dict(patientid="8", finding="COVID-19", view="AP", filename="a.png", seed=1),  # same file, 2nd patient
    ])
    testing.write_image(root / "images" / "orphan.png", testing.radiograph(9))
    got = {(c.source_ref, c.patient_id): c for c in CohenSource(str(root)).candidates()}
    a = got[("images/a.png", "1")]
    assert (a.finding, a.view, a.sex, a.age, a.reject) == ("covid", "PA", "F", 61, None)
    assert got[("images/a.png", "8")].finding == "covid"
    assert got[("images/a-lat.png", "1")].reject == "lateral view: L"
    assert got[("images/ct.png", "2")].reject == "not an X-ray: CT"
    assert got[("images/todo.png", "3")].reject == "unlabelled: todo"
    n = got[("images/n.png", "4")]
    assert (n.finding, n.view, n.sex, n.age) == ("normal", "AP Supine", features.UNKNOWN, features.UNKNOWN_AGE)
    assert got[("images/blank.png", "5")].reject == "unknown view: blank"
    assert got[("images/q.png", "6")].reject == "unknown view: ?"
    gone = got[("images/gone.png", "7")]
    assert gone.reject == "missing image file" and gone.path is None
    assert got[("images/orphan.png", None)].reject == "not in metadata.csv"
    assert len(got) == 10
    assert a.load().shape == (160, 128)


def test_the_folder_column_modality_spellings_sex_case_and_a_blank_patient_id(tmp_path):
    root = testing.make_cohen(tmp_path / "cohen", [])
    testing.write_image(root / "images" / "a.png", testing.radiograph(1))
    testing.write_image(root / "volumes" / "v.png", testing.radiograph(2))
    testing.write_image(root / "images" / "v.png", testing.radiograph(3))  # same name, the other folder
    testing.write_csv(root / "metadata.csv", testing.COHEN_FIELDS, [
        ("1", "0", "f", "40", "COVID-19", "PA", "CXR", "images", "a.png"),
        ("", "0", "m", "41", "COVID-19", "AP", "xray", "volumes", "v.png"),
    ])
    got = {c.source_ref: c for c in CohenSource(str(root)).candidates()}
    a, v = got["images/a.png"], got["volumes/v.png"]
    assert (a.finding, a.sex, a.patient_id, a.reject) == ("covid", "F", "1", None)
    assert (v.finding, v.sex, v.patient_id, v.reject) == ("covid", "M", None, None)  # no id: not one shared "" patient
    assert v.path.endswith("volumes/v.png") and v.load().shape == (160, 128)
    assert got["images/v.png"].reject == "not in metadata.csv"
    src = CohenSource(str(root))
    assert [src.names_a_class(f) for f in ("images", "volumes", "DOE_JOHN")] == [True, True, False]


def test_a_malformed_row_a_path_outside_and_a_non_utf8_file_are_named(tmp_path):
    root = testing.make_cohen(tmp_path / "cohen", [
        dict(patientid="1", finding="COVID-19", view="PA", filename="a.png", seed=1),
        dict(patientid="2", finding="COVID-19", view="PA", filename="../../elsewhere.png", seed=None),
    ])
    testing.write_image(tmp_path / "elsewhere.png", testing.radiograph(2))
    with open(root / "metadata.csv", "a", encoding="utf-8") as f:
        f.write("3,COVID-19\n")  # a row cut short
    got = {c.source_ref: c for c in CohenSource(str(root)).candidates()}
    assert got["images/a.png"].finding == "covid"
    assert got["images/../../elsewhere.png"].reject == "outside the source: metadata.csv names a file outside its folder"
    assert got["images/../../elsewhere.png"].path is None
    assert got["metadata.csv row 3"].reject == "malformed metadata.csv row: fewer fields than the header"
    assert len(got) == 3
    (root / "metadata.csv").write_bytes((root / "metadata.csv").read_bytes() + "4,Straße\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"metadata.csv is not UTF-8 text \(byte \d+\): save it as UTF-8$"):
        list(CohenSource(str(root)).candidates())


def test_a_long_clinical_note_is_read_not_refused(tmp_path):
    # The csv module refuses a cell over 131072 characters: the run failed on one long note.
    root = testing.make_cohen(tmp_path / "cohen", [dict(patientid="1", finding="COVID-19", filename="a.png", seed=1)])
    lines = (root / "metadata.csv").read_text(encoding="utf-8").splitlines()
    rows = [lines[0] + ",clinical_notes", lines[1] + ',"' + "fever, cough. " * 15_000 + '"']
    (root / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    [a] = CohenSource(str(root)).candidates()
    assert a.finding == "covid" and a.source_ref == "images/a.png"


def test_only_x_rays_inside_the_source_folder_are_used(tmp_path):
    root = testing.make_cohen(tmp_path / "cohen", [
        dict(patientid="1", finding="COVID-19", view="PA", filename="a.png", seed=1),
        dict(patientid="2", finding="COVID-19", view="PA", modality="MRI", filename="mri.png", seed=2),
        dict(patientid="3", finding="COVID-19", view="PA", modality="", filename="blank.png", seed=3),
        # a folder beside the source whose name starts with the source's own: still outside it
        dict(patientid="4", finding="COVID-19", view="PA", filename="../../cohen-extra/b.png", seed=None),
    ])
    testing.write_image(tmp_path / "cohen-extra" / "b.png", testing.radiograph(4))
    got = {c.source_ref: c for c in CohenSource(str(root)).candidates()}
    assert got["images/a.png"].finding == "covid"
    assert got["images/mri.png"].reject == "not an X-ray: MRI"
    assert got["images/blank.png"].reject == "not an X-ray: blank"
    outside = got["images/../../cohen-extra/b.png"]
    assert outside.reject == "outside the source: metadata.csv names a file outside its folder" and outside.path is None
    assert len(got) == 4


def test_layout_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="metadata.csv not found"):
        CohenSource(str(tmp_path / "empty"))
    testing.write_csv(tmp_path / "bad" / "metadata.csv", ("patientid", "finding"), [("1", "COVID-19")])
    with pytest.raises(SourceError, match="lacks column"):
        CohenSource(str(tmp_path / "bad"))
    with pytest.raises(SourceError, match="not a directory"):
        CohenSource(str(tmp_path / "nowhere"))


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=REAL_DATA_REASON)
def test_real_cohen_counts():
    cands = list(CohenSource(str(REAL_DATA / "cohen-covid-chestxray")).candidates())
    assert len(cands) == 716  # one per metadata row; every image file is named by a row
    covid = [c for c in cands if c.finding == "covid"]
    assert len(covid) == 427  # frontal COVID-19 X-rays (README)
    assert len({c.patient_id for c in covid}) == 257
    reasons = collections.Counter(c.reject.split(":")[0] for c in cands if c.reject)
    assert reasons["not an X-ray"] == 63 and reasons["lateral view"] == 55
    assert reasons["unknown view"] == 39 and reasons["unlabelled"] == 28
    assert not reasons["unrecognised finding"] and not reasons["missing image file"]
    assert collections.Counter(c.finding for c in cands)["normal"] == 19


def test_a_named_film_that_is_a_broken_link_is_rejected_once_with_that_reason(tmp_path):
    root = testing.make_cohen(tmp_path / "cohen", [
        dict(patientid="1", finding="COVID-19", view="PA", filename="a.png", seed=1),
        dict(patientid="2", finding="COVID-19", view="PA", filename="c.png", seed=None)])
    (root / "images" / "c.png").symlink_to(tmp_path / "nowhere.png")
    got = [(c.source_ref, c.reject) for c in CohenSource(str(root)).every_candidate()]
    assert got == [("images/a.png", None), ("images/c.png", "broken symbolic link: its target does not exist")]


# Round 10: every spelling of COVID-19 and every named pathogen alone (a term dropped from the lists
# turned its films into "unrecognised finding" rejections, and no test noticed).
@pytest.mark.parametrize("text, finding", [
    ("COVID19", "covid"), ("covid", "covid"), ("SARS-CoV-2", "covid"), ("Pneumonia/Viral/SARS-CoV-2", "covid"),
    ("MERS-CoV", "pneumonia"), ("MERS", "pneumonia"), ("H1N1", "pneumonia"), ("E. Coli", "pneumonia"),
    ("Aspergillosis", "pneumonia"), ("Fungal", "pneumonia"), ("Aspiration", "pneumonia"), ("Herpes", "pneumonia"),
    ("RSV", "pneumonia"), ("Candida", "pneumonia"), ("Histoplasmosis", "pneumonia"), ("Cryptococcus", "pneumonia"),
    ("Staphylococcus", "pneumonia"), ("MRSA", "pneumonia"), ("Chlamydophila", "pneumonia"), ("Nocardia", "pneumonia"),
    ("Haemophilus", "pneumonia"), ("Pseudomonas", "pneumonia"), ("Moraxella", "pneumonia"), ("Mycoplasma", "pneumonia"),
    ("Viral", "pneumonia"),
])
def test_every_covid_spelling_and_pathogen_alone(text, finding):
    assert finding_of(text) == (finding, None)


def test_a_finding_of_separators_only_is_unrecognised_not_other_opacity():
    assert finding_of("/") == (None, "unrecognised finding: /")
    assert finding_of(" , ") == (None, "unrecognised finding: ,")


def test_only_pa_itself_is_pa_and_an_unknown_sex_is_unknown():
    assert view_of("pa") == ("PA", None)
    assert view_of("Panoramic") == (None, "not a frontal view: Panoramic")
    assert [sex_of(s) for s in ("f", " M ", "O", "Unknown", "male")] == ["F", "M"] + [features.UNKNOWN] * 3


def test_an_infinite_age_is_unknown_not_a_crash():
    # float("inf") parses, int() of it raises OverflowError: one such cell stopped the whole curation.
    assert [age_of(a) for a in ("inf", "-inf", "1e400", "nan")] == [features.UNKNOWN_AGE] * 4


def test_modality_in_any_case_and_candidates_in_ref_order(tmp_path):
    root = testing.make_cohen(tmp_path / "cohen", [
        dict(patientid="1", finding="COVID-19", filename="c.png", modality="X-RAY", seed=1),
        dict(patientid="2", finding="COVID-19", filename="b.png", modality="x-ray", seed=2),
        dict(patientid="3", finding="COVID-19", filename="a.png", modality="XRAY", seed=3),
        dict(patientid="4", finding="COVID-19", filename="a.png", modality="cxr", seed=3),  # listed twice: row order
    ])
    testing.write_image(root / "images" / "b0.png", testing.radiograph(4))  # unlisted: sorted in, not last
    got = [(c.source_ref, c.patient_id, c.finding, c.reject) for c in CohenSource(str(root)).candidates()]
    assert got == [("images/a.png", "3", "covid", None), ("images/a.png", "4", "covid", None),
                   ("images/b.png", "2", "covid", None), ("images/b0.png", None, None, "not in metadata.csv"),
                   ("images/c.png", "1", "covid", None)]


def test_a_layout_without_images_or_without_view_and_modality_columns_is_refused(tmp_path):
    root = testing.make_cohen(tmp_path / "cohen", [dict(patientid="1", finding="COVID-19", filename="a.png", seed=None)])
    (root / "images").rmdir()
    with pytest.raises(SourceError, match="images/ not found"):
        CohenSource(str(root))
    testing.write_csv(tmp_path / "cols" / "metadata.csv", ("patientid", "finding", "filename"), [("1", "COVID-19", "a.png")])
    (tmp_path / "cols" / "images").mkdir()
    with pytest.raises(SourceError, match=r"metadata.csv lacks column\(s\) view, modality "):
        CohenSource(str(tmp_path / "cols"))


@pytest.mark.parametrize("separator", ["\x0c", "\x0b", "\x1c", "\x85", "\u2028", "\u2029"])
def test_a_note_holding_a_character_python_counts_as_a_line_break_stays_in_its_row(tmp_path, separator):
    # csv writers (pandas' too) quote only cells with a comma, quote or \r / \n: a form feed or a Unicode
    # line separator pasted from a paper stays bare. Read as a line break, it cut the row in two malformed
    # rows and left its film "not in metadata.csv".
    root = testing.make_cohen(tmp_path / "cohen", [dict(patientid="1", finding="COVID-19", filename="a.png", seed=1)])
    fields = list(testing.COHEN_FIELDS)
    fields.insert(fields.index("finding") + 1, "clinical_notes")  # before the view and file columns
    (root / "metadata.csv").write_text(",".join(fields) + "\n" + f"1,0,M,50,COVID-19,fever{separator}cough,PA,X-ray,images,a.png\n",
                                       encoding="utf-8", newline="")
    [a] = CohenSource(str(root)).candidates()
    assert (a.source_ref, a.finding, a.view, a.reject) == ("images/a.png", "covid", "PA", None)
