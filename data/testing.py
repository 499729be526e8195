"""Fixture builders for curation tests: tiny radiograph-like images, DICOMs and source layouts.

Everything is generated (nothing copied from the real corpus), deterministic and small.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np
from PIL import Image

# ../shared/data relative to the repository (the repo root is the covid_cxr package).
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# The shared corpus's folder per source adapter (the public sources' own layouts).
REAL_SOURCE_DIRS = {"cohen": "cohen-covid-chestxray", "rsna": "rsna-pneumonia", "kermany": "chest-xray-pneumonia",
                    "radiography": "covid19-radiography"}
REAL_DATA_REASON = f"real corpus not found at {REAL_DATA} (only present on the project's shared machine)"
# synthetic.generate(..., "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED): its 3 + 3 patients fall in
# every split at the default 14/3/3 buckets (`run` refuses data whose split lacks a class before
# anything else), its record 2 in train (which the Transform decodes).
DEALT_SEED = 201


def real_rsna_with_nih_mapping(dest) -> Path:
    """The shared corpus's RSNA folder as RSNA's layout plus RSNA's NIH mapping file, under ``dest``.

    The corpus ships no ``pneumonia-challenge-dataset-mappings_2018.json``, but its MANIFEST.csv
    names each RSNA-style film's NIH original (``.../<patient>_<follow-up>.png``): the same link, in
    RSNA's format. The films and CSVs are symlinked, never copied, and the corpus is not written."""
    from covid_cxr.data.sources import rsna

    source, root = REAL_DATA / REAL_SOURCE_DIRS["rsna"], Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    for name in (rsna.IMAGES, rsna.LABELS, rsna.CLASSES):
        if not os.path.lexists(root / name):
            os.symlink(source / name, root / name)
    prefix = f"{REAL_SOURCE_DIRS['rsna']}/{rsna.IMAGES}/"
    with open(REAL_DATA / "MANIFEST.csv", newline="", encoding="utf-8") as f:
        entries = [{"subset_img_id": Path(row["path"]).stem, "img_id": Path(row["source_path"]).name}
                   for row in csv.DictReader(f) if row["path"].startswith(prefix)]
    (root / rsna.NIH_MAPPING).write_text(json.dumps(entries))
    return root

# Header values that must never leave curation (tests grep the outputs for them).
SECRET_NAME = "Doe^Johanna"
SECRET_INSTITUTION = "St Secretia Hospital"
SECRET_DATE = "19770412"


@contextlib.contextmanager
def fifo(path):
    """A named pipe at ``path`` for as long as the block runs. Code that opens one waits for a writer
    forever: a thread keeps opening it for writing and closing it at once, so code that wrongly opens
    it reads an empty file and the test fails instead of hanging."""
    os.mkfifo(path)
    stop = threading.Event()

    def unblock():
        while not stop.wait(0.1):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader yet (ENXIO)
                pass

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield str(path)
    finally:
        stop.set()
        thread.join()


