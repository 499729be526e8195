"""`covid-cxr curate`: public chest X-ray collections -> curated TFRecords for ImportExampleGen.

Pipeline (``curate``), deterministic end to end:

1. every source adapter (``data/sources/``) lists its inputs as candidates with a finding or a
   rejection reason (layout, modality, view, label rules: see each adapter's docstring);
2. the task maps findings to classes (``features.TASKS``); unused findings are rejected
   ("not used by task <name>") before any pixel is read;
3. pixels (``data/images.py``, ``data/dicom.py``): DICOM display pipeline, border crop (default on),
   256-bit pHash of the cropped image, resize to ``max_side`` (never up), optional CLAHE/histogram
   equalization, 8-bit grayscale PNG. Unreadable files are rejections ("unreadable image: ...");
   DICOMs whose header says CT/MR/..., a body part other than the chest (BodyPartExamined; absent
   passes) or a lateral view are rejected too;
4. near-duplicates (``data/dedupe.py``) within and across sources, among the images the task
   uses: in source-priority order (cohen, rsna, kermany, radiography, folder; then by path) the first
   copy is kept, later copies are rejected ("near-duplicate of <source>:<ref>"). A copy whose finding
   differs from the kept one's is a label conflict: the kept (higher-priority) label wins and the
   pair is listed in summary.json (``duplicates.label_conflict_examples``);
5. groups: union-find over "same patient" and near links (hash distance <= ``group_threshold``,
   default 56: rejected copies and kept re-crops alike), so a patient and every near copy or re-crop
   of any of its images share one ``group`` (the split key); RSNA's films join by NIH patient when
   RSNA's mapping file is beside its CSVs (``data/sources/rsna.py``);
6. pseudonyms: ``patient_id`` = HMAC-SHA256(key, "<source>:<raw id>")[:16] (``data/pseudonym.py``);
   ``group`` = the pseudonym of the group's first patient;
7. optional ``balance_cap``: at most N images per class, chosen by SHA-256 of "<source>:<ref>"
   (the rest rejected with "balance cap");
8. ``DatasetWriter``: shards, manifest.csv, rejected.csv (every rejected input with its reason),
   summary.json (counts per source/class, duplicates, rejections, settings). With ``hold_out``, a
   second writer takes the held-out source's groups whole (an external test set); rejections and
   the curation-wide counts stay with the first.

Finding mapping per source (what each source's labels become; a task then maps findings to classes):

| source | covid | normal | pneumonia | other_opacity | rejected |
|---|---|---|---|---|---|
| cohen | finding contains COVID-19 (incl. "COVID-19, ARDS", "Pneumonia/Viral/COVID-19") | "No Finding" | SARS, MERS, Pneumocystis, Streptococcus, Klebsiella, Legionella, Mycoplasma, E.Coli, Varicella, Influenza, Lipoid, Bacterial, "Pneumonia", "Pneumonia/..." | ARDS, Tuberculosis (alone) | "todo"/Unknown (unlabelled), unrecognised findings, CT, lateral/blank/"?" views |
| rsna | — | Target 0 + class "Normal" | Target 1 ("Lung Opacity") | — | "No Lung Opacity / Not Normal", inconsistent/missing labels |
| kermany | — | NORMAL/ | PNEUMONIA/ (bacterial and viral) | — | other folders |
| radiography | COVID/ | Normal/ | Viral Pneumonia/ | Lung_Opacity/ | other folders |
| folder | per --class-map | per --class-map | per --class-map | per --class-map | unmapped folders |

| task | classes (label_index order) | findings used |
|---|---|---|
| covid-vs-normal | normal, covid | covid, normal |
| covid-vs-pneumonia | pneumonia, covid | covid, pneumonia |
| covid-vs-noncovid | noncovid, covid | all four (normal, pneumonia, other_opacity -> noncovid) |
| three-class | normal, pneumonia, covid | covid, normal, pneumonia |

Privacy: only sex, age (over 89 recorded as 90) and view leave a DICOM header. Raw patient ids never
reach records, manifest, rejected.csv, summary, logs or messages: RSNA's file names (its per-film
patientId) carry that id's pseudonym instead, and any other DICOM file, every file of a source that
may be a hospital export (folder, rsna) and any name that is not UTF-8 is written as its class folder
and ``<patient pseudonym>-<file pseudonym>.<ext>``, since its folder and file names may hold ids,
names, accession numbers, UIDs or dates. In such a tree a top folder that is not a class (or layout)
folder, and any top folder whose name is not UTF-8, is written as ``folder-<pseudonym>``.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import re
import sys
import tempfile
import time
import types
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import click

from covid_cxr.data import dedupe, dicom, features, images, jsonfile, pseudonym
from covid_cxr.data.sources import SOURCES, Candidate, Source, SourceError, parse_class_map
from covid_cxr.data.sources.base import list_files, subdirs
from covid_cxr.data.writer import DatasetWriter, OutputError, check_writable, reason_kind
from covid_cxr.pipeline.config import UserPath, user_path

log = logging.getLogger(__name__)

BALANCE_CAP_REASON = "balance cap"
_PARALLEL_MIN_JOBS = 64  # below this, worker start-up costs more than it saves


class CurationError(ValueError):
    """A user error (bad source, layout, option): a one-line message, no traceback."""


SourceSpec = Union[Source, tuple[str, str]]


@dataclasses.dataclass
class _Item:
    """A candidate on its way through curation."""

    index: int
    candidate: Candidate
    label: Optional[str] = None
    processed: Optional[images.Processed] = None
    reject: Optional[str] = None
    raw_patient: str = ""
    view: str = features.UNKNOWN
    sex: str = features.UNKNOWN
    age: int = features.UNKNOWN_AGE
    png_at: Optional[tuple[int, int]] = None  # (offset, length) of the processed PNG in the spool


class _Placed(NamedTuple):
    """An accepted item and where it goes."""

    item: _Item
    patient: str  # pseudonyms
    group: str
    held_out: bool


class _PngSpool:
    """Processed PNGs wait in an anonymous temporary file (TMPDIR), not in memory, until they are
    written: duplicates and patient groups need every film's hash first, and a corpus of 100,000
    films' PNGs would not fit in memory."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="covid-cxr-curate-")

    def put(self, png: bytes) -> tuple[int, int]:
        offset = self._file.seek(0, os.SEEK_END)
        self._file.write(png)
        return offset, len(png)

    def get(self, where: tuple[int, int]) -> bytes:
        self._file.seek(where[0])
        return self._file.read(where[1])

    def close(self) -> None:
        self._file.close()


