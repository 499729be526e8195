"""The source-adapter interface: every public collection becomes a stream of ``Candidate`` images.

An adapter knows its collection's layout and label conventions and nothing else: it yields one
``Candidate`` per input (image file, or metadata row), already labelled with a finding from
``features.FINDINGS`` or carrying the reason it is rejected. Pixel work, task mapping, duplicates,
pseudonyms and writing happen in ``covid_cxr.data.curate``, identically for every source.
"""
from __future__ import annotations

import abc
import collections
import csv
import dataclasses
import io
import os
from typing import ClassVar, Iterator, Optional

import numpy as np

from covid_cxr.data import features, images



# Why files under a source's root are not read: counted per source and reason (``Source.not_read``,
# summary.json's ``not_read_per_source``), never listed one by one.
HIDDEN = "hidden files or folders skipped (names starting with '.', __MACOSX)"


class SourceError(ValueError):
    """A source directory that is not in the adapter's layout (one-line, user-facing message)."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One input of a source. ``patient_id`` is the RAW source id: it never leaves curation."""

    source: str
    source_ref: str  # path relative to the source root, "/"-separated
    path: Optional[str]  # absolute path of the image file; None when the metadata names a missing file
    finding: Optional[str] = None  # one of features.FINDINGS when usable
    reject: Optional[str] = None  # rejection reason ("kind: detail") when the adapter rejects it
    patient_id: Optional[str] = None  # raw id; None: DICOM PatientID if any, else the file itself
    view: str = features.UNKNOWN
    sex: str = features.UNKNOWN
    age: int = features.UNKNOWN_AGE
    ref_id: Optional[str] = None  # the raw id the file is named by (RSNA's per-film patientId): pseudonymized in the ref

    def __post_init__(self):
        if (self.finding is None) == (self.reject is None):
            raise ValueError("a Candidate has exactly one of finding / reject")
        if self.finding is not None and self.finding not in features.FINDINGS:
            raise ValueError(f"unknown finding {self.finding!r}")

    def load(self) -> np.ndarray:
        """The raw 8-bit grayscale pixels (DICOM display pipeline applied; no crop/resize)."""
        if self.path is None:
            raise images.ImageError("missing image file")
        return images.read_gray(self.path)[0]


class Source(abc.ABC):
    """A public collection in its original layout, rooted at ``root``."""

    name: ClassVar[str]
    layout: ClassVar[str]  # one line, used in layout errors
    # Files under root that are not inputs, counted by every_candidate(): {reason: count}, non-zero counts only.
    not_read: dict[str, int]
    # The tree may be a hospital export, whose files and folders are named by patient: curation
    # writes every ref as class folder + pseudonym (curate._public_ref). Public collections' own
    # file names are kept: they are how their users find a film.
    private_names: ClassVar[bool] = False
    # How films are tied to patients, when the layout leaves it open (summary.json; RSNA, one line).
    patient_grouping: Optional[str] = None

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.not_read = {}
        if not os.path.isdir(self.root):
            raise SourceError(f"{self.name} source: {root} is not a directory")
        self.validate()

    def validate(self) -> None:
        """Raise SourceError unless ``root`` has this adapter's layout."""

    @abc.abstractmethod
    def candidates(self) -> Iterator[Candidate]:
        """Every input of the collection, in a deterministic order."""

    def names_a_class(self, folder: str) -> bool:
        """True when a top folder's name is the layout's own (a class or layout folder), so it may be
        written as it is in a private tree (``private_names``) or above a DICOM file: any other may be
        named by patient."""
        return True

    def not_an_input(self, path: str) -> Optional[str]:
        """For an image file the layout holds that is not a film (e.g. a lung mask), why it is not read:
        the reason its count is shown under ("N <reason>"); None for every other file."""
        return None

    def every_candidate(self) -> Iterator[Candidate]:
        """:meth:`candidates`, then every other image file under ``root`` as rejected: a file the
        layout does not expect (a stray image, a second copy) is recorded, never silently left out.
        Hidden files and folders (names starting with ".", ``__MACOSX``) and the image files the layout
        holds that are not films (:meth:`not_an_input`) are counted in ``not_read`` instead, per reason:
        one record per macOS ``._`` file or lung mask would bury the real rejections. Entries that are
        not regular files (named pipes, devices, broken links) are rejected, unopened."""
        seen, named = set(), set()
        for candidate in self.candidates():
            if candidate.path:
                seen.add(os.path.abspath(candidate.path))
            named.add(candidate.source_ref)  # also a named file that was missing, or a named pipe
            yield candidate
        hidden: list[str] = []
        irregular: list[tuple[str, str]] = []
        files = list_files(self.root, hidden=hidden, irregular=irregular)
        not_read = collections.Counter({HIDDEN: len(hidden)})
        for path in files:
            if os.path.abspath(path) in seen or not images.is_image_file(path):
                continue
            reason = self.not_an_input(path)
            if reason:
                not_read[reason] += 1
            else:
                yield Candidate(self.name, self.ref(path), path, reject=f"outside the layout: expected {self.layout}")
        for path, reason in irregular:  # no path: nothing downstream may open it
            if self.ref(path) not in named:  # the adapter rejected it already, with this reason
                yield Candidate(self.name, self.ref(path), None, reject=reason)
        self.not_read = {reason: n for reason, n in not_read.items() if n}

    # helpers for adapters
    def ref(self, path: str) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def layout_error(self, problem: str) -> SourceError:
        return SourceError(f"{self.name} source at {self.root}: {problem} (expected {self.layout})")


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _unreadable_folder(error: OSError) -> None:
    """os.walk skips a folder it cannot list: every film in it would vanish without a word."""
    if not isinstance(error, FileNotFoundError):  # a missing folder is the caller's to report
        raise SourceError(f"cannot read folder {error.filename!r}: {error.strerror}")


