import builtins
import logging
import logging.handlers
import re
import threading
import warnings

import numpy as np
import pydicom
import pytest

from covid_cxr.data import dicom, testing
from covid_cxr.data.testing import REAL_DATA, REAL_DATA_REASON

SAMPLES = REAL_DATA / "dicom-samples"


class Decoded(dict):
    """A data set whose pixels decoded (as a newer pydicom might), its header fields as items."""

    def __init__(self, pixel_array=None, **header):
        super().__init__(header)
        self.pixel_array = np.zeros((4, 4), np.uint8) if pixel_array is None else pixel_array


def corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, float).ravel(), np.asarray(b, float).ravel())[0, 1])


def test_monochrome2_8bit_is_kept_as_stored(tmp_path):
    img = testing.radiograph(1)
    d = dicom.read_dicom(testing.write_dicom(tmp_path / "a.dcm", img))
    assert d.pixels.dtype == np.uint8
    np.testing.assert_array_equal(d.pixels, img)
    assert (d.sex, d.age, d.view, d.modality) == ("F", 58, "PA", "CR")


def test_monochrome1_is_inverted_to_the_same_picture(tmp_path):
    img = testing.radiograph(2)
    m2 = dicom.read_dicom(testing.write_dicom(tmp_path / "m2.dcm", img)).pixels
    m1 = dicom.read_dicom(testing.write_dicom(tmp_path / "m1.dcm", 255 - img, photometric="MONOCHROME1")).pixels
    np.testing.assert_array_equal(m1, m2)


def test_monochrome1_16bit_with_window_matches_monochrome2(tmp_path):
    img = testing.radiograph(3).astype(np.uint16) * 16  # 12-bit data
    m2 = dicom.read_dicom(testing.write_dicom(tmp_path / "m2.dcm", img, bits_stored=12, window=(2048, 4096))).pixels
    m1 = dicom.read_dicom(testing.write_dicom(tmp_path / "m1.dcm", 4095 - img, bits_stored=12, window=(2048, 4096),
                                              photometric="MONOCHROME1")).pixels
    assert corr(m1, m2) > 0.999
    assert np.abs(m1.astype(int) - m2).max() <= 1


def test_window_maps_window_range_to_full_8bit(tmp_path):
    img = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))
    out = dicom.read_dicom(testing.write_dicom(tmp_path / "w.dcm", img, bits_stored=12, window=(2000, 1000))).pixels
    col = out[0]
    assert col[img[0] < 1400].max() == 0  # below the window: black
    assert col[img[0] > 2600].min() == 255  # above: white
    mid = np.argmin(np.abs(img[0].astype(int) - 2000))
    assert 100 < col[mid] < 155  # centre: mid grey


def test_voi_lut_sequence_is_applied(tmp_path):
    img = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (8, 1))
    lut = np.concatenate([np.zeros(1024), np.linspace(0, 65535, 2048), np.full(1024, 65535)]).astype(int)
    out = dicom.read_dicom(testing.write_dicom(tmp_path / "l.dcm", img, bits_stored=12, voi_lut=lut)).pixels
    row, values = out[0], img[0]
    assert row[values < 1024].max() == 0
    assert row[values >= 3072].min() == 255
    inside = (values >= 1024) & (values < 3072)
    expected = (values[inside] - 1024) / 2047 * 255
    assert np.abs(row[inside] - expected).max() <= 2


def test_a_voi_lut_with_a_first_mapped_value_wins_over_a_window(tmp_path):
    img = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (8, 1))
    lut = np.linspace(0, 65535, 2048).astype(int)  # maps 1024..3071; below and above clamp to its ends
    out = dicom.read_dicom(testing.write_dicom(tmp_path / "l.dcm", img, bits_stored=12, voi_lut=lut, voi_lut_first=1024,
                                               window=(500, 200))).pixels
    row, values = out[0], img[0]
    assert row[values < 1024].max() == 0 and row[values >= 3072].min() == 255
    inside = (values >= 1024) & (values < 3072)
    assert np.abs(row[inside] - (values[inside] - 1024) / 2047 * 255).max() <= 2