def build_sources(specs: Union[Mapping[str, str], Iterable[SourceSpec]], class_map: Optional[Mapping[str, str]] = None) -> list[Source]:
    """Source objects, in registry (priority) order, from {name: path}, (name, path) pairs or Sources."""
    items = list(specs.items()) if isinstance(specs, Mapping) else list(specs)
    built: dict[str, Source] = {}
    for spec in items:
        if isinstance(spec, Source):
            source = spec
        else:
            name, path = spec
            if name not in SOURCES:
                raise CurationError(f"unknown source {name!r}; choose from: {', '.join(SOURCES)}")
            if not os.path.exists(path):
                raise CurationError(f"{name} source path {path} does not exist")
            try:
                source = SOURCES[name](path, class_map) if name == "folder" else SOURCES[name](path)
            except SourceError as e:
                raise CurationError(str(e)) from None
        if source.name in built:
            raise CurationError(f"source {source.name!r} given twice; each source may appear once")
        built[source.name] = source
    if not built:
        raise CurationError("no sources given; pass --source NAME=PATH (" + ", ".join(SOURCES) + ")")
    if class_map and "folder" not in built:
        raise CurationError("--class-map applies to the folder source, but no folder source was given")
    order = list(SOURCES)
    return sorted(built.values(), key=lambda s: order.index(s.name) if s.name in order else len(order))


def curate(
    sources: Union[Mapping[str, str], Iterable[SourceSpec]],
    out_dir: str,
    task: str,
    *,
    class_map: Optional[Mapping[str, str]] = None,
    max_side: int = images.DEFAULT_MAX_SIDE,
    crop: bool = True,
    equalize: str = "none",
    balance_cap: Optional[int] = None,
    key: Optional[str] = None,
    hash_threshold: int = dedupe.DEFAULT_THRESHOLD,
    group_threshold: Optional[int] = None,
    workers: Optional[int] = None,
    progress: Optional[bool] = None,
    hold_out: Optional[tuple[str, str]] = None,
) -> dict:
    """Curates ``sources`` for ``task`` into ``out_dir``; returns the summary written to summary.json.

    ``sources``: {name: path} / [(name, path)] with names from ``SOURCES``, or Source objects.
    ``hold_out``: (source name, directory): that source's films go to their own curated directory,
    an external test set for a model trained on ``out_dir``. They are curated with the others, so
    a film duplicated in another source is found; every patient / near-duplicate group holding one
    of them goes there whole, whatever its other films' sources.
    ``key``: pseudonym key (else env COVID_CXR_PSEUDONYM_KEY, else the per-user key file).
    ``workers``: image-processing processes (default: up to 4 CPUs; results never depend on it).
    ``progress``: tqdm bar (default: when stderr is a TTY). Raises CurationError for user errors.
    """
    task_obj, source_objs, group_threshold, key_bytes, key_origin = _check_arguments(
        sources, out_dir, task, class_map=class_map, max_side=max_side, equalize=equalize, balance_cap=balance_cap,
        key=key, hash_threshold=hash_threshold, group_threshold=group_threshold, hold_out=hold_out)
    items = _label(source_objs, task_obj)
    with contextlib.closing(_PngSpool()) as spool:
        _load_pixels([it for it in items if it.label is not None], max_side, crop, equalize, workers, progress, spool)

        pseudonyms: dict[tuple[str, str], str] = {}

        def pid(it: _Item) -> str:
            k = (it.candidate.source, it.raw_patient)
            if k not in pseudonyms:
                pseudonyms[k] = pseudonym.pseudonymize(key_bytes, *k)
            return pseudonyms[k]

        by_name = {s.name: s for s in source_objs}
        refs = {it.index: _public_ref(it, pid(it), key_bytes, by_name[it.candidate.source]) for it in items}
        hashed = [it for it in items if it.processed is not None and it.reject is None]
        linked = dedupe.near_pairs([it.processed.phash for it in hashed], group_threshold)
        duplicate_summary = _reject_duplicates(hashed, refs, hash_threshold, linked)
        duplicate_summary["grouped_pairs"] = len(linked)
        uf = _group(hashed, linked)
        held_groups = {uf.find(n) for n, it in enumerate(hashed)
                       if hold_out is not None and it.reject is None and it.candidate.source == hold_out[0]}
        # The cap balances what is trained on: held-out films neither count towards it nor are cut.
        balance = _apply_balance_cap([it for n, it in enumerate(hashed) if uf.find(n) not in held_groups], balance_cap)

        placed = [_Placed(it, pid(it), pid(hashed[uf.find(n)]), uf.find(n) in held_groups)  # group: its first patient's
                  for n, it in enumerate(hashed) if it.reject is None]
        settings = _settings(task_obj, source_objs, class_map, max_side, crop, equalize, balance_cap,
                             hash_threshold, group_threshold, key_origin, key_bytes)
        summary = _write_outputs(out_dir, hold_out, task_obj, settings, source_objs, items, placed, refs, spool,
                                 duplicate_summary, balance)
    log.info("curated %d images (%d rejected) into %s", summary["accepted"], summary["rejected"], out_dir)
    return summary


