import pytest

from covid_cxr.data import testing
from covid_cxr.data.sources import RadiographySource, SourceError
from covid_cxr.data.sources.base import HIDDEN
from covid_cxr.data.sources.radiography import MASKS
from covid_cxr.data.testing import REAL_DATA, REAL_DATA_REASON


def test_class_folders(tmp_path):
    root = tmp_path / "rad"
    testing.write_image(root / "COVID" / "COVID-1.png", testing.radiograph(1))
    testing.write_image(root / "Normal" / "Normal-1.png", testing.radiograph(2))
    testing.write_image(root / "Viral Pneumonia" / "Viral Pneumonia-1.png", testing.radiograph(3))
    testing.write_image(root / "Lung_Opacity" / "images" / "Lung_Opacity-1.png", testing.radiograph(4))
    testing.write_image(root / "Lung_Opacity" / "masks" / "Lung_Opacity-1.png", testing.radiograph(5))
    testing.write_image(root / "Misc" / "m.png", testing.radiograph(6))
    testing.write_image(root / "Normal" / "masks" / "Normal-1.png", testing.radiograph(10))  # no images/ beside it
    testing.write_image(root / "top.png", testing.radiograph(7))  # outside every class folder
    testing.write_image(root / "Lung_Opacity" / "beside.png", testing.radiograph(8))  # beside images/: not read
    (root / "COVID.metadata.xlsx").write_bytes(b"xlsx")
    (root / "Lung_Opacity" / "masks" / "README.txt").write_text("masks")  # not an image: neither listed nor counted
    (root / "COVID" / "._COVID-1.png").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS resource fork
    testing.write_image(root / "__MACOSX" / "COVID" / "COVID-1.png", testing.radiograph(9))
    source = RadiographySource(str(root))
    got = {c.source_ref: c for c in source.every_candidate()}
    assert {k: (c.finding, c.reject) for k, c in got.items()} == {
        "COVID/COVID-1.png": ("covid", None),
        "Normal/Normal-1.png": ("normal", None),
        "Viral Pneumonia/Viral Pneumonia-1.png": ("pneumonia", None),
        "Lung_Opacity/images/Lung_Opacity-1.png": ("other_opacity", None),
        "Misc/m.png": (None, "unknown class folder: Misc"),
        # recorded, not silently left out; the lung masks are not films: counted below, not listed
        "Lung_Opacity/beside.png": (None, f"outside the layout: expected {RadiographySource.layout}"),
        "top.png": (None, f"outside the layout: expected {RadiographySource.layout}"),
    }
    assert len({c.patient_id for c in got.values() if c.patient_id}) == 5  # each file its own patient
    # the ._ file and the __MACOSX folder; both masks, whether or not images/ is beside masks/
    assert source.not_read == {HIDDEN: 2, MASKS: 2}


def test_class_folder_names_of_other_releases(tmp_path):
    # Releases spell the folders differently ("COVID-19", "Lung Opacity"); matched in any case.
    root = tmp_path / "rad"
    for n, folder in enumerate(("COVID-19", "NORMAL", "viral pneumonia", "Lung Opacity")):
        testing.write_image(root / folder / f"{n}.png", testing.radiograph(n))
    got = {c.source_ref: c.finding for c in RadiographySource(str(root)).every_candidate()}
    assert got == {"COVID-19/0.png": "covid", "NORMAL/1.png": "normal", "viral pneumonia/2.png": "pneumonia",
                   "Lung Opacity/3.png": "other_opacity"}


def test_layout_error(tmp_path):
    (tmp_path / "x" / "stuff").mkdir(parents=True)
    with pytest.raises(SourceError, match="no class folder"):
        RadiographySource(str(tmp_path / "x"))


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=REAL_DATA_REASON)
def test_real_radiography_counts():
    cands = list(RadiographySource(str(REAL_DATA / "covid19-radiography")).candidates())
    assert sum(c.finding == "covid" for c in cands) == 600
    assert sum(c.finding == "normal" for c in cands) == 600
    assert len(cands) == 1200


def test_only_a_folder_named_masks_holds_masks():
    # Round 10: a film whose own name holds "masks", or a folder merely containing the word, is a film.
    from covid_cxr.data.sources.radiography import not_a_film
    assert not_a_film("COVID/masks/COVID-1.png") == not_a_film("Normal/images/masks/x.png") == MASKS
    assert [not_a_film(r) for r in ("COVID/masks", "COVID/images/masks-1.png", "Normal/unmasks/x.png")] == [None] * 3