def test_signed_8bit_is_stretched_from_its_range_not_clipped_at_zero(tmp_path):
    img = testing.radiograph(3)
    signed = (img.astype(np.int16) - 128).astype(np.int8)
    out = dicom.read_dicom(testing.write_dicom(tmp_path / "s.dcm", signed)).pixels
    assert out.min() == 0 and out.max() == 255
    assert corr(out, img) > 0.999


def test_a_single_level_16bit_dicom_decodes_to_black_and_rgb_to_luminance(tmp_path):
    flat = dicom.read_dicom(testing.write_dicom(tmp_path / "f.dcm", np.full((40, 40), 1000, np.uint16), bits_stored=12))
    assert flat.pixels.shape == (40, 40) and not flat.pixels.any()  # images.process then calls it blank
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0, 0] = rgb[0, 1, 1] = rgb[0, 2, 2] = 255  # pure red, green, blue
    assert dicom.to_uint8(Decoded(rgb, PhotometricInterpretation="RGB")).tolist() == [[76, 150, 29]]


def test_burned_in_annotation_yes_only_and_the_patient_id_without_padding(tmp_path):
    ds = pydicom.dcmread(testing.write_dicom(tmp_path / "a.dcm", testing.radiograph(4), patient_id=" RAW-77 "))
    flags = {}
    for value in ("YES", "NO", None):
        if value is None:
            del ds.BurnedInAnnotation
        else:
            ds.BurnedInAnnotation = value
        ds.save_as(tmp_path / "b.dcm")
        d = dicom.read_dicom(str(tmp_path / "b.dcm"))
        flags[value] = d.burned_in_annotation
    assert flags == {"YES": True, "NO": False, None: False}
    assert d.patient_id == "RAW-77"  # one patient, one pseudonym, however the id was padded


def test_rescale_slope_intercept_before_windowing(tmp_path):
    stored = (np.arange(64 * 64).reshape(64, 64) % 2000).astype(np.int16) - 1000  # -1000..999
    # HU = 2 * stored + 24  -> window centre 24 (HU), width 400: stored -100..100 spans it.
    out = dicom.read_dicom(testing.write_dicom(tmp_path / "r.dcm", stored, rescale=(2.0, 24.0), window=(24, 400),
                                               modality="DX")).pixels
    assert out[stored < -100].max() == 0
    assert out[stored > 100].min() == 255
    assert 110 < out[stored == 0].mean() < 145


def test_12bit_without_voi_is_stretched_to_8bit(tmp_path):
    img = testing.radiograph(4)
    deep = img.astype(np.uint16) * 16 + 7  # 12-bit in a 16-bit container
    out = dicom.read_dicom(testing.write_dicom(tmp_path / "d.dcm", deep, bits_stored=12)).pixels
    assert out.min() == 0 and out.max() == 255
    assert corr(out, img) > 0.999


def test_jpeg_baseline_decodes(tmp_path):
    img = testing.radiograph(5)
    d = dicom.read_dicom(testing.write_dicom(tmp_path / "j.dcm", img, jpeg_baseline=True))
    assert pydicom.dcmread(tmp_path / "j.dcm").file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert corr(d.pixels, img) > 0.99