class _Checked(NamedTuple):
    """curate()'s arguments once checked, and what the checks resolved."""

    task: features.Task
    sources: list[Source]
    group_threshold: int  # the default resolved: never below the near-duplicate threshold
    key: bytes
    key_origin: str


def _check_arguments(sources: Union[Mapping[str, str], Iterable[SourceSpec]], out_dir: str, task: str, *,
                     class_map: Optional[Mapping[str, str]], max_side: int, equalize: str,
                     balance_cap: Optional[int], key: Optional[str], hash_threshold: int,
                     group_threshold: Optional[int], hold_out: Optional[tuple[str, str]]) -> _Checked:
    """Every check of curate()'s arguments (as curate() takes them), before any image is read: a mistake
    costs no time; CurationError (one line) for the first that fails."""
    try:
        task_obj = features.get_task(task)
    except ValueError as e:
        raise CurationError(str(e)) from None
    if equalize not in images.EQUALIZE_MODES:
        raise CurationError(f"unknown equalization {equalize!r}; choose one of: {', '.join(images.EQUALIZE_MODES)}")
    if max_side < images.MIN_SIDE:
        raise CurationError(f"max side must be at least {images.MIN_SIDE} px")
    if balance_cap is not None and balance_cap < 1:
        raise CurationError("balance cap must be at least 1")
    if group_threshold is None:  # a rejected copy always shares its kept film's group
        group_threshold = max(dedupe.GROUP_THRESHOLD, hash_threshold)
    elif group_threshold < hash_threshold:
        raise CurationError(f"the group threshold ({group_threshold}) must be at least the near-duplicate "
                            f"threshold ({hash_threshold})")
    source_objs = build_sources(sources, class_map)
    _check_outside_sources(out_dir, "--out", source_objs)
    if hold_out is not None:
        _check_hold_out(hold_out, source_objs, out_dir)
    try:  # before the images are read, not when the records are written
        check_writable(out_dir, "output (--out)")
        if hold_out is not None:
            check_writable(hold_out[1], "held-out output (--hold-out)")
    except OutputError as e:
        raise CurationError(str(e)) from None
    try:
        key_bytes, key_origin = pseudonym.load_key(key)
    except pseudonym.PseudonymKeyError as e:
        raise CurationError(str(e)) from None
    return _Checked(task_obj, source_objs, group_threshold, key_bytes, key_origin)


def _settings(task_obj: features.Task, source_objs: Sequence[Source], class_map, max_side, crop, equalize,
              balance_cap, hash_threshold, group_threshold, key_origin, key_bytes) -> dict:
    """summary.json's ``settings``: what it takes to curate the same directory again."""
    return {
        "task": task_obj.name,
        "sources": {s.name: s.root for s in source_objs},
        "class_map": dict(sorted(class_map.items())) if class_map else None,
        "max_side": max_side,
        "crop": crop,
        "equalize": equalize,
        "balance_cap": balance_cap,
        "hash": f"dct-phash-{images.HASH_BYTES * 8}",
        "hash_threshold": hash_threshold,
        "group_threshold": group_threshold,
        "pseudonym_key": key_origin,
        "pseudonym_key_id": pseudonym.key_id(key_bytes),
    }


