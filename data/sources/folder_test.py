import re

import pytest

from covid_cxr.data import testing
from covid_cxr.data.sources import FolderSource, SourceError, base, parse_class_map


def test_parse_class_map():
    assert parse_class_map("COVID=covid, healthy = normal") == {"COVID": "covid", "healthy": "normal"}
    assert parse_class_map("Viral Pneumonia=PNEUMONIA") == {"Viral Pneumonia": "pneumonia"}
    for bad, msg in (("COVID", "FOLDER=FINDING"), ("COVID=flu", "must be one of"), ("", "empty"),
                     ("A=covid,A=normal", "twice"), ("=covid", "FOLDER=FINDING"), ("COVID=", "FOLDER=FINDING")):
        with pytest.raises(ValueError, match=msg):
            parse_class_map(bad)


def test_mapping_and_unmapped_folders(tmp_path):
    root = tmp_path / "f"
    testing.write_image(root / "COVID" / "a.png", testing.radiograph(1))
    testing.write_image(root / "COVID" / "sub" / "b.jpg", testing.radiograph(2))
    testing.write_image(root / "healthy" / "c.png", testing.radiograph(3))
    testing.write_image(root / "other" / "d.png", testing.radiograph(4))
    testing.write_image(root / "loose.png", testing.radiograph(5))
    testing.write_dicom(root / "healthy" / "e.dcm", testing.radiograph(6))
    (root / "README.txt").write_text("not an input")
    src = FolderSource(str(root), {"COVID": "covid", "healthy": "normal"})
    got = {c.source_ref: (c.finding, c.reject) for c in src.candidates()}
    assert got == {
        "loose.png": (None, "not in a class folder"),
        "COVID/a.png": ("covid", None),
        "COVID/sub/b.jpg": ("covid", None),
        "healthy/c.png": ("normal", None),
        "healthy/e.dcm": ("normal", None),
        "other/d.png": (None, "unmapped class folder: neither named like a finding nor in --class-map"),
    }


def test_default_map_uses_finding_named_folders(tmp_path):
    testing.write_image(tmp_path / "f" / "Covid" / "a.png", testing.radiograph(1))
    testing.write_image(tmp_path / "f" / "misc" / "b.png", testing.radiograph(2))
    for class_map in (None, {}):  # an empty map is no map
        got = {c.source_ref: (c.finding, c.reject) for c in FolderSource(str(tmp_path / "f"), class_map).candidates()}
        assert got == {"Covid/a.png": ("covid", None),
                       "misc/b.png": (None, "unmapped class folder: neither named like a finding nor in --class-map")}


def test_a_class_map_names_folders_exactly_and_hidden_files_at_the_top_are_not_inputs(tmp_path):
    testing.write_image(tmp_path / "f" / "covid" / "a.png", testing.radiograph(1))
    testing.write_image(tmp_path / "f" / "Covid" / "b.png", testing.radiograph(2))
    testing.write_image(tmp_path / "f" / "._a.png", testing.radiograph(3))  # e.g. macOS's AppleDouble file
    (tmp_path / "f" / "old.png").mkdir()  # a top folder named like an image is a folder, not a loose film
    got = {c.source_ref: (c.finding, c.reject) for c in FolderSource(str(tmp_path / "f"), {"covid": "covid"}).candidates()}
    assert got == {"covid/a.png": ("covid", None),
                   "Covid/b.png": (None, "unmapped class folder: neither named like a finding nor in --class-map")}


def test_layout_errors(tmp_path):
    testing.write_image(tmp_path / "f" / "A" / "a.png", testing.radiograph(1))
    with pytest.raises(SourceError, match="do not exist"):
        FolderSource(str(tmp_path / "f"), {"B": "covid"})
    with pytest.raises(SourceError, match="no folder is named like a finding"):
        FolderSource(str(tmp_path / "f"))
    with pytest.raises(SourceError, match=r"^folder source: class map finding\(s\) flu not in covid, normal, "):
        FolderSource(str(tmp_path / "f"), {"A": "flu"})  # a map not parsed by parse_class_map
    testing.write_image(tmp_path / "f" / "Covid" / "b.png", testing.radiograph(2))
    # A map's name that differs from a folder only in case is refused: its films would all be "unmapped".
    with pytest.raises(SourceError, match=r"class map names folder\(s\) covid that do not exist \(exact names, case"):
        FolderSource(str(tmp_path / "f"), {"covid": "covid", "A": "normal"})
    (tmp_path / "flat").mkdir()
    with pytest.raises(SourceError, match="no class subfolders"):
        FolderSource(str(tmp_path / "flat"), {"A": "covid"})


def test_layout_errors_count_the_top_folders_without_naming_them(tmp_path):
    # A hospital export's top folders may be patients: "(folders: Doe_Johnathan, Smith_Jane)" showed them.
    for name in ("Doe_Johnathan", "Smith_Jane"):
        testing.write_image(tmp_path / "f" / name / "a.png", testing.radiograph(1))
    for class_map, problem in ((None, r"no folder is named like a finding \(covid, normal, pneumonia, other_opacity, "
                                      r"any case\) and no --class-map"),
                               ({"covid": "covid"}, r"class map names folder\(s\) covid that do not exist \(exact "
                                                    r"names, case included; ")):
        with pytest.raises(SourceError) as raised:
            FolderSource(str(tmp_path / "f"), class_map)
        message = str(raised.value)
        assert re.search(problem, message), message
        assert "2 top folder(s) there, not shown: they may be patients' names" in message
        assert len(message) - len(str(tmp_path / "f")) < 230  # one line under messages.MAX_MESSAGE
        assert "Doe" not in message and "Smith" not in message


def test_a_folder_that_cannot_be_read_stops_curation_naming_it(tmp_path, monkeypatch):
    # os.walk would skip it, and its films would be neither accepted nor rejected. (Tests may run as
    # root, whom chmod 000 does not stop: the listing is refused here instead.)
    root = tmp_path / "f"
    testing.write_image(root / "COVID" / "a.png", testing.radiograph(1))
    (root / "COVID" / "locked").mkdir()
    testing.refuse_listing(monkeypatch, "locked")
    with pytest.raises(SourceError, match=r"^cannot read folder '.*COVID/locked': Permission denied$"):
        list(FolderSource(str(root), {"COVID": "covid"}).candidates())
    assert base.list_files(str(root / "missing")) == []  # a folder that is not there: the caller says so


def test_a_folder_tree_may_be_a_hospital_export():
    # Round 10: private_names makes curation write every file of the tree as its class folder and a pseudonym.
    assert FolderSource.private_names is True
