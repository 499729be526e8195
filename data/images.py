"""Image decoding and normalisation for curation: any input -> bounded 8-bit grayscale PNG.

Steps (``process``), in order:
1. ``read_gray``: DICOM through ``covid_cxr.data.dicom`` (MONOCHROME1, VOI LUT/windowing, rescale,
   bit depth, compressed syntaxes), everything else through Pillow (EXIF orientation applied;
   RGB/RGBA/palette -> luminance; 16-bit and float images stretched from their min..max to 0..255; a
   min-is-white TIFF inverted at every bit depth, as a MONOCHROME1 DICOM is).
2. ``crop_borders`` (on by default): crop black/white/uniform borders and bars to the radiograph's
   content. Rows/columns count as content when enough of their pixels are neither border-dark,
   border-bright nor the frame's uniform colour; the longest run of content (small gaps bridged)
   wins, so burnt-in text labels and thin bars outside the film are cut off with the border. A box
   smaller than ``MIN_CROP_FRACTION`` of either side (a "sliver") is refused: no crop, with a note.
3. ``perceptual_hash`` of the cropped image (before resizing and equalization, so duplicates are
   found whatever the settings): a 256-bit DCT pHash (see ``covid_cxr.data.dedupe`` for why 256
   and not 64 bits).
4. ``resize_max_side`` (area interpolation, never upscales) and optional ``equalize``
   (``clahe``: OpenCV CLAHE clip 2.0 on an 8x8 grid; ``hist``: global histogram equalization).
5. ``encode_png``: deterministic 8-bit grayscale PNG (no metadata).

This module (and ``dicom``) import no TensorFlow, so worker processes start quickly.
"""
from __future__ import annotations

import dataclasses
import io
import os
import stat
import warnings
from typing import Optional

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from covid_cxr.data import dicom

EQUALIZE_MODES = ("none", "clahe", "hist")
DEFAULT_MAX_SIDE = 512
MIN_CROP_FRACTION = 0.35  # a crop keeping less than this of the height or width is a sliver: refused
MIN_SIDE = 32  # smaller inputs are not usable radiographs
MAX_SIDE = 8192  # the largest --max-side curation stores, so the largest predict and evaluate can repeat
# What curation, `predict` and `evaluate` read from a folder; any file with the DICM magic is DICOM too.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".gif", ".webp"})
_DARK = 12  # <= this is border black (8-bit)
_BRIGHT = 246  # >= this is border white
_CONTENT_FRACTION = 0.10  # a row/column is content when >= 10% of its pixels are content pixels
_GAP_FRACTION = 0.02  # runs of content separated by gaps up to 2% of the side are one run

MAX_PIXELS = dicom.MAX_PIXELS  # decompression bombs beyond this are rejected, not decoded
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow only warns up to twice its limit: read_gray checks itself


class ImageError(Exception):
    """An input that cannot become a curated image (message is safe to log)."""


# The film's own pixels would carry that text into the records, the model's artifacts, heat maps and errors.png.
BURNED_IN = "burned-in annotation: DICOM BurnedInAnnotation YES (text in the picture may name the patient)"


@dataclasses.dataclass(frozen=True)
class Header:
    """What a DICOM header may contribute (all else stays in the file)."""

    sex: str = dicom.UNKNOWN
    age: int = dicom.UNKNOWN_AGE
    view: str = dicom.UNKNOWN
    modality: str = ""
    patient_id: str = dataclasses.field(default="", repr=False)  # raw PatientID: never written/logged
    burned_in_annotation: bool = False  # DICOM BurnedInAnnotation YES
    body_part: str = ""  # DICOM BodyPartExamined ("" when absent); not identifying, read for refusal() only

    def refusal(self) -> Optional[str]:
        """Why a frontal chest-film model must not take this DICOM (curation, predict and evaluate
        alike), or None: another modality, another body part (``dicom.body_part_refusal``), a lateral /
        oblique view, or text burned into the picture (its pixels would carry it into records, heat
        maps, errors.png and report.html)."""
        if self.modality in dicom.NON_RADIOGRAPH_MODALITIES:
            return f"not an X-ray: {self.modality}"
        not_chest = dicom.body_part_refusal(self.body_part)
        if not_chest:
            return not_chest
        if self.view in (dicom.LATERAL, "oblique"):
            return f"{self.view} view: DICOM ViewPosition"
        if self.burned_in_annotation:
            return BURNED_IN
        return None


