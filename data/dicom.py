"""DICOM radiographs -> 8-bit grayscale pixels plus the only header fields allowed out: sex and age.

Pixel pipeline (DICOM PS3.3 C.11 order), the same for every source:

1. decode ``PixelData`` with pydicom (uncompressed, RLE, deflate; JPEG Baseline / Extended and
   JPEG 2000 through Pillow; other compressed syntaxes such as JPEG Lossless need pylibjpeg or GDCM
   and are reported as unreadable, never crash the run);
2. Modality LUT or Rescale Slope/Intercept (``apply_modality_lut``);
3. VOI LUT or Window Center/Width when present (``apply_voi_lut``), whose output range then maps to
   0..255; without a VOI transform 8-bit data is kept as stored and deeper data (12/16-bit, or
   rescaled values) is stretched from its own min..max to 0..255;
4. MONOCHROME1 (white = low values) is inverted so that every output is MONOCHROME2-like;
   colour images (RGB/YBR) are converted to luminance.

Privacy: ``DicomImage`` carries pixels, sex, age, view, modality and body part. The raw PatientID is
exposed only as ``patient_id`` (curation pseudonymizes it to group a patient's films) and must never be
written or logged. Error messages raised from here never quote header values; a refusal names the
body part alone (``body_part_refusal``: it identifies no one).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
import warnings
from typing import Iterator, Optional

import numpy as np
import pydicom
from pydicom import uid as dicom_uid
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

UNKNOWN = "unknown"  # mirrors features.UNKNOWN (this module stays TensorFlow-free for worker processes)
UNKNOWN_AGE = -1
OLDEST_REPORTED_AGE = 90  # HIPAA Safe Harbor: ages over 89 identify; they are all recorded as 90 ("90 or older")
LATERAL = "lateral"
# DICOM (0018,5101) View Position -> record view. Lateral / oblique views are reported so curation can reject them.
_VIEWS = {"PA": "PA", "AP": "AP", "LL": LATERAL, "RL": LATERAL, "LATERAL": LATERAL, "LAT": LATERAL, "L": LATERAL,
          "LLD": LATERAL, "RLD": LATERAL, "LPO": "oblique", "RPO": "oblique", "LAO": "oblique", "RAO": "oblique"}
# Refused by name: an unknown or absent Modality is let through (exports and secondary captures of chest
# films often say OT, SC or nothing), so the list names what is surely no chest radiograph: cross-sectional
# and nuclear imaging, fluoroscopy and angiography, mammography, endoscopy, ophthalmology, photographs,
# microscopy, intravascular imaging and scanned documents.
NON_RADIOGRAPH_MODALITIES = frozenset({"CT", "MR", "US", "NM", "PT", "XA", "RF", "MG", "ES", "OP", "SR", "RTIMAGE",
                                       "XC", "GM", "SM", "OPT", "OCT", "IVUS", "IVOCT", "BDUS", "DOC"})
# A BodyPartExamined value containing one of these names the chest: CHEST (DICOM's term), THORAX (some
# vendors'), LUNG; "PORT CHEST" (a portable film) too.
CHEST_WORDS = ("CHEST", "THORAX", "LUNG")
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")  # DICOM's CS value representation (PS3.5 6.2)


MAX_PIXELS = 20_000 * 20_000  # larger pictures are refused before decoding (decompression bombs)


class DicomError(Exception):
    """A DICOM file that cannot be turned into a radiograph (message is safe to log: no header values)."""


@dataclasses.dataclass(frozen=True)
class DicomImage:
    pixels: np.ndarray  # uint8 [H, W], MONOCHROME2 (dark = low)
    sex: str  # "M", "F" or "unknown"
    age: int  # whole years, -1 when unknown
    view: str  # "PA", "AP", "lateral", "oblique" or "unknown"
    modality: str  # e.g. "CR", "DX"; "" when absent
    # The raw PatientID ("" when absent), for pseudonymization only: never write, log or put it in
    # an exception message.
    patient_id: str = dataclasses.field(default="", repr=False)
    # BurnedInAnnotation YES: the modality says the pixels carry text that may identify the patient.
    burned_in_annotation: bool = False
    body_part: str = ""  # BodyPartExamined, trimmed and upper-cased; "" when absent


def is_dicom(path: str) -> bool:
    """True for files with the DICM magic (or a .dcm/.dicom extension)."""
    if path.lower().endswith((".dcm", ".dicom")):
        return True
    if not os.path.isfile(path):  # a named pipe or device: opening it may block forever
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def safe_ref(ref: str, token: str, keep: int = 1, extensions=(".dcm", ".dicom")) -> str:
    """A file's "/"-separated relative path as it may be written: its first ``keep`` folders (down to
    the class folder), then ``token`` (a pseudonym) and its extension when one of ``extensions``. Every
    other folder and file name goes: hospitals name them by patient id, name, accession number, UID
    and date."""
    folders = ref.split("/")[:-1][:keep]
    ext = os.path.splitext(ref)[1]
    ext = ext if ext.lower() in extensions else ""
    return "/".join([*folders, token + ext])


def parse_age(value) -> int:
    """DICOM Age String ('058Y', '006M', '003W', '010D') or a bare number ('58', RSNA) -> years, -1 if unknown."""
    text = str(value or "").strip().upper()
    m = re.fullmatch(r"(\d{1,3})\s*([YMWD]?)", text)
    if not m:
        return UNKNOWN_AGE
    n, unit = int(m.group(1)), m.group(2) or "Y"
    return reportable_age({"Y": n, "M": n // 12, "W": n // 52, "D": n // 365}[unit])


def reportable_age(years: int) -> int:
    """Whole years as recorded: -1 when implausible (over 120), capped at 90 (Safe Harbor)."""
    return min(years, OLDEST_REPORTED_AGE) if 0 <= years <= 120 else UNKNOWN_AGE


def parse_sex(value) -> str:
    text = str(value or "").strip().upper()
    return text if text in ("M", "F") else UNKNOWN


def parse_view(value) -> str:
    return _VIEWS.get(str(value or "").strip().upper(), UNKNOWN)


def body_part_refusal(body_part) -> Optional[str]:
    """Why a DICOM whose BodyPartExamined (0018,0015) is ``body_part`` is no chest film, or None.

    An absent or empty tag passes (many real chest films lack it), as does a value naming the chest
    (case and padding aside: CHEST, Thorax, PORT CHEST, LUNG); any other is refused. The value is
    quoted only when it is a valid code string: the field is free text in a broken file."""
    value = str(body_part or "").strip().upper()
    if not value or any(word in value for word in CHEST_WORDS):
        return None
    named = value if _CODE_STRING.fullmatch(value) else "(not a DICOM code string)"
    return f"not a chest film: DICOM BodyPartExamined {named}"


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silences pydicom's validation warnings and log lines while reading: they quote header values
    (e.g. "Invalid value for VR PN: '<name>'"), which must not reach the console or logs.

    Safe when several threads read at once: the first to enter silences, the last to leave restores.
    (Each saving and restoring on its own, a thread leaving first would make the others loud again.)"""
    global _quiet_readers, _loud_state
    with _quiet_lock:
        if not _quiet_readers:
            _loud_state = _silence_pydicom()
        _quiet_readers += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_readers -= 1
            if not _quiet_readers:
                _loud_state()