def _write_outputs(out_dir: str, hold_out: Optional[tuple[str, str]], task_obj: features.Task, settings: dict,
                   source_objs: Sequence[Source], items: Sequence[_Item],
                   placed: Sequence["_Placed"], refs: Mapping[int, str], spool: _PngSpool,
                   duplicate_summary: dict, balance: Optional[dict]) -> dict:
    """Writes every accepted item of ``placed`` to the curated directory (or the held-out one)
    and every rejected item of ``items`` to out_dir's rejected.csv; returns out_dir's summary."""
    # A failure leaves no partial shards behind, in either directory.
    with contextlib.ExitStack() as writers:
        writer = writers.enter_context(DatasetWriter(out_dir, task_obj.name))
        held_writer = writers.enter_context(DatasetWriter(hold_out[1], task_obj.name)) if hold_out else None
        crop_counts: collections.Counter = collections.Counter()
        group_sizes: collections.Counter = collections.Counter()
        for it, patient, group, held_out in placed:
            p = it.processed
            record = features.Record(
                png=spool.get(it.png_at), label=it.label, label_index=task_obj.classes.index(it.label),
                patient_id=patient, group=group, source=it.candidate.source, view=it.view, sex=it.sex, age=it.age,
            )
            (held_writer if held_out else writer).add(record, refs[it.index], image_hash=p.phash.hex(), note=p.note)
            crop_counts["cropped" if p.cropped else ("refused" if p.note else "unchanged")] += 1
            group_sizes[group] += 1
        rejected_by_source: dict = collections.defaultdict(collections.Counter)
        for it in items:
            if it.reject is not None:
                writer.reject(it.candidate.source, refs[it.index], _writable(it.reject))
                rejected_by_source[it.candidate.source][reason_kind(it.reject)] += 1

        held = None
        if held_writer is not None:  # its rejections stay in out_dir's rejected.csv, with all the others
            held_summary = held_writer.close({"settings": settings, "held_out_of": {
                "source": hold_out[0], "training_data": out_dir}})
            held = {"source": hold_out[0], "dir": hold_out[1], "accepted": held_summary["accepted"],
                    "per_source_class": held_summary["per_source_class"]}
        return writer.close({
            "settings": settings,
            "held_out": held,
            "inputs_per_source": dict(collections.Counter(it.candidate.source for it in items)),
            "rejections_per_source": {s: dict(sorted(c.items())) for s, c in sorted(rejected_by_source.items())},
            "not_read_per_source": {s.name: s.not_read for s in source_objs if s.not_read},
            "patient_grouping": {s.name: s.patient_grouping for s in source_objs if s.patient_grouping},
            "duplicates": duplicate_summary,
            "largest_group": max(group_sizes.values(), default=0),
            "crop": dict(sorted(crop_counts.items())),
            "balance": balance,
        })


def _check_hold_out(hold_out: tuple[str, str], source_objs: Sequence[Source], out_dir: str) -> None:
    name, path = hold_out
    names = [s.name for s in source_objs]
    if name not in names:
        raise CurationError(f"--hold-out {name}: not one of the sources given ({', '.join(names)})")
    if len(names) < 2:
        raise CurationError(f"--hold-out {name}: it is the only source; nothing would be left to train on")
    if _inside(path, out_dir) or _inside(out_dir, path):
        raise CurationError(f"--hold-out directory {path} and --out {out_dir} must not contain each other")
    _check_outside_sources(path, "--hold-out", source_objs)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder + os.sep)


def _check_outside_sources(path: str, option: str, source_objs: Sequence[Source]) -> None:
    for s in source_objs:
        if _inside(path, s.root):
            raise CurationError(f"output directory {path} is inside the {s.name} source; choose another {option}")


def _label(source_objs: Sequence[Source], task: features.Task) -> list[_Item]:
    """Every candidate of every source (priority order), with its task class or rejection reason."""
    items = [_Item(i, c) for i, c in enumerate(c for s in source_objs for c in s.every_candidate())]
    for it in items:
        c = it.candidate
        if c.reject is not None:
            it.reject = c.reject
        elif task.class_of(c.finding) is None:
            it.reject = f"not used by task {task.name}"
        else:
            it.label = task.class_of(c.finding)
        it.raw_patient = c.patient_id or ""
        it.view, it.sex, it.age = c.view, c.sex, c.age
    return items


def _load_pixels(todo: Sequence[_Item], max_side, crop, equalize, workers, progress, spool: "_PngSpool") -> None:
    """Processes the images; applies DICOM header rules (modality, body part, lateral view, burned-in text)
    and fields."""
    jobs = [(it.candidate.path, max_side, crop, equalize) for it in todo]
    for it, (result, error) in zip(todo, _run_jobs(jobs, workers, progress)):
        if result is None:
            it.reject = f"unreadable image: {error}"
            continue
        it.png_at = spool.put(result.png)
        it.processed = dataclasses.replace(result, png=b"")  # the hash and fields stay in memory
        header = result.header
        if header is None:
            continue
        it.raw_patient = it.raw_patient or header.patient_id
        it.sex = it.sex if it.sex != features.UNKNOWN else header.sex
        it.age = it.age if it.age != features.UNKNOWN_AGE else header.age
        it.reject = header.refusal()  # another modality or body part, a lateral view, burned-in text
        if it.reject is None and it.view == features.UNKNOWN and header.view in features.VIEWS:
            it.view = header.view
    for it in todo:
        if not it.raw_patient:
            it.raw_patient = it.candidate.source_ref  # no id published: the file is its own patient


def _reject_duplicates(hashed: Sequence[_Item], refs: Mapping[int, str], threshold: int,
                       linked: Sequence[tuple[int, int, int]]):
    """Rejects later copies of near-duplicate images; returns the summary's "duplicates" section.
    ``linked``: the near pairs at the group threshold (the copies are among them)."""
    dups = dedupe.find_duplicates([it.processed.phash for it in hashed], threshold, pairs=linked)
    by_sources: collections.Counter = collections.Counter()
    conflicts: list[str] = []  # the same picture under two labels: the kept (higher-priority) label wins
    for j, i in sorted(dups.kept_of.items()):
        kept, copy = hashed[i], hashed[j]
        copy.reject = f"near-duplicate of {kept.candidate.source}:{refs[kept.index]}"
        if (copy.candidate.source, copy.candidate.path) == (kept.candidate.source, kept.candidate.path):
            copy.reject += " (the same file, listed again in the metadata)"  # Cohen's metadata.csv does this
        by_sources["/".join(sorted({kept.candidate.source, copy.candidate.source}))] += 1
        if kept.candidate.finding != copy.candidate.finding:
            conflicts.append(f"{copy.candidate.source}:{refs[copy.index]} ({copy.candidate.finding}) duplicates "
                             f"{kept.candidate.source}:{refs[kept.index]} ({kept.candidate.finding})")
    within = sum(n for k, n in by_sources.items() if "/" not in k)
    return {
        "rejected": len(dups.kept_of),
        "within_source": within,
        "cross_source": len(dups.kept_of) - within,
        "by_sources": dict(sorted(by_sources.items())),
        "near_pairs": len(dups.pairs),
        "label_conflicts": len(conflicts),
        "label_conflict_examples": conflicts[:50],
    }