@dataclasses.dataclass(frozen=True)
class Processed:
    png: bytes
    phash: bytes  # HASH_BYTES-byte DCT perceptual hash of the cropped image
    width: int
    height: int
    cropped: bool
    note: str  # e.g. "crop refused: content box 20% x 90% of the image"
    header: Optional[Header]  # DICOM inputs only


def is_image_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS or dicom.is_dicom(path)


def not_regular(path: str) -> Optional[str]:
    """Why ``path`` is no regular file to read (a rejection reason), or None. Checked without opening
    it: opening a named pipe waits for a writer forever, a device may never end."""
    try:
        mode = os.stat(path).st_mode  # follows a symbolic link to its target
    except OSError as e:
        if not os.path.islink(path):
            return None  # gone, or not for us to stat: the reader says why
        return "broken symbolic link: " + ("its target does not exist" if isinstance(e, FileNotFoundError)
                                           else (e.strerror or type(e).__name__).lower())
    if stat.S_ISREG(mode):
        return None
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a folder" if stat.S_ISDIR(mode) else "a special file")
    return f"not a regular file: {kind}"


def public_ref(ref: str, token: str, keep: int = 1) -> str:
    """A file's relative path as it may be written when its names may identify a patient: its first
    ``keep`` folders (down to the class folder), then ``token`` and the extension when an image one."""
    return dicom.safe_ref(ref, token, keep=keep, extensions=IMAGE_EXTENSIONS)


def is_utf8(name: str) -> bool:
    """False for a path the file system gave with bytes that are not UTF-8 (surrogate escapes):
    it cannot be written to a CSV, JSON or HTML file as it is."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_gray(path: str) -> tuple[np.ndarray, Optional[Header]]:
    """Any supported file -> (uint8 [H, W] grayscale, DICOM header fields or None)."""
    irregular = not_regular(path)
    if irregular:  # never opened: a named pipe would hang the run
        raise ImageError(irregular)
    if dicom.is_dicom(path):
        try:
            d = dicom.read_dicom(path)
        except dicom.DicomError as e:
            raise ImageError(str(e)) from None
        return d.pixels, Header(d.sex, d.age, d.view, d.modality, d.patient_id, d.burned_in_annotation, d.body_part)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"image too large ({im.width} x {im.height} pixels)")
                frames = getattr(im, "n_frames", 1)
                # As a multi-frame DICOM: which page would be the film? (An MPO JPEG's second frame
                # is the camera's preview of the first.)
                if frames > 1 and im.format != "MPO":
                    raise ImageError(f"multi-page image ({frames} pages) is not a radiograph")
                im.load()
                # A min-is-white TIFF (PhotometricInterpretation 0, TIFF's MONOCHROME1): Pillow inverts one of
                # up to 8 bits ("1", "L") itself, but hands a 16-bit or float one over as stored.
                white_is_zero = im.format == "TIFF" and im.mode not in ("1", "L") and im.tag_v2.get(262) == 0
                gray = _pil_to_gray(ImageOps.exif_transpose(im))
                return (255 - gray if white_is_zero else gray), None
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError("image too large") from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError(dicom.PERMISSION_DENIED) from None
    except UnidentifiedImageError:
        raise ImageError("cannot decode image (empty file)" if _is_empty(path)
                         else "cannot decode image (not a format Pillow knows, or a damaged header)") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
        hint = "; truncated or corrupt" if isinstance(e, (OSError, SyntaxError, ValueError)) else ""
        raise ImageError(f"cannot decode image ({type(e).__name__}{hint})") from None


def _is_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


def _pil_to_gray(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        if values.ndim != 2:
            raise ImageError(f"unsupported image mode {mode}")
        if not np.isfinite(values).all():  # a float image: NaN or infinity has no grey level
            raise ImageError("pixel values that are not finite numbers (NaN or infinity)")
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            return np.zeros(values.shape, dtype=np.uint8)
        return np.clip(np.rint((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    if mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8).copy()


def content_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive, of the radiograph inside borders and bars."""
    frame = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]).astype(np.int16)
    values, counts = np.unique(frame, return_counts=True)
    border = (gray <= _DARK) | (gray >= _BRIGHT)
    mode = int(values[np.argmax(counts)])
    # A uniform (e.g. grey) frame: the same level around most of the edge.
    if np.sum(np.abs(frame - mode) <= 2) >= 0.6 * frame.size:
        border |= np.abs(gray.astype(np.int16) - mode) <= 2
    content = ~border
    top, bottom = _longest_run(content.mean(axis=1) >= _CONTENT_FRACTION, gray.shape[0])
    left, right = _longest_run(content[top:bottom].mean(axis=0) >= _CONTENT_FRACTION, gray.shape[1])
    return top, bottom, left, right


