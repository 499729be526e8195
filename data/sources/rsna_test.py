import pytest

from covid_cxr.data import testing
from covid_cxr.data.sources import RsnaSource, SourceError
from covid_cxr.data.testing import REAL_DATA, REAL_DATA_REASON


def test_labels_one_candidate_per_patient(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [
        dict(id="aaa-1", target="1", cls="Lung Opacity", seed=1, boxes=3),
        dict(id="bbb-2", target="0", cls="Normal", seed=2),
        dict(id="ccc-3", target="0", cls="No Lung Opacity / Not Normal", seed=3),
        dict(id="ddd-4", target="1", cls="Normal", seed=4),
        dict(id="eee-5", target="0", cls="Normal", seed=None),
    ])
    testing.write_dicom(root / "stage_2_train_images" / "fff-6.dcm", testing.radiograph(6))
    got = {c.patient_id: c for c in RsnaSource(str(root)).candidates()}
    assert sorted(got) == ["aaa-1", "bbb-2", "ccc-3", "ddd-4", "eee-5", "fff-6"]
    assert got["aaa-1"].finding == "pneumonia" and got["aaa-1"].source_ref == "stage_2_train_images/aaa-1.dcm"
    assert got["bbb-2"].finding == "normal"
    assert got["ccc-3"].reject.startswith("abnormal, no lung opacity")
    assert got["ddd-4"].reject.startswith("inconsistent labels")
    assert got["eee-5"].reject == "missing image file"
    assert got["fff-6"].reject.startswith("no label")
    assert all(c.ref_has_patient_id for c in got.values())
    assert got["aaa-1"].load().shape == (128, 128)


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


def test_a_copy_or_another_format_of_a_patients_film_is_rejected_not_lost(tmp_path):
    root = testing.make_rsna(tmp_path / "rsna", [dict(id="aaa-1", target="1", cls="Lung Opacity", seed=1)])
    images = root / "stage_2_train_images"
    testing.write_image(images / "aaa-1.png", testing.radiograph(2))  # sorted after aaa-1.dcm: used to replace it
    testing.write_dicom(images / "sub" / "aaa-1.dcm", testing.radiograph(3))
    testing.write_image(tmp_path / "rsna" / "stray.png", testing.radiograph(4))  # outside the layout
    got = {c.source_ref: c for c in RsnaSource(str(root)).every_candidate()}
    assert got["stage_2_train_images/aaa-1.dcm"].finding == "pneumonia"
    for ref in ("stage_2_train_images/aaa-1.png", "stage_2_train_images/sub/aaa-1.dcm"):
        assert got[ref].reject.startswith("not an RSNA image file") and got[ref].ref_has_patient_id, ref
        assert got[ref].patient_id == "aaa-1"  # so curation writes the pseudonym in place of the raw id
    assert got["stray.png"].reject.startswith("outside the layout: expected the RSNA")
    assert len(got) == 4