def _group(hashed: Sequence[_Item], near: Sequence[tuple[int, int, int]]) -> dedupe.UnionFind:
    """Union-find over "same patient" and every pair in ``near`` (rejected copies too: they link patients)."""
    uf = dedupe.UnionFind(len(hashed))
    first_of_patient: dict[tuple[str, str], int] = {}
    for n, it in enumerate(hashed):
        uf.union(first_of_patient.setdefault((it.candidate.source, it.raw_patient), n), n)
    for i, j, _ in near:
        uf.union(i, j)
    return uf


def _apply_balance_cap(hashed: Sequence[_Item], cap: Optional[int]) -> Optional[dict]:
    """Keeps at most ``cap`` images per class, chosen by SHA-256 of "<source>:<ref>"; the rest are rejected."""
    if cap is None:
        return None
    by_class: dict[str, list[_Item]] = collections.defaultdict(list)
    for it in hashed:
        if it.reject is None:
            by_class[it.label].append(it)
    for members in by_class.values():
        members.sort(key=lambda it: hashlib.sha256(f"{it.candidate.source}:{it.candidate.source_ref}".encode()).hexdigest())
        for it in members[cap:]:
            it.reject = BALANCE_CAP_REASON
    return {"cap": cap, "before": {label: len(m) for label, m in sorted(by_class.items())}}


def _writable(reason: str) -> str:
    """A reason that quotes a name which is not UTF-8 (an adapter's "unknown class folder: <name>")
    keeps its kind only: the name cannot be written to the CSV as it is."""
    return reason if images.is_utf8(reason) else f"{reason_kind(reason)}: a name that is not UTF-8"


# A rejected row of a layout's own metadata file (Cohen's, RSNA's): a fixed name and a number, no file's.
METADATA_ROW_REF = re.compile(r"(metadata|stage_2_train_labels|stage_2_detailed_class_info)\.csv row \d+")


def _public_ref(it: _Item, patient_pseudonym: str, key: bytes, source: Source) -> str:
    """The ref as written to the manifest, the rejections and the summary.

    RSNA names each file by its raw (per-film) patientId: that id's pseudonym takes its place. Any other file of a
    tree that may be a hospital export (``Source.private_names``), any DICOM file and any name that
    is not UTF-8 keeps only its class folder and extension: hospitals name files and folders (and
    previews, notes) by patient id, name, accession number, UID and date, more than a list of header
    values to scrub could cover.
    """
    ref, path = it.candidate.source_ref, it.candidate.path
    folder, _, name = ref.rpartition("/")
    ref_id = it.candidate.ref_id
    known = type(source) is SOURCES.get(source.name)  # else an adapter passed in as an object
    if ref_id and name == f"{ref_id}.dcm" and known and source.names_a_class(folder):  # RSNA's own layout
        return f"{folder}/{pseudonym.pseudonymize(key, it.candidate.source, ref_id)}.dcm"
    if path is None and known and METADATA_ROW_REF.fullmatch(ref):  # names no one: written as it is
        return ref
    private = source.private_names or not known
    dicom_file = (path and dicom.is_dicom(path)) or (not path and name.lower().endswith((".dcm", ".dicom")))
    if private or dicom_file or not images.is_utf8(ref):
        token = f"{patient_pseudonym}-{pseudonym.file_pseudonym(key, it.candidate.source, ref)}"
        top = ref.split("/")[0]
        layout_folder = known and source.names_a_class(top)
        if "/" in ref and (not images.is_utf8(top) or ((private or dicom_file) and not layout_folder)):
            # Not a class or layout folder of a private tree or above a DICOM file, or not writable as
            # it is: it may be named by patient (locate() finds the file by its own pseudonym).
            return f"{pseudonym.folder_pseudonym(key, it.candidate.source, top)}/" + images.public_ref(ref, token, keep=0)
        return images.public_ref(ref, token)
    return ref


# "<patient>-<file>" / "file-<file>" / "folder-<file>": the file's (or top folder's) own pseudonym last.
FILE_REF = re.compile(r"-([0-9a-f]{8})(?![0-9a-f])")
# RSNA's layout: "<layout folder>/<patient>.dcm", the film named by its patientId's pseudonym.
RSNA_FILM_REF = re.compile(r"([^/]+)/([0-9a-f]{16})\.dcm")


def _ref_key(written: str) -> Optional[tuple]:
    """What locate looks for: ("file", <8 hex>) or ("film", <folder>, <16 hex>), from the first
    field of ``written`` that holds a pseudonym (a row pasted from rejected.csv names its own file
    before the near-duplicate in its reason); None when none does."""
    for field in written.split(","):
        film = RSNA_FILM_REF.fullmatch(field.strip())
        if film:
            return "film", film.group(1), film.group(2)
        pseudonyms = FILE_REF.findall(field)
        if pseudonyms:
            return "file", pseudonyms[-1]
    return None