def test_header_parsing():
    assert [dicom.parse_age(a) for a in ("058Y", "58", "006M", "003W", "010D", "", "abc", "150", None)] == \
        [58, 58, 0, 0, 0, -1, -1, -1, -1]
    # Ages over 89 identify a patient (HIPAA Safe Harbor): all of them are recorded as 90.
    assert [dicom.parse_age(a) for a in ("089Y", "090Y", "097Y", "104", "100Y")] == [89, 90, 90, 90, 90]
    # Months, weeks and days in whole years; 120 is the oldest plausible age; an Age String has 3 digits.
    assert [dicom.parse_age(a) for a in ("030M", "104W", "730D", "000Y", "120Y", "121Y", "1000D")] == \
        [2, 2, 2, 0, 90, -1, -1]
    assert [dicom.parse_sex(s) for s in ("M", "f", "O", "", None)] == ["M", "F", "unknown", "unknown", "unknown"]
    assert [dicom.parse_view(v) for v in ("PA", "ap", "LL", "RL", "", None)] == ["PA", "AP", "lateral", "lateral", "unknown", "unknown"]


def test_the_patient_id_is_exposed_but_not_in_repr(tmp_path):
    d = dicom.read_dicom(testing.write_dicom(tmp_path / "a.dcm", testing.radiograph(6), patient_id="RAW-77"))
    assert d.patient_id == "RAW-77"
    assert "RAW-77" not in repr(d) and "Doe" not in repr(d)


@pytest.mark.parametrize("ref, keep, shown", [
    ("COVID/ACC-123/19770412/1.2.826.0.1.99.dcm", 1, "COVID/tok.dcm"),
    ("site/COVID/DOE_JANE.DICOM", 2, "site/COVID/tok.DICOM"),
    ("COVID/SECRET-7", 1, "COVID/tok"),  # no extension: none added
    ("COVID/JANE.DOE", 1, "COVID/tok"),  # what follows a dot in a name is not an extension to keep
    ("SECRET-7.dcm", 1, "tok.dcm"),
    ("DOE_JANE/x.dcm", 0, "tok.dcm"),  # not in a class folder: no folder kept
])
def test_safe_ref_keeps_the_class_folder_and_extension_only(ref, keep, shown):
    assert dicom.safe_ref(ref, "tok", keep=keep) == shown


def test_errors_carry_no_header_values(tmp_path):
    path = testing.write_dicom(tmp_path / "a.dcm", testing.radiograph(7), patient_id="RAW-88")
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:100]  # truncated pixel data
    ds.save_as(tmp_path / "bad.dcm")
    with pytest.raises(dicom.DicomError) as e:
        dicom.read_dicom(str(tmp_path / "bad.dcm"))
    for secret in ("RAW-88", "Doe", "Johanna", testing.SECRET_INSTITUTION, str(tmp_path)):
        assert secret not in str(e.value)
    assert str(e.value).endswith(f"; pixel data cut short (100 of {ds.Rows * ds.Columns} bytes))"), str(e.value)
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom at all" * 10)
    with pytest.raises(dicom.DicomError):
        dicom.read_dicom(str(tmp_path / "junk.dcm"))


def test_multiframe_is_rejected(tmp_path):
    path = testing.write_dicom(tmp_path / "a.dcm", testing.radiograph(8))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.Rows = ds.Rows // 2
    ds.save_as(tmp_path / "mf.dcm")
    with pytest.raises(dicom.DicomError, match="multi-frame"):
        dicom.read_dicom(str(tmp_path / "mf.dcm"))


def test_a_text_file_named_dcm_is_not_a_dicom_file_and_a_header_only_one_has_no_pixels(tmp_path):
    (tmp_path / "notes.dcm").write_text("patient notes, not an image\n" * 20)
    with pytest.raises(dicom.DicomError, match=r"^not a DICOM file, or one cut short"):
        dicom.read_dicom(str(tmp_path / "notes.dcm"))
    ds = pydicom.dcmread(testing.write_dicom(tmp_path / "a.dcm", testing.radiograph(8)))
    del ds.PixelData
    ds.save_as(tmp_path / "header-only.dcm")
    with pytest.raises(dicom.DicomError, match=r"^DICOM has no pixel data \(a header-only file, or one cut short\)$"):
        dicom.read_dicom(str(tmp_path / "header-only.dcm"))


