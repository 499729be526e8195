import os

import pytest

from covid_cxr.data import images, testing
from covid_cxr.data.sources import FolderSource, RadiographySource, base
from covid_cxr.data.sources.base import Candidate


def test_a_candidate_has_exactly_one_of_finding_and_reject_and_a_known_finding():
    assert Candidate("folder", "a.png", None, finding="covid").reject is None
    with pytest.raises(ValueError, match="exactly one of finding / reject"):
        Candidate("folder", "a.png", None)
    with pytest.raises(ValueError, match="exactly one of finding / reject"):
        Candidate("folder", "a.png", None, finding="covid", reject="unknown class folder: x")
    with pytest.raises(ValueError, match="unknown finding 'flu'"):
        Candidate("folder", "a.png", None, finding="flu")
    with pytest.raises(images.ImageError, match="^missing image file$"):  # a film the metadata names, not there
        Candidate("cohen", "images/a.png", None, finding="covid").load()


def test_files_are_listed_in_path_order_whatever_order_the_folder_gives(tmp_path, monkeypatch):
    # Curation keeps the first of two near-duplicates: the order must not be the file system's.
    names = [f"{n:02d}.png" for n in range(5)]
    for name in names:
        testing.write_image(tmp_path / "d" / name, testing.radiograph(1, (16, 16)))
    testing.write_image(tmp_path / "d" / "sub" / "a.png", testing.radiograph(1, (16, 16)))
    listing = os.scandir

    class Backwards:  # a file system that lists a folder backwards (os.walk's scandir: an iterator it closes)
        def __init__(self, path="."):
            with listing(path) as entries:
                self.entries = iter(sorted(entries, key=lambda e: e.name, reverse=True))

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(os, "scandir", Backwards)

    listed = [os.path.relpath(p, tmp_path / "d") for p in base.list_files(str(tmp_path / "d"))]
    assert listed == names + [os.path.join("sub", "a.png")]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_entries_that_are_not_regular_files_are_listed_apart_and_never_opened(tmp_path):
    # Opening a named pipe waits for a writer forever: curation and predict hung on one.
    testing.write_image(tmp_path / "d" / "COVID" / "a.png", testing.radiograph(1, (16, 16)))
    os.symlink(tmp_path / "gone.png", tmp_path / "d" / "COVID" / "b.png")  # a broken link
    with testing.fifo(tmp_path / "d" / "COVID" / "c.png") as pipe:
        irregular: list = []
        listed = base.list_files(str(tmp_path / "d"), irregular=irregular)
        assert listed == [str(tmp_path / "d" / "COVID" / "a.png")]
        assert irregular == [(str(tmp_path / "d" / "COVID" / "b.png"), "broken symbolic link: its target does not exist"),
                             (pipe, "not a regular file: a named pipe (FIFO)")]


def test_linked_folders_are_followed_once_and_a_loop_neither_hangs_nor_repeats(tmp_path):
    # os.walk left symlinked sub-folders out: their films were neither accepted nor rejected.
    testing.write_image(tmp_path / "elsewhere" / "b.png", testing.radiograph(1, (16, 16)))
    testing.write_image(tmp_path / "d" / "COVID" / "a.png", testing.radiograph(2, (16, 16)))
    os.symlink(tmp_path / "elsewhere", tmp_path / "d" / "COVID" / "linked")
    os.symlink(tmp_path / "d", tmp_path / "d" / "COVID" / "loop")  # back up the tree
    os.symlink(tmp_path / "d" / "COVID" / "linked", tmp_path / "d" / "zz-again")  # a second way in
    listed = [os.path.relpath(p, tmp_path / "d") for p in base.list_files(str(tmp_path / "d"))]
    assert listed == [os.path.join("COVID", "a.png"), os.path.join("COVID", "linked", "b.png")]
    # Listed from one class folder (Radiography, Kermany, folder sources), the link up the tree must
    # not bring in the other classes' films: they would be labelled with this folder's class.
    testing.write_image(tmp_path / "d" / "Normal" / "n.png", testing.radiograph(3, (16, 16)))
    listed = [os.path.relpath(p, tmp_path / "d") for p in base.list_files(str(tmp_path / "d" / "COVID"))]
    assert listed == [os.path.join("COVID", "a.png"), os.path.join("COVID", "linked", "b.png")]


def test_a_metadata_csv_is_read_with_long_cells_and_its_errors_name_the_file_and_row(tmp_path, monkeypatch):
    note = "x" * 200_000  # a long clinical note: over the csv module's default field limit (131072)
    path = testing.write_csv(tmp_path / "m.csv", ("id", "notes"), [("1", "short"), ("2", note)])
    limit = base.csv.field_size_limit()
    assert base.read_csv(path) == (["id", "notes"], [{"id": "1", "notes": "short"}, {"id": "2", "notes": note}])
    assert base.csv.field_size_limit() == limit  # raised for that file only
    # Any other csv.Error (here the old limit, kept) is the user's to fix: file, row and line, one line.
    monkeypatch.setattr(base.csv, "field_size_limit", lambda *new: limit)
    with pytest.raises(base.SourceError, match=rf"^{path}: row 2 \(line 3\) cannot be read as CSV: field larger "
                                               r"than field limit \(131072\)$"):
        base.read_csv(path)
    header = testing.write_csv(tmp_path / "h.csv", ("id", note), [("1", "2")])
    with pytest.raises(base.SourceError, match=rf"^{header}: its header \(line 1\) cannot be read as CSV: field larger"):
        base.read_csv(header)
    (tmp_path / "latin.csv").write_bytes("id,notes\n1,Straße\n".encode("latin-1"))
    with pytest.raises(base.SourceError, match=rf"^{tmp_path / 'latin.csv'} is not UTF-8 text \(byte 15\): save it as UTF-8$"):
        base.read_csv(str(tmp_path / "latin.csv"))