def locate(source: str, root: str, written_refs: Sequence[str], key: bytes) -> dict[str, list[str]]:
    """The files under ``root`` behind pseudonymous refs written for files of ``source``
    (``<class folder>/<patient pseudonym>-<file pseudonym>.<ext>`` by curation, ``.../file-<file
    pseudonym>.<ext>`` and the top folders' ``folder-<pseudonym>`` by evaluate with source "folder"):
    {written ref: [local paths]}."""
    wanted: dict[tuple, list[str]] = {}
    for written in written_refs:
        wanted.setdefault(_ref_key(written), []).append(written)
    found: dict[str, list[str]] = {written: [] for written in written_refs}

    def add(path: str, *ref_key) -> None:
        for written in wanted.get(ref_key, []):
            found[written].append(path)

    for path in list_files(root):
        ref = os.path.relpath(path, root).replace(os.sep, "/")
        add(path, "file", pseudonym.file_pseudonym(key, source, ref))
        folder, _, name = ref.rpartition("/")
        if name.endswith(".dcm"):  # as _public_ref writes an RSNA film: its folder, its patientId's pseudonym
            add(path, "film", folder, pseudonym.pseudonymize(key, source, name[:-len(".dcm")]))
    for folder in subdirs(root):  # evaluate's source slices of a tree's top folders: "folder-<pseudonym>"
        add(os.path.join(root, folder), "file", pseudonym.file_pseudonym(key, source, folder + "/"))
    return found


@dataclasses.dataclass(frozen=True)
class CuratedCopies:
    """What :func:`copies_of_curated` found."""

    copies: dict[str, tuple[str, int]]  # path -> (its nearest curated film as "source:ref", distance in bits)
    unchecked: dict[str, str]  # path -> why it could not be hashed (so not known to be a copy)
    threshold: int  # the curation's near-copy distance
    curated_films: int


def copies_of_curated(paths: Sequence[str], curated_dir: str, workers: Optional[int] = None) -> CuratedCopies:
    """Which of ``paths`` are near copies of films in the curated directory ``curated_dir`` (every film of it,
    whichever split ExampleGen deals it to), by the curation's own rule: each file hashed as that curation
    hashed its inputs (its settings in summary.json), within its near-copy distance (``hash_threshold``) of a
    film's hash in manifest.csv. A film that close is one curation would have rejected as a copy. For an
    "external" test set: such a film is no test of a source the model never saw. CurationError when the
    directory cannot be read or holds no perceptual hashes (the synthetic generator's). ``workers``: hashing
    processes, as for curate() (results never depend on it)."""
    try:
        with open(os.path.join(curated_dir, features.SUMMARY), encoding="utf-8") as f:
            settings = jsonfile.load_object(f, os.path.join(curated_dir, features.SUMMARY), "curation summary")
        settings = settings.get("settings") or {}
        with open(os.path.join(curated_dir, features.MANIFEST), newline="", encoding="utf-8") as f:
            # A row cut short has None for its missing fields.
            rows = [(f"{r['source']}:{r['source_ref']}", bytes.fromhex(r["hash"] or "")) for r in csv.DictReader(f)]
    except (OSError, ValueError, KeyError, csv.Error) as e:  # KeyError: a manifest without its columns
        raise CurationError(f"{curated_dir}: cannot read its films' hashes ({type(e).__name__}: {e})") from None
    if not isinstance(settings, dict):
        raise CurationError(f"{curated_dir}: {features.SUMMARY}'s settings is {settings!r}, not a mapping")
    if settings.get("hash") != f"dct-phash-{images.HASH_BYTES * 8}":
        raise CurationError(f"{curated_dir}: not hashed with curation's perceptual hash (hash "
                            f"{settings.get('hash')!r}; synthetic data?): near copies cannot be found")
    short = next((n for n, (_, digest) in enumerate(rows, 1) if len(digest) != images.HASH_BYTES), None)
    if short is not None:  # a manifest cut short or edited: no distance to it could be measured
        raise CurationError(f"{curated_dir}: cannot read its films' hashes ({features.MANIFEST} row {short} holds no "
                            f"{images.HASH_BYTES * 8}-bit hash)")
    threshold = _summary_setting(settings, "hash_threshold", dedupe.DEFAULT_THRESHOLD, int, curated_dir)
    options = (_summary_setting(settings, "max_side", images.DEFAULT_MAX_SIDE, int, curated_dir),
               _summary_setting(settings, "crop", True, bool, curated_dir),
               _summary_setting(settings, "equalize", "none", str, curated_dir))
    hashed, unchecked = {}, {}
    # A library call: its callers have no --workers option to point to (scripts/quality_benchmark.py).
    results = _run_jobs([(path, *options) for path in paths], workers, progress=False,
                        one_worker_hint="call copies_of_curated with workers=1")
    for path, (processed, reason) in zip(paths, results):
        if processed is None:
            unchecked[path] = reason
        else:
            hashed[path] = processed.phash
    index, distance = dedupe.nearest(list(hashed.values()), [h for _, h in rows])
    copies = {path: (rows[i][0], int(d)) for path, i, d in zip(hashed, index, distance) if i >= 0 and d <= threshold}
    return CuratedCopies(copies, unchecked, threshold, len(rows))


