import pytest

from covid_cxr.data import testing
from covid_cxr.data.sources import KermanySource, SourceError
from covid_cxr.data.sources.kermany import patient_id_of
from covid_cxr.data.testing import REAL_DATA, REAL_DATA_REASON


@pytest.mark.parametrize("name, pid", [
    ("person123_bacteria_456.jpeg", "person123"),
    ("person1_virus_6_2.jpeg", "person1"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("IM-0117-0001-0002.jpeg", "IM-0117"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ("NORMAL2-IM-1094-0001-0002.jpeg", "NORMAL2-IM-1094"),
    ("weird_name.jpeg", "weird_name"),
    ("PERSON12_virus_3.jpeg", "PERSON12"),  # matched in any case, like the other patterns
])
def test_patient_ids_from_file_names(name, pid):
    assert patient_id_of(name) == pid


def test_layout_and_labels(tmp_path):
    root = tmp_path / "kermany"
    testing.write_image(root / "train" / "NORMAL" / "IM-0001-0001.jpeg", testing.radiograph(1))
    testing.write_image(root / "test" / "NORMAL" / "IM-0001-0002.jpeg", testing.radiograph(2))
    testing.write_image(root / "train" / "PNEUMONIA" / "person7_virus_9.jpeg", testing.radiograph(3))
    testing.write_image(root / "val" / "PNEUMONIA" / "odd.jpeg", testing.radiograph(4))
    testing.write_image(root / "train" / "OTHER" / "x.jpeg", testing.radiograph(5))
    (root / "train" / "NORMAL" / "notes.txt").write_text("hi")
    testing.write_image(root / "train" / "stray.jpeg", testing.radiograph(6))  # in a split, no class folder
    testing.write_image(root / "loose.jpeg", testing.radiograph(7))
    got = {c.source_ref: c for c in KermanySource(str(root)).every_candidate()}
    assert got["train/NORMAL/IM-0001-0001.jpeg"].finding == "normal"
    assert got["train/NORMAL/IM-0001-0001.jpeg"].patient_id == got["test/NORMAL/IM-0001-0002.jpeg"].patient_id == "IM-0001"
    assert (got["train/PNEUMONIA/person7_virus_9.jpeg"].finding, got["train/PNEUMONIA/person7_virus_9.jpeg"].patient_id) == ("pneumonia", "person7")
    assert got["val/PNEUMONIA/odd.jpeg"].patient_id == "odd"  # unparseable: own id, not dropped
    assert got["val/PNEUMONIA/odd.jpeg"].finding == "pneumonia"  # val/ is a split like train/ and test/
    assert got["train/OTHER/x.jpeg"].reject == "unknown folder: train/OTHER"
    assert got["train/NORMAL/notes.txt"].reject == "not an image file: .txt"
    for ref in ("train/stray.jpeg", "loose.jpeg"):  # recorded, not silently left out
        assert got[ref].reject == f"outside the layout: expected {KermanySource.layout}"
    assert len(got) == 8


def test_class_folders_outside_train_test_val_are_not_used(tmp_path):
    root = tmp_path / "kermany"
    testing.write_image(root / "train" / "NORMAL" / "IM-0001-0001.jpeg", testing.radiograph(1))
    testing.write_image(root / "backup" / "NORMAL" / "IM-0002-0001.jpeg", testing.radiograph(2))  # a copy, say
    got = {c.source_ref: (c.finding, c.reject) for c in KermanySource(str(root)).every_candidate()}
    assert got == {"train/NORMAL/IM-0001-0001.jpeg": ("normal", None),
                   "backup/NORMAL/IM-0002-0001.jpeg": (None, "unknown folder: backup/NORMAL")}


def test_kaggle_zip_extra_level_and_layout_error(tmp_path):
    testing.write_image(tmp_path / "z" / "chest_xray" / "train" / "NORMAL" / "IM-0001-0001.jpeg", testing.radiograph(1))
    assert [c.source_ref for c in KermanySource(str(tmp_path / "z")).candidates()] == ["chest_xray/train/NORMAL/IM-0001-0001.jpeg"]
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(SourceError, match="NORMAL"):
        KermanySource(str(tmp_path / "empty"))

    # A tree with its own layout AND a nested chest_xray/ copy (the Kaggle zip's duplicate level):
    # the root's own films are used; the nested copy is recorded as rejected, not preferred.
    testing.write_image(tmp_path / "z" / "train" / "PNEUMONIA" / "person1_virus_1.jpeg", testing.radiograph(2))
    got = {c.source_ref: (c.finding, c.reject) for c in KermanySource(str(tmp_path / "z")).every_candidate()}
    assert got == {"train/PNEUMONIA/person1_virus_1.jpeg": ("pneumonia", None),
                   "chest_xray/train/NORMAL/IM-0001-0001.jpeg": (None, "unknown folder: chest_xray/train")}


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=REAL_DATA_REASON)
def test_real_kermany_ids():
    cands = list(KermanySource(str(REAL_DATA / "chest-xray-pneumonia")).candidates())
    assert len(cands) == 800 and not [c for c in cands if c.reject]
    assert sum(c.finding == "pneumonia" for c in cands) == 400
    # every real file name parses to a patient id (none falls back to its own stem)
    stems = {c.source_ref.rsplit("/", 1)[1].rsplit(".", 1)[0] for c in cands}
    assert not stems & {c.patient_id for c in cands}
    assert len({c.patient_id for c in cands}) < 800  # several films per patient


def test_a_normal_film_without_a_number_after_normal_keeps_its_patient():
    # Round 10: NORMAL\d* (not \d+): "NORMAL-IM-0001-0002" is patient NORMAL-IM-0001, with its other films.
    assert patient_id_of("NORMAL-IM-0001-0002.jpeg") == patient_id_of("NORMAL-IM-0001-0001.jpeg") == "NORMAL-IM-0001"