def _longest_run(flags: np.ndarray, n: int) -> tuple[int, int]:
    gap = max(1, int(round(n * _GAP_FRACTION)))
    idx = np.flatnonzero(flags)
    if idx.size == 0:
        return 0, n
    breaks = np.flatnonzero(np.diff(idx) > gap + 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]]) + 1
    best = int(np.argmax(ends - starts))  # ties: the first run (deterministic)
    return int(starts[best]), int(ends[best])


def crop_borders(gray: np.ndarray) -> tuple[np.ndarray, bool, str]:
    """(cropped image, whether it was cropped, note). Refuses slivers: returns the input with a note."""
    h, w = gray.shape
    top, bottom, left, right = content_box(gray)
    ch, cw = bottom - top, right - left
    if ch < MIN_CROP_FRACTION * h or cw < MIN_CROP_FRACTION * w or ch < MIN_SIDE or cw < MIN_SIDE:
        return gray, False, f"crop refused: content box {ch / h:.0%} x {cw / w:.0%} of the image"
    if (top, bottom, left, right) == (0, h, 0, w):
        return gray, False, ""
    return gray[top:bottom, left:right], True, ""


def resize_max_side(gray: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is at most max_side (area interpolation); never upscales."""
    h, w = gray.shape
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return gray
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def equalize(gray: np.ndarray, mode: str) -> np.ndarray:
    if mode == "none":
        return gray
    if mode == "clahe":
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)
    if mode == "hist":
        return cv2.equalizeHist(gray)
    raise ValueError(f"unknown equalization {mode!r}; choose one of: {', '.join(EQUALIZE_MODES)}")


def encode_png(gray: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8), mode="L").save(out, format="PNG", compress_level=3)
    return out.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"))


HASH_SIDE = 16  # HASH_SIDE x HASH_SIDE lowest DCT frequencies -> 256 bits
HASH_BYTES = HASH_SIDE * HASH_SIDE // 8


def perceptual_hash(gray: np.ndarray) -> bytes:
    """256-bit DCT pHash: 64x64 area-resize (aspect ignored), 2-D DCT, the 16x16 lowest frequencies
    thresholded at their median. Big-endian bit order; hamming distance compares two hashes."""
    small = cv2.resize(gray.astype(np.float32), (4 * HASH_SIDE, 4 * HASH_SIDE), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:HASH_SIDE, :HASH_SIDE]
    return np.packbits((low > np.median(low)).ravel()).tobytes()


def process(path: str, max_side: int = DEFAULT_MAX_SIDE, crop: bool = True, equalization: str = "none") -> Processed:
    """One input file -> Processed. Raises ImageError for anything that is not a usable image."""
    gray, header = read_gray(path)
    if gray.ndim != 2 or min(gray.shape) < MIN_SIDE:
        raise ImageError(f"image too small ({gray.shape[1]}x{gray.shape[0]})")
    if int(gray.max()) == int(gray.min()):
        raise ImageError("blank image (a single grey level)")
    cropped, did_crop, note = crop_borders(gray) if crop else (gray, False, "")
    phash = perceptual_hash(cropped)
    out = equalize(resize_max_side(cropped, max_side), equalization)
    if min(out.shape) < MIN_SIDE:  # a strip the resize narrowed: the served graph refuses it too
        raise ImageError(f"image too narrow ({cropped.shape[1]}x{cropped.shape[0]} is {out.shape[1]}x{out.shape[0]} "
                         f"at a longest side of {max_side}; fewer than {MIN_SIDE} pixels on a side)")
    return Processed(encode_png(out), phash, out.shape[1], out.shape[0], did_crop, note, header)


def process_job(job: tuple[str, int, bool, str]) -> tuple[Optional[Processed], str]:
    """Worker entry point: (path, max_side, crop, equalization) -> (Processed, "") or (None, reason).

    Never raises: a corrupt or unsupported file becomes a reason (safe to write: no paths, no header
    values). Unexpected errors are reported by type only, as their messages may quote the path.
    """
    path, max_side, crop, equalization = job
    try:
        return process(path, max_side, crop, equalization), ""
    except ImageError as e:
        return None, str(e)
    except MemoryError:
        return None, "image too large (out of memory)"
    except Exception as e:  # noqa: BLE001 - one bad file must not end the run
        return None, f"cannot process image ({type(e).__name__})"