def _summary_setting(settings: dict, field: str, default, kind: type, curated_dir: str):
    """settings[field] of a curated summary.json, as curation wrote it (``kind``); CurationError naming the
    field for a hand-edited one: int("abc") was a bare ValueError, bool("false") true."""
    value = settings.get(field, default)
    if type(value) is not kind:  # exact: True is no max_side
        wanted = {int: "a whole number", bool: "true or false", str: "text"}[kind]
        raise CurationError(f"{curated_dir}: {features.SUMMARY}'s settings.{field} is {value!r}, not {wanted}")
    return value


def _run_jobs(jobs: Sequence[tuple], workers: Optional[int], progress: Optional[bool],
              one_worker_hint: str = "re-run with --workers 1"):
    """Yields images.process_job results in job order (so output never depends on ``workers``).
    ``one_worker_hint``: how the caller's user asks for one process, said when a worker crashes."""
    if progress is None:
        progress = sys.stderr.isatty()
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="curating", unit="img", file=sys.stderr)
    try:
        if workers > 1 and len(jobs) >= _PARALLEL_MIN_JOBS:
            # spawn, not fork: no fork-after-threads hazards (TensorFlow, OpenCV pools in this process).
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                with _workers_skip_main_module():
                    results = pool.map(images.process_job, jobs, chunksize=8)  # starts the workers
                try:
                    for result in results:
                        if bar:
                            bar.update()
                        yield result
                except concurrent.futures.process.BrokenProcessPool:
                    raise CurationError("an image worker process crashed (a decoder failed hard); "
                                        f"{one_worker_hint} to see which file") from None
        else:
            for job in jobs:
                result = images.process_job(job)
                if bar:
                    bar.update()
                yield result
    finally:
        if bar:
            bar.close()