def hamming(a: bytes, b: bytes) -> int:
    """Bit distance of two hashes, one pair at a time: the oracle for dedupe.near_pairs."""
    return int(np.unpackbits(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())


def radiograph(seed: int, size: tuple[int, int] = (160, 128), border: int = 0) -> np.ndarray:
    """A distinct smooth grayscale 'film' per seed (uint8), optionally inside a black border."""
    h, w = size
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(max(4, h // 16), max(4, w // 16))).astype(np.float32)
    field = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    body = np.exp(-(((ys - h / 2) / (0.45 * h)) ** 2 + ((xs - w / 2) / (0.45 * w)) ** 2))
    img = 90 + 70 * body + 35 * field
    img = np.clip(img, 30, 225).astype(np.uint8)
    if border:
        out = np.zeros((h + 2 * border, w + 2 * border), dtype=np.uint8)
        out[border : border + h, border : border + w] = img
        return out
    return img


def write_image(path, pixels: np.ndarray, quality: int = 92, rgb: bool = False, size: Optional[tuple[int, int]] = None) -> str:
    """PNG/JPEG by extension; optional (w, h) resize and RGB conversion (like public re-encodings)."""
    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    im = Image.fromarray(pixels)
    if size is not None:
        im = im.resize(size, Image.BILINEAR)
    if rgb:
        im = im.convert("RGB")
    if path.lower().endswith((".jpg", ".jpeg")):
        im.save(path, quality=quality)
    else:
        im.save(path)
    return path


def write_dicom(
    path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: Optional[int] = None,
    patient_id: str = "PAT-0001",
    patient_name: str = SECRET_NAME,
    sex: str = "F",
    age: str = "058Y",
    view: Optional[str] = "PA",
    modality: str = "CR",
    window: Optional[tuple[float, float]] = None,
    voi_lut: Optional[Sequence[int]] = None,
    voi_lut_first: int = 0,
    rescale: Optional[tuple[float, float]] = None,
    jpeg_baseline: bool = False,
    body_part: Optional[str] = None,
) -> str:
    """A single-frame DICOM with identifying header fields (name, institution, dates) set on purpose.
    ``body_part``: BodyPartExamined, left out when None (as in many real files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. an RSNA-style bare-number PatientAge is not a valid AS
        return _write_dicom(path, pixels, photometric, bits_stored, patient_id, patient_name, sex, age, view, modality,
                            window, voi_lut, voi_lut_first, rescale, jpeg_baseline, body_part)


def _write_dicom(path, pixels, photometric, bits_stored, patient_id, patient_name, sex, age, view, modality, window,
                 voi_lut, voi_lut_first, rescale, jpeg_baseline, body_part) -> str:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    pixels = np.ascontiguousarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[path])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg_baseline else ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientSex = sex
    ds.PatientAge = age
    ds.PatientBirthDate = SECRET_DATE
    ds.StudyDate = SECRET_DATE
    ds.InstitutionName = SECRET_INSTITUTION
    ds.Modality = modality
    if view is not None:
        ds.ViewPosition = view
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    itemsize = 8 if pixels.dtype.itemsize == 1 else 16
    ds.BitsAllocated = itemsize
    ds.BitsStored = bits_stored or itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if np.issubdtype(pixels.dtype, np.signedinteger) else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", [len(voi_lut), voi_lut_first, 16])  # LUTDescriptor
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])  # LUTData
        ds.VOILUTSequence = [item]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if jpeg_baseline:
        import io

        from pydicom.encaps import encapsulate

        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = pixels.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_csv(path, fields: Sequence[str], rows: Iterable[Sequence]) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(rows)
    return path


COHEN_FIELDS = ("patientid", "offset", "sex", "age", "finding", "view", "modality", "folder", "filename")


def make_cohen(root, rows: Sequence[dict]) -> Path:
    """A Cohen layout. Each row: patientid, finding, view, modality, filename, seed (None: no file), sex, age."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for r in rows:
        if r.get("seed") is not None and not (root / "images" / r["filename"]).exists():
            write_image(root / "images" / r["filename"], radiograph(r["seed"], border=r.get("border", 0)))
        out.append((r["patientid"], "0", r.get("sex", "M"), r.get("age", "50"), r["finding"], r.get("view", "PA"),
                    r.get("modality", "X-ray"), "images", r["filename"]))
    write_csv(root / "metadata.csv", COHEN_FIELDS, out)
    return root


def make_rsna(root, patients: Sequence[dict]) -> Path:
    """An RSNA layout. Each patient: id, target, cls, seed (None: no DICOM), boxes (rows), view, sex, age,
    body_part (CHEST, as RSNA's files say; None: no tag)."""
    root = Path(root)
    labels, classes = [], []
    for p in patients:
        for _ in range(p.get("boxes", 1)):
            labels.append((p["id"], "", "", "", "", p["target"]))
            classes.append((p["id"], p["cls"]))
        if p.get("seed") is not None:
            write_dicom(root / "stage_2_train_images" / f"{p['id']}.dcm", radiograph(p["seed"], (128, 128)),
                        patient_id=p["id"], patient_name=p["id"], view=p.get("view", "AP"), sex=p.get("sex", "M"),
                        age=p.get("age", "58"), body_part=p.get("body_part", "CHEST"))
    (root / "stage_2_train_images").mkdir(parents=True, exist_ok=True)
    write_csv(root / "stage_2_train_labels.csv", ("patientId", "x", "y", "width", "height", "Target"), labels)
    write_csv(root / "stage_2_detailed_class_info.csv", ("patientId", "class"), classes)
    return root


def refuse_listing(monkeypatch, name: str) -> None:
    """``os.scandir`` refuses a folder whose path ends in ``name``, as chmod 000 makes it refuse a user:
    tests may run as root, whom chmod 000 does not stop."""
    listing = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith(name):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