_quiet_lock = threading.Lock()
_quiet_readers = 0  # threads inside quiet_pydicom
_loud_state = None  # restores what the first of them silenced


def _silence_pydicom():
    """Silences pydicom's loggers and every warning; returns the function that undoes it."""
    logger = logging.getLogger("pydicom")
    propagate, level = logger.propagate, logger.level
    # A disabled logger drops only its own records: pydicom's children (pydicom.pixels.*, which log
    # header values and decoder tracebacks) would still reach its handlers (config.debug adds one)
    # and, propagating, the root's. One made while reading inherits the level set here; one there now
    # may have a level set by hand, so those are disabled too.
    loggers = [logger] + [child for name, child in list(logging.Logger.manager.loggerDict.items())
                          if name.startswith("pydicom.") and isinstance(child, logging.Logger)]
    disabled = [each.disabled for each in loggers]
    for each in loggers:
        each.disabled = True
    logger.propagate = False
    logger.setLevel(logging.CRITICAL + 1)
    # What warnings.catch_warnings does, but entered and left once for all reading threads.
    ignoring = warnings.catch_warnings()
    ignoring.__enter__()
    warnings.simplefilter("ignore")

    def restore():
        ignoring.__exit__(None, None, None)
        for each, was in zip(loggers, disabled):
            each.disabled = was
        logger.propagate = propagate
        logger.setLevel(level)
    return restore