realdata = pytest.mark.skipif(not REAL_DATA.is_dir(), reason=REAL_DATA_REASON)


@pytest.mark.realdata
@realdata
def test_real_siim_samples_jpeg_baseline_and_monochrome1(tmp_path):
    baseline_path = SAMPLES / "siim-cr-chest-pa-jpeg-baseline.dcm"
    m1_path = SAMPLES / "siim-cr-chest-pa-monochrome1.dcm"
    baseline = dicom.read_dicom(str(baseline_path))
    assert baseline.pixels.shape == (1024, 1024)
    assert (baseline.sex, baseline.age, baseline.view) == ("M", 62, "PA")
    assert 60 < baseline.pixels.mean() < 200 and baseline.pixels.std() > 30

    # The shared "MONOCHROME1 copy" (torchxrayvision's Fake_MONOHR1.dcm) stores the SAME pixel bytes
    # as the baseline and only flips the header to MONOCHROME1. DICOM says MONOCHROME1 means
    # "low = white", so a correct reader must show it inverted: exactly 255 - baseline.
    raw_m1 = pydicom.dcmread(m1_path)
    assert raw_m1.PhotometricInterpretation == "MONOCHROME1"
    assert raw_m1.PixelData == pydicom.dcmread(baseline_path).PixelData
    m1 = dicom.read_dicom(str(m1_path)).pixels
    np.testing.assert_array_equal(m1, 255 - baseline.pixels)

    # A genuine MONOCHROME1 encoding of the same real picture (grey levels inverted on disk) must
    # read back as the same picture as the JPEG Baseline file.
    genuine = testing.write_dicom(tmp_path / "m1.dcm", 255 - baseline.pixels, photometric="MONOCHROME1")
    assert corr(dicom.read_dicom(genuine).pixels, baseline.pixels) > 0.99


@pytest.mark.realdata
@realdata
def test_real_nih_samples_decode():
    paths = sorted(SAMPLES.glob("nih-dx-*.dcm"))
    assert len(paths) == 2, paths  # ../shared/data/dicom-samples holds two NIH files
    for path in paths:
        d = dicom.read_dicom(str(path))
        assert d.pixels.dtype == np.uint8 and d.pixels.std() > 10
        assert d.view in ("PA", "AP", "unknown")


def test_malformed_window_falls_back_to_the_data_range(tmp_path):
    img = testing.radiograph(9).astype(np.uint16) * 16
    path = testing.write_dicom(tmp_path / "w.dcm", img, bits_stored=12, window=(2048, 0))  # width 0 is invalid
    out = dicom.read_dicom(path).pixels
    assert out.min() == 0 and out.max() == 255 and corr(out, img) > 0.999


def test_unsupported_compression_is_a_clear_error(tmp_path):
    path = testing.write_dicom(tmp_path / "j.dcm", testing.radiograph(10), jpeg_baseline=True)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1  # no decoder installed for it
    ds.save_as(tmp_path / "lossless.dcm")
    with pytest.raises(dicom.DicomError, match="JPEG Lossless.*(pylibjpeg|GDCM)"):
        dicom.read_dicom(str(tmp_path / "lossless.dcm"))


def test_a_header_value_pydicom_cannot_convert_is_a_rejection_that_does_not_quote_it(tmp_path):
    path = testing.write_dicom(tmp_path / "a.dcm", testing.radiograph(11), patient_id="RAW-PID-123")
    raw = open(path, "rb").read()
    patient_id_element = b"\x10\x00\x20\x00LO"  # (0010,0020) in explicit VR little endian
    assert raw.count(patient_id_element) == 1
    # FD wants 8-byte values: converting the 12-byte id raises with the raw bytes in pydicom's message.
    (tmp_path / "bad-vr.dcm").write_bytes(raw.replace(patient_id_element, b"\x10\x00\x20\x00FD"))
    with pytest.raises(dicom.DicomError, match=r"^unreadable DICOM header \(\w+\)$") as e:
        dicom.read_dicom(str(tmp_path / "bad-vr.dcm"))
    assert "RAW-PID" not in str(e.value)