def test_files_are_ordered_folder_by_folder_not_as_path_strings(tmp_path):
    # "a-b" sorts before "a/" as a string ("-" < "/") but after "a" as a folder name: listed folder by
    # folder, as subdirs() and the adapters' class loops order them.
    for folder in ("a", "a-b"):
        testing.write_image(tmp_path / "d" / folder / "x.png", testing.radiograph(1, (16, 16)))
    listed = [os.path.relpath(p, tmp_path / "d") for p in base.list_files(str(tmp_path / "d"))]
    assert listed == [os.path.join("a", "x.png"), os.path.join("a-b", "x.png")]


def test_a_metadata_csv_saved_with_a_byte_order_mark_keeps_its_first_column_name(tmp_path):
    # Excel's "CSV UTF-8" starts with a BOM: read as text it would rename the first column "\ufeffid".
    (tmp_path / "bom.csv").write_bytes("id,finding\n1,COVID-19\n".encode("utf-8-sig"))
    assert base.read_csv(str(tmp_path / "bom.csv")) == (["id", "finding"], [{"id": "1", "finding": "COVID-19"}])


def test_a_file_without_extension_in_a_class_folder_is_rejected_saying_so(tmp_path):
    testing.write_image(tmp_path / "rad" / "COVID" / "a.png", testing.radiograph(1, (16, 16)))
    (tmp_path / "rad" / "COVID" / "README").write_text("about")
    got = {c.source_ref: c.reject for c in RadiographySource(str(tmp_path / "rad")).candidates()}
    assert got == {"COVID/a.png": None, "COVID/README": "not an image file: no extension"}


def test_files_not_read_are_counted_only_for_reasons_that_occurred(tmp_path):
    testing.write_image(tmp_path / "f" / "covid" / "a.png", testing.radiograph(1))
    source = FolderSource(str(tmp_path / "f"))
    assert [c.source_ref for c in source.every_candidate()] == ["covid/a.png"]
    assert source.not_read == {}  # summary.json's not_read_per_source lists no reason with 0
    (tmp_path / "f" / "covid" / "._a.png").write_bytes(b"AppleDouble")
    list(source.every_candidate())
    assert source.not_read == {base.HIDDEN: 1}


class _Tree(base.Source):
    """A minimal adapter: no inputs of its own, so every file under root is outside its layout."""
    name, layout = "tree", "nothing"

    def candidates(self):
        return iter(())


class _PrivateTree(_Tree):
    private_names = True


def test_a_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    testing.write_image(tmp_path / "f" / "covid" / "a.png", testing.radiograph(1, (16, 16)))
    monkeypatch.chdir(tmp_path)
    source = FolderSource("f")
    assert source.root == str(tmp_path / "f")
    assert [c.path for c in source.every_candidate()] == [str(tmp_path / "f" / "covid" / "a.png")]


def test_a_stray_file_is_rejected_and_only_a_regular_one_keeps_its_path(tmp_path):
    testing.write_image(tmp_path / "t" / "a.png", testing.radiograph(1, (16, 16)))
    os.symlink(tmp_path / "gone.png", tmp_path / "t" / "stray.png")  # not a regular file: never to be opened
    got = [(c.source_ref, c.path, c.reject) for c in _Tree(str(tmp_path / "t")).every_candidate()]
    assert got == [("a.png", str(tmp_path / "t" / "a.png"), "outside the layout: expected nothing"),
                   ("stray.png", None, "broken symbolic link: its target does not exist")]


def test_an_empty_metadata_csv_has_no_columns_and_no_rows(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    assert base.read_csv(str(tmp_path / "empty.csv")) == ([], [])


def test_subdirs_are_sorted_whatever_order_the_folder_gives(tmp_path, monkeypatch):
    for name in ("b", "a", "c", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "file").write_text("x")
    listing = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: sorted(listing(path), reverse=True))
    assert base.subdirs(str(tmp_path)) == ["a", "b", "c"]


@pytest.mark.parametrize("source_class, name, reject, expected", [
    (_Tree, "a.txt", None, "not an image file: .txt"),
    (_PrivateTree, "1.2.840.113619.2.55", None, "not an image file"),  # the "extension" may be the tail of a UID
    (_Tree, "a.txt", "unknown class folder: x", "unknown class folder: x"),  # the adapter's reason is kept
    (_Tree, "a.png", "unknown class folder: x", "unknown class folder: x"),
])
def test_file_candidate_rejections(tmp_path, source_class, name, reject, expected):
    source = source_class(str(tmp_path))
    candidate = base.file_candidate(source, str(tmp_path / name), "covid", reject=reject)
    assert (candidate.source_ref, candidate.finding, candidate.reject) == (name, None, expected)


def test_by_default_an_adapter_names_no_input_apart_and_owns_its_top_folders(tmp_path):
    # a public layout's folders are written as they are above a DICOM file; a private tree overrides this
    source = _Tree(str(tmp_path))
    assert source.names_a_class("COVID") is True and source.not_an_input(str(tmp_path / "a.png")) is None