def list_files(directory: str, hidden: Optional[list] = None, irregular: Optional[list] = None) -> list[str]:
    """Regular files under ``directory``, recursively, sorted, hidden files and folders skipped
    (appended to ``hidden`` when given; a hidden folder counts once, its contents are not walked).
    Other entries (named pipes, sockets, devices, broken symbolic links) are never opened: they are
    appended to ``irregular`` as sorted (path, reason) pairs when given. Symbolic links to folders are
    followed (a collection assembled from links), each folder read once: a second link to one folder
    lists its files once, under the first path in sorted order; a link back up to ``directory`` or
    above it is not followed."""
    out: list[str] = []
    odd: list[tuple[str, str]] = []
    walked: set[str] = set()
    top = os.path.realpath(directory)
    for dirpath, dirnames, filenames in os.walk(directory, onerror=_unreadable_folder, followlinks=True):
        real = os.path.realpath(dirpath)
        # A loop, a folder already read under another name, or a link up to the listed folder or
        # above it: listed from a class folder, the folder above holds the other classes' films.
        if real in walked or (dirpath != directory and os.path.commonpath([real, top]) == real):
            dirnames[:] = []
            continue
        walked.add(real)
        if hidden is not None:
            hidden.extend(os.path.join(dirpath, n) for n in sorted(dirnames + filenames) if _is_hidden(n))
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in filenames:
            if not _is_hidden(name):
                path = os.path.join(dirpath, name)
                reason = images.not_regular(path)
                if reason:
                    odd.append((path, reason))
                else:
                    out.append(path)

    def order(path: str) -> list[str]:
        return os.path.relpath(path, directory).split(os.sep)

    if irregular is not None:
        irregular.extend(sorted(odd, key=lambda pair: order(pair[0])))
    return sorted(out, key=order)


def read_csv(path: str) -> tuple[list[str], list[dict]]:
    """A metadata CSV's header and rows (dicts, as ``csv.DictReader`` gives them; a BOM dropped).
    SourceError naming the file when it is not UTF-8, and the row when the csv module cannot read it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise SourceError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    # A long cell is public data (a Cohen clinical note of 200,000 characters), not an error: the
    # csv module's default limit (131072 characters) is raised to the file's size, which is in memory
    # already, for this file only.
    limit = csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    # Lines end at \r and \n only, as in a file opened with newline="": str.splitlines() also breaks at
    # form feeds and Unicode line separators, which a writer leaves unquoted inside a cell.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header: Optional[list[str]] = None
    rows: list[dict] = []
    try:
        header = list(reader.fieldnames or [])
        for row in reader:
            rows.append(row)
    except csv.Error as e:
        where = "its header" if header is None else f"row {len(rows) + 1}"  # as a malformed row's ref counts
        raise SourceError(f"{path}: {where} (line {reader.reader.line_num}) cannot be read as CSV: {e}") from None
    finally:
        csv.field_size_limit(limit)
    return header, rows


def subdirs(directory: str) -> list[str]:
    """Names of the visible subdirectories, sorted."""
    return sorted(
        d for d in os.listdir(directory)
        if not _is_hidden(d) and os.path.isdir(os.path.join(directory, d))
    )


def file_candidate(source: Source, path: str, finding: Optional[str], reject: Optional[str] = None, **kw) -> Candidate:
    """A candidate for one file of a class-per-folder layout; non-image files are rejected."""
    if reject is None and not images.is_image_file(path):
        # An exported file's "extension" may be the tail of a UID: named for public layouts only.
        shown = "" if source.private_names else f": {os.path.splitext(path)[1] or 'no extension'}"
        finding, reject = None, f"not an image file{shown}"
    if reject is not None:
        finding = None
    return Candidate(source.name, source.ref(path), path, finding=finding, reject=reject, **kw)