PERMISSION_DENIED = "cannot read the file (permission denied)"  # also images.read_gray's, for any file
UNKNOWN_SYNTAX = "unknown transfer syntax"


def read_dicom(path: str) -> DicomImage:
    """Reads one DICOM radiograph. Raises DicomError (with a header-free message) when it cannot."""
    with quiet_pydicom():
        return _read_dicom(path)


def _read_dicom(path: str) -> DicomImage:
    forced = False
    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        try:
            ds, forced = pydicom.dcmread(path, force=True), True  # files without the DICM preamble exist
        except Exception as e:  # noqa: BLE001 - any parse failure is "not DICOM"
            raise DicomError(f"not a DICOM file ({type(e).__name__})") from None
    except PermissionError:
        raise DicomError(PERMISSION_DENIED) from None
    except Exception as e:  # noqa: BLE001
        raise DicomError(f"cannot parse DICOM ({type(e).__name__})") from None
    if "PixelData" not in ds:
        # A forced read parses any bytes into a few bogus elements: without the preamble and pixels,
        # it was no DICOM file (or one cut short).
        raise DicomError("not a DICOM file, or one cut short (no preamble, no pixel data)" if forced
                         else "DICOM has no pixel data (a header-only file, or one cut short)")
    if forced:
        _assume_transfer_syntax(ds)
    try:
        # A value of the wrong length or type raises while pydicom converts it, with the raw bytes
        # in its message: only the exception's type may travel on.
        patient_id = str(ds.get("PatientID", "") or "").strip()
        modality = str(ds.get("Modality", "") or "").strip().upper()
        sex, age, view = parse_sex(ds.get("PatientSex")), parse_age(ds.get("PatientAge")), parse_view(ds.get("ViewPosition"))
        burned_in = str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"
        body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    except Exception as e:  # noqa: BLE001
        raise DicomError(f"unreadable DICOM header ({type(e).__name__})") from None
    try:
        pixels = to_uint8(ds)
    except DicomError:
        raise
    except Exception as e:  # noqa: BLE001 - decoder errors: report the transfer syntax, not the header
        name, compressed = _transfer_syntax(ds)
        hint = "; corrupt data, or it needs a decoder plugin such as pylibjpeg or GDCM" \
            if compressed and isinstance(e, (RuntimeError, NotImplementedError)) else ""
        if name != UNKNOWN_SYNTAX and not compressed:  # native pixel data: its length is known
            hint = _short_pixel_data(ds) or hint
        raise DicomError(f"cannot decode pixel data ({name}; {type(e).__name__}{hint})") from None
    return DicomImage(pixels=pixels, sex=sex, age=age, view=view, modality=modality, patient_id=patient_id,
                      burned_in_annotation=burned_in, body_part=body_part)


def _short_pixel_data(ds) -> str:
    """"; pixel data cut short (N of M bytes)" when an uncompressed image holds fewer pixel bytes
    than its size needs (a file cut short in transfer), else ""."""
    try:
        if ds["PixelData"].is_undefined_length:  # encapsulated (compressed) fragments
            return ""
        bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * \
            int(ds.BitsAllocated) * int(ds.get("NumberOfFrames", 1) or 1)
        needed, held = (bits + 7) // 8, len(ds.PixelData)
    except Exception:  # noqa: BLE001 - a broken size field: no hint rather than a wrong one
        return ""
    return f"; pixel data cut short ({held} of {needed} bytes)" if held < needed else ""