@contextlib.contextmanager
def _workers_skip_main_module():
    """Spawned workers re-import the parent's __main__ script (for `covid-cxr` that is the whole CLI,
    TensorFlow included: seconds per worker). They only need covid_cxr.data.images, so while they
    start, __main__ is a blank module and they skip it."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _parse_source_option(values: Sequence[str], option: str = "--source", form: str = "NAME=PATH") -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise click.UsageError(f"{option} {value!r}: expected {form}, NAME one of {', '.join(SOURCES)}")
        out.append((name, user_path(path)))  # as UserPath reads the other path options
    return out


@click.command("curate")
@click.option("--source", "source_specs", multiple=True, required=True, metavar="NAME=PATH",
              help=f"A source collection in its original layout; NAME is one of {', '.join(SOURCES)}. Repeatable.")
@click.option("--class-map", default=None, metavar="FOLDER=FINDING,...",
              help=f"Folder source only: class folder -> finding ({', '.join(features.FINDINGS)}).")
@click.option("--task", default="covid-vs-normal", show_default=True, type=click.Choice(list(features.TASKS)),
              help="Task whose classes the records are labelled with.")
@click.option("--out", "out_dir", required=True, type=UserPath(file_okay=False), help="Output directory.")
@click.option("--max-side", default=images.DEFAULT_MAX_SIDE, show_default=True, type=click.IntRange(images.MIN_SIDE, images.MAX_SIDE),
              help="Longest side of the stored PNGs (never upscaled).")
@click.option("--no-crop", is_flag=True, help="Keep black borders and bars (cropping is on by default).")
@click.option("--equalize", default="none", show_default=True, type=click.Choice(images.EQUALIZE_MODES),
              help="Contrast equalization of the stored images.")
@click.option("--balance-cap", default=None, type=click.IntRange(1), help="At most N images per class.")
@pseudonym.key_option
@click.option("--hash-threshold", default=dedupe.DEFAULT_THRESHOLD, show_default=True, type=click.IntRange(0, 128),
              help="Near-duplicate threshold: hamming distance between 256-bit perceptual hashes.")
@click.option("--group-threshold", default=None, type=click.IntRange(0, 128),
              help=f"Films at most this far apart are kept but share one patient group, so one split "
                   f"[default: {dedupe.GROUP_THRESHOLD}, or --hash-threshold when larger].")
@click.option("--workers", default=None, type=click.IntRange(1, 64), help="Image-processing processes (default: up to 4).")
@click.option("--hold-out", "hold_out_spec", default=None, metavar="NAME=DIR",
              help="Write source NAME's films (and every film sharing a patient or near-duplicate group with them) "
                   "to DIR instead: an external test set for `covid-cxr evaluate`.")
def curate_command(source_specs, class_map, task, out_dir, max_side, no_crop, equalize, balance_cap, key,
                   hash_threshold, group_threshold, workers, hold_out_spec):
    """Curate public chest X-ray collections into de-identified, de-duplicated, patient-grouped TFRecords."""
    specs = _parse_source_option(source_specs)
    hold_out = _parse_source_option([hold_out_spec], "--hold-out", "NAME=DIR")[0] if hold_out_spec is not None else None
    cmap = None
    if class_map is not None:
        try:
            cmap = parse_class_map(class_map)
        except ValueError as e:
            raise click.UsageError(f"--class-map: {e}") from None
    started = time.monotonic()
    with pseudonym.announcing_new_key_file(key):  # after the summary, or the error
        try:
            summary = curate(specs, out_dir, task, class_map=cmap, max_side=max_side, crop=not no_crop,
                             equalize=equalize, balance_cap=balance_cap, key=key, hash_threshold=hash_threshold,
                             group_threshold=group_threshold, workers=workers, hold_out=hold_out)
        except CurationError as e:
            raise click.UsageError(str(e)) from None
        except OSError as e:  # e.g. an unwritable output directory
            raise click.ClickException(f"{e.strerror or type(e).__name__}: {e.filename or out_dir}") from None
        click.echo(format_summary(summary, out_dir, time.monotonic() - started))
    if not summary["accepted"]:  # nothing to train or evaluate on: a failed curation, exit code 1
        raise click.ClickException(f"no image was accepted for task {summary['task']}: the reasons are in "
                                   f"{os.path.join(out_dir, 'rejected.csv')}")
    missing = [c for c in summary["classes"] if not summary.get("per_class", {}).get(c)]
    if missing:  # `run` would refuse it; say so now, while the rejections are on screen
        click.echo(f"covid-cxr: warning: no accepted image of class {', '.join(missing)}: this directory cannot "
                   f"train task {summary['task']}"
                   # evaluate still measures what it holds (one class: a proportion, no AUC)
                   + (", and evaluate on it reports one class only, without an AUC"
                      if len(missing) == len(summary["classes"]) - 1 else ""), err=True)
    held = summary.get("held_out")
    if held:
        held_classes = {c for counts in held["per_source_class"].values() for c, n in counts.items() if n}
        missing = [c for c in summary["classes"] if c not in held_classes]
        if missing:  # evaluate still reports the other class's proportion; say now what it cannot
            click.echo(f"covid-cxr: warning: the held-out films in {held['dir']} have no image of class "
                       f"{', '.join(missing)}: they test "
                       + ("nothing" if len(missing) == len(summary["classes"]) else "one class only, without an AUC"),
                       err=True)


def format_summary(summary: Mapping, out_dir: str, seconds: Optional[float] = None) -> str:
    lines = [f"curated {summary['accepted']} images for task {summary['task']} into {out_dir}"
             + (f" in {seconds:.0f}s" if seconds is not None else "")]
    per_class = summary.get("per_class", {})
    lines.append("  accepted per class: " + (", ".join(f"{c} {per_class.get(c, 0)}" for c in summary["classes"])))
    for source, counts in summary.get("per_source_class", {}).items():
        lines.append(f"    {source}: " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items())))
    d = summary.get("duplicates", {})
    lines.append(f"  near-duplicates rejected: {d.get('rejected', 0)} "
                 f"(within a source {d.get('within_source', 0)}, across sources {d.get('cross_source', 0)})")
    if d.get("label_conflicts"):
        lines.append(f"  label conflicts (same picture, different labels; the kept copy's label wins): {d['label_conflicts']}")
    lines.append(f"  patients {summary.get('patients', 0)}, groups {summary.get('groups', 0)} (film pairs near enough "
                 f"to share a group: {d.get('grouped_pairs', 0)})")
    for source, grouping in summary.get("patient_grouping", {}).items():
        lines.append(f"  {source} patients: {grouping}")
    lines.append(f"  rejected {summary['rejected']}:")
    for reason, n in sorted(summary.get("rejections", {}).items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"    {n:6d}  {reason}")
    for source, not_read in summary.get("not_read_per_source", {}).items():
        lines.extend(f"  {source}: {n} {reason}" for reason, n in not_read.items())
    lines.append(f"  details: {os.path.join(out_dir, features.MANIFEST)}, {features.REJECTED}, {features.SUMMARY}")
    held = summary.get("held_out")
    if held:
        lines.append(f"held out for external testing: {held['accepted']} images of source {held['source']} and of "
                     f"the groups they share, into {held['dir']} (not counted above)")
        for source, counts in held["per_source_class"].items():
            lines.append(f"    {source}: " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items())))
    return "\n".join(lines)


@click.command("locate")
@click.option("--source", "source_spec", required=True, metavar="NAME=PATH",
              help="The source as it was given to `covid-cxr curate`.")
@click.option("--key", default=None, help="The pseudonym key curation used (default: as for curate).")
@click.argument("refs", nargs=-1, required=True)
def locate_command(source_spec, key, refs):
    """Find the local files behind refs that curation or evaluate wrote as pseudonyms (manifest.csv,
    rejected.csv, reports), e.g. COVID/3f2a...-9c1d04be.dcm, or evaluate's folder-9c1d04be source.
    Prints to this terminal only."""
    [(name, root)] = _parse_source_option([source_spec])
    if name not in SOURCES:
        raise click.UsageError(f"--source {source_spec!r}: {name!r} is not a source; choose from {', '.join(SOURCES)}")
    if not os.path.isdir(root):
        raise click.UsageError(f"--source {source_spec!r}: {root!r} is not a directory")
    malformed = [ref for ref in refs if _ref_key(ref) is None]
    if malformed:  # a file's own name, or a truncated ref: no pseudonym to look for
        raise click.UsageError(f"{malformed[0]!r} is not a pseudonymous ref (expected e.g. COVID/3f2a...-9c1d04be.dcm "
                               "or stage_2_train_images/3f2a....dcm, as manifest.csv, rejected.csv or a report wrote it)")
    try:
        key_bytes, _ = pseudonym.load_key(key, allow_short=True, create=False)  # short: finds files an older key named
    except pseudonym.PseudonymKeyError as e:
        raise click.UsageError(str(e)) from None
    found = locate(name, os.path.abspath(root), refs, key_bytes)
    for written, paths in found.items():
        click.echo(f"{written}\t{' '.join(paths) if paths else 'not found (another source, folder or key?)'}")
    if not all(found.values()):
        sys.exit(1)