def test_a_file_without_preamble_or_file_meta_is_decoded(tmp_path):
    picture = testing.radiograph(12)
    ds = pydicom.dcmread(testing.write_dicom(tmp_path / "a.dcm", picture))
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(tmp_path / "bare.dcm", ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert open(tmp_path / "bare.dcm", "rb").read(132)[128:] != b"DICM"
    out = dicom.read_dicom(str(tmp_path / "bare.dcm"))
    assert out.view == "PA" and corr(out.pixels, picture) > 0.999


def test_a_non_standard_photometric_value_is_not_quoted(tmp_path):
    ds = pydicom.dcmread(testing.write_dicom(tmp_path / "a.dcm", testing.radiograph(13)))
    ds.PhotometricInterpretation = "DOE_JANE"
    ds.save_as(tmp_path / "odd.dcm")
    with pytest.raises(dicom.DicomError) as e:  # pydicom's decoder refuses it first
        dicom.read_dicom(str(tmp_path / "odd.dcm"))
    assert "DOE_JANE" not in str(e.value)

    with pytest.raises(dicom.DicomError, match=r"^unsupported photometric interpretation \(not a standard term\)$"):
        dicom.to_uint8(Decoded(PhotometricInterpretation="DOE_JANE"))
    with pytest.raises(dicom.DicomError, match=r"^unsupported photometric interpretation PALETTE COLOR$"):
        dicom.to_uint8(Decoded(PhotometricInterpretation="PALETTE COLOR"))


def test_pydicoms_child_loggers_are_quiet_while_reading(caplog):
    child = logging.getLogger("pydicom.pixels.decoders.base")  # logs header values and decoder tracebacks
    parent = logging.getLogger("pydicom")
    own = logging.handlers.BufferingHandler(100)  # where pydicom.config.debug(True) sends them
    parent.addHandler(own)
    level = parent.level
    try:
        with caplog.at_level(logging.DEBUG):
            parent.setLevel(logging.DEBUG)
            with dicom.quiet_pydicom():
                child.error("photometric_interpretation: DOE_JANE")
            assert "DOE_JANE" not in caplog.text and not own.buffer
            child.error("after reading")  # level and propagation are restored afterwards
        assert "after reading" in caplog.text and len(own.buffer) == 1
        assert parent.level == logging.DEBUG
    finally:
        parent.removeHandler(own)
        parent.setLevel(level)


def test_a_transfer_syntax_that_is_none_is_not_quoted(tmp_path):
    ds = pydicom.dcmread(testing.write_dicom(tmp_path / "a.dcm", testing.radiograph(14)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.99999.4242"  # not a transfer syntax
    ds.save_as(tmp_path / "odd.dcm", enforce_file_format=False)
    with pytest.raises(dicom.DicomError) as e:
        dicom.read_dicom(str(tmp_path / "odd.dcm"))
    assert str(e.value).startswith("cannot decode pixel data (unknown transfer syntax; ")
    assert e.value.__suppress_context__  # pydicom's own message, which quotes the value, is not printed with it
    ds.PixelData = ds.PixelData[:100]  # without a known syntax the data may be compressed: no byte count
    ds.save_as(tmp_path / "odd-short.dcm", enforce_file_format=False)
    with pytest.raises(dicom.DicomError) as e:
        dicom.read_dicom(str(tmp_path / "odd-short.dcm"))
    assert "cut short" not in str(e.value)


def test_the_cut_short_hint_counts_native_pixel_bytes_only(tmp_path):
    ds = pydicom.dcmread(testing.write_dicom(tmp_path / "a.dcm", testing.radiograph(7)))
    assert dicom._short_pixel_data(ds) == ""  # whole
    ds.PixelData = ds.PixelData[:100]
    assert dicom._short_pixel_data(ds) == f"; pixel data cut short (100 of {ds.Rows * ds.Columns} bytes)"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0  # 1 bit per pixel: an eighth of the bytes
    ds.PixelData = bytes((ds.Rows * ds.Columns + 7) // 8)
    assert dicom._short_pixel_data(ds) == ""
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 a small JPEG \xff\xd9"])  # compressed fragments
    ds["PixelData"].is_undefined_length = True
    assert dicom._short_pixel_data(ds) == ""


def test_reading_silences_pydicoms_warnings_and_logs_and_names_a_file_it_may_not_read(tmp_path, monkeypatch, caplog,
                                                                                       recwarn):
    path = testing.write_dicom(tmp_path / "a.dcm", testing.radiograph(15))
    dcmread = pydicom.dcmread

    def chatty_dcmread(*args, **kwargs):  # as pydicom warns and logs about a value it validates
        warnings.warn("Invalid value for VR PN: 'DOE^JANE'")
        logging.getLogger("pydicom").warning("Invalid value for VR PN: 'DOE^JANE'")
        return dcmread(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", chatty_dcmread)
    with caplog.at_level(logging.DEBUG):
        assert dicom.read_dicom(path).pixels.shape == testing.radiograph(15).shape
    assert "DOE" not in caplog.text and not [w for w in recwarn if "DOE" in str(w.message)]

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(pydicom, "dcmread", refused)
    with pytest.raises(dicom.DicomError, match=rf"^{re.escape(dicom.PERMISSION_DENIED)}$"):
        dicom.read_dicom(path)


def test_a_child_logger_given_its_own_level_stays_off_the_root_log_and_pydicoms_handlers_while_reading(caplog):
    child = logging.getLogger("pydicom.pixels.utils")
    parent = logging.getLogger("pydicom")
    own = logging.handlers.BufferingHandler(100)  # where pydicom.config.debug(True) sends them
    parent.addHandler(own)
    level = child.level
    child.setLevel(logging.DEBUG)  # configured by hand: it no longer inherits pydicom's silenced level
    try:
        with caplog.at_level(logging.DEBUG), dicom.quiet_pydicom():
            child.error("patient_name: DOE_JANE")
        assert "DOE_JANE" not in caplog.text and not own.buffer
        child.error("after reading")  # pydicom's handlers get its records again afterwards
        assert [r.getMessage() for r in own.buffer] == ["after reading"]
    finally:
        parent.removeHandler(own)
        child.setLevel(level)


def test_too_large_a_picture_is_refused_before_it_is_decoded_and_the_largest_allowed_is_not():
    side = int(dicom.MAX_PIXELS ** 0.5)
    with pytest.raises(dicom.DicomError, match=rf"^image too large \({side + 1} x {side} pixels\)$"):
        dicom.to_uint8(Decoded(Rows=side, Columns=side + 1))
    assert dicom.to_uint8(Decoded(Rows=side, Columns=side)).shape == (4, 4)


def test_a_named_pipe_is_never_opened_to_look_for_the_dicom_magic(tmp_path, monkeypatch):
    with testing.fifo(tmp_path / "pipe") as pipe:
        monkeypatch.setattr(builtins, "open", lambda *a, **k: pytest.fail("opened a named pipe"))
        assert not dicom.is_dicom(pipe)
        monkeypatch.undo()


def test_a_reader_leaving_first_leaves_the_others_quiet_and_the_last_restores(caplog, recwarn):
    # Two threads read at once; the first finishes while the second is still reading.
    entered, first_left, second_may_leave = threading.Event(), threading.Event(), threading.Event()
    heard = []

    def first():
        with dicom.quiet_pydicom():
            entered.wait()
        first_left.set()

    def second():
        with dicom.quiet_pydicom():
            entered.set()
            first_left.wait()
            logging.getLogger("pydicom").error("patient_name: DOE_JANE")
            warnings.warn("Invalid value for VR PN: 'DOE^JANE'")
            heard.append(logging.getLogger("pydicom").disabled)
            second_may_leave.wait()

    with caplog.at_level(logging.DEBUG):
        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        first_left.wait(10)
        second_may_leave.set()
        for thread in threads:
            thread.join(10)
        assert heard == [True] and "DOE" not in caplog.text and not [w for w in recwarn if "DOE" in str(w.message)]
        logging.getLogger("pydicom").error("after reading")  # the last to leave restored it
        warnings.warn("after reading too")
    assert "after reading" in caplog.text and [str(w.message) for w in recwarn] == ["after reading too"]
    assert dicom._quiet_readers == 0


@pytest.mark.parametrize("failures, message", [
    # pydicom's own errors may quote header values (a name, an id): only their type may travel on.
    ([ValueError(f"bad value for PatientName: {testing.SECRET_NAME}")], "cannot parse DICOM (ValueError)"),
    ([pydicom.errors.InvalidDicomError("no preamble"), ValueError(f"bad PatientID RAW-99 {testing.SECRET_NAME}")],
     "not a DICOM file (ValueError)"),
])
def test_a_file_pydicom_cannot_parse_is_a_one_line_error_that_quotes_no_header_value(tmp_path, monkeypatch, failures,
                                                                                     message):
    raised = iter(failures)

    def dcmread(path, **kwargs):
        raise next(raised)

    monkeypatch.setattr(dicom.pydicom, "dcmread", dcmread)
    with pytest.raises(dicom.DicomError) as e:
        dicom.read_dicom(str(tmp_path / "a.dcm"))
    assert str(e.value) == message
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no chained traceback quoting the value


def test_a_monochrome_picture_with_colour_samples_is_refused_not_stretched():
    with pytest.raises(dicom.DicomError, match=r"^unexpected pixel array shape \(4, 4, 3\)$"):
        dicom.to_uint8(Decoded(np.zeros((4, 4, 3), np.uint8), PhotometricInterpretation="MONOCHROME2"))


def test_a_voi_lut_is_applied_to_rescaled_values_that_are_not_whole_numbers(tmp_path):
    # Rescale slope 0.5: the modality LUT's output is float (0, 0.5, 1, ...), which indexes no table:
    # each value is rounded to the nearest entry (half to even), not cut down, before the VOI LUT
    # (an inverting one here) maps it.
    img = np.tile(np.arange(0, 256, dtype=np.uint16), (8, 1))
    lut = [1000 - 3 * i for i in range(200)]  # over inputs 0..199: 1000 down to 403
    out = dicom.read_dicom(testing.write_dicom(tmp_path / "r.dcm", img, bits_stored=12, rescale=(0.5, 0.0),
                                               voi_lut=lut)).pixels
    expected = (1000 - 3 * np.rint(img[0] * 0.5) - 403) * 255 / 597
    assert np.abs(out[0].astype(float) - expected).max() <= 0.5
    assert out[0, 0] == 255 and out[0, -1] < 100  # low values bright: the LUT's inversion, not the data's ramp


def test_pixel_data_without_its_size_fields_is_a_clear_error_without_a_guessed_hint(tmp_path):
    # No BitsAllocated: neither pydicom nor the cut-short hint can size the pixels; the error says the
    # pixels could not be decoded, with no made-up byte count and no traceback of the hint's own.
    ds = pydicom.dcmread(testing.write_dicom(tmp_path / "a.dcm", testing.radiograph(3)))
    del ds.BitsAllocated
    ds.save_as(tmp_path / "nobits.dcm")
    with pytest.raises(dicom.DicomError, match=r"^cannot decode pixel data \(Explicit VR Little Endian; "
                                               r"AttributeError\)$"):
        dicom.read_dicom(str(tmp_path / "nobits.dcm"))