def _transfer_syntax(ds) -> tuple[str, bool]:
    """(name, compressed) of the data set's transfer syntax; named only when it is a standard one:
    the field is free text in a broken file."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        if syntax is not None and syntax.is_transfer_syntax:
            return syntax.name, syntax.is_compressed
    except (ValueError, AttributeError):
        pass
    return UNKNOWN_SYNTAX, False


def _assume_transfer_syntax(ds) -> None:
    """A file without the DICM preamble has no file meta, so no transfer syntax: take the one the
    forced read found the data set encoded in (in practice implicit VR little endian)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(ds, "is_implicit_VR", True), getattr(ds, "is_little_endian", True)
        meta.TransferSyntaxUID = (dicom_uid.ImplicitVRLittleEndian if implicit else
                                  dicom_uid.ExplicitVRLittleEndian if little else dicom_uid.ExplicitVRBigEndian)



_PHOTOMETRIC_TERMS = {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL",
                      "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB"}


def to_uint8(ds) -> np.ndarray:
    """The display-ready 8-bit grayscale picture of a (single-frame) DICOM dataset."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomError("multi-frame DICOM is not a radiograph")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * columns > MAX_PIXELS:
        raise DicomError(f"image too large ({columns} x {rows} pixels)")
    arr = ds.pixel_array  # pydicom converts YBR to RGB for colour data
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim == 3 and arr.shape[-1] == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
            rgb = arr.astype(np.float64)
            gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
            return _stretch(gray, 0.0, 255.0) if arr.dtype == np.uint8 else _stretch(gray, gray.min(), gray.max())
        # Named only when it is one of the standard's terms: the field is free text in a broken file.
        named = photometric if photometric in _PHOTOMETRIC_TERMS else "(not a standard term)"
        raise DicomError(f"unsupported photometric interpretation {named}")
    if arr.ndim != 2:
        raise DicomError(f"unexpected pixel array shape {arr.shape}")

    bits = int(ds.get("BitsStored", 8) or 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    has_modality = bool(ds.get("ModalityLUTSequence")) or ("RescaleSlope" in ds and "RescaleIntercept" in ds)
    values = apply_modality_lut(arr, ds) if has_modality else arr

    try:
        values, lo, hi = _apply_voi(values, ds)
    except (ValueError, NotImplementedError, IndexError, TypeError, AttributeError):
        lo = hi = None  # a malformed VOI module: fall back to the data's own range
    if lo is None:
        if bits <= 8 and not signed and not has_modality:
            lo, hi = 0.0, 255.0
        else:
            lo, hi = float(np.min(values)), float(np.max(values))
    out8 = _stretch(values, lo, hi)
    if photometric == "MONOCHROME1":
        out8 = 255 - out8
    return out8


def _apply_voi(values: np.ndarray, ds):
    """(values, lo, hi) after the VOI LUT or windowing, lo/hi being its output range; (values, None, None)
    when the dataset has no VOI transform."""
    if ds.get("VOILUTSequence") and ds.VOILUTSequence[0].get("LUTData") is not None:
        if not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values).astype(np.int64)
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        # Output range = the LUT's own range: map every input the LUT defines.
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        domain = np.arange(int(descriptor[1]), int(descriptor[1]) + (int(descriptor[0]) or 2**16), dtype=np.int64)
        table = apply_voi_lut(domain, ds, index=0, prefer_lut=True)
        return out, float(table.min()), float(table.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        out = apply_voi_lut(values, ds, index=0, prefer_lut=False)
        # The windowing output range depends on bits/rescale (PS3.3 C.11.2.1.2): probe it.
        lo, hi = (float(v) for v in apply_voi_lut(np.array([-1e12, 1e12]), ds, index=0, prefer_lut=False))
        return out, lo, hi
    return values, None, None


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
