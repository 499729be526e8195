import os

import numpy as np
import pytest
from PIL import Image

from covid_cxr.data import dedupe, dicom, images, testing


def framed(seed=1, top=20, bottom=12, left=16, right=8, size=(160, 128)):
    """A film inside black bars of known widths; returns (image, (top, bottom, left, right) content box)."""
    film = testing.radiograph(seed, size)
    h, w = film.shape
    out = np.zeros((h + top + bottom, w + left + right), np.uint8)
    out[top : top + h, left : left + w] = film
    return out, (top, top + h, left, left + w)


def test_crop_removes_black_bars():
    img, box = framed()
    cropped, did, note = images.crop_borders(img)
    assert did and note == ""
    assert images.content_box(img) == box
    assert cropped.shape == (box[1] - box[0], box[3] - box[2])


def test_crop_ignores_text_labels_and_thin_bars_in_the_border():
    img, box = framed(top=30, left=30)
    img[5:15, 40:60] = 255  # burnt-in white text label in the top bar
    img[8:12, 100:110] = 200
    img[:, 2] = 140  # a thin grey bar at the far left
    img[-3, :] = 180  # and one at the bottom
    t, b, l, r = images.content_box(img)
    assert abs(t - box[0]) <= 1 and abs(b - box[1]) <= 1 and abs(l - box[2]) <= 1 and abs(r - box[3]) <= 1


def test_crop_handles_white_and_uniform_grey_frames():
    film = testing.radiograph(3)
    white = np.full((200, 180), 255, np.uint8)
    white[20:180, 26:154] = film
    assert images.content_box(white) == (20, 180, 26, 154)
    grey = np.full((200, 180), 128, np.uint8)
    grey[20:180, 26:154] = np.where(np.abs(film.astype(int) - 128) <= 2, 131, film)
    assert images.content_box(grey) == (20, 180, 26, 154)


@pytest.mark.parametrize("strip", [(slice(90, 110), slice(20, 180)),  # thinner than MIN_SIDE
                                   (slice(70, 130), slice(20, 180)),  # 30 % of the height
                                   (slice(20, 180), slice(70, 130))])  # 30 % of the width
def test_crop_never_returns_a_sliver(strip):
    img = np.zeros((200, 200), np.uint8)
    rows, cols = strip
    img[strip] = testing.radiograph(4, (rows.stop - rows.start, cols.stop - cols.start))
    out, did, note = images.crop_borders(img)
    assert not did and out is img
    assert note.startswith("crop refused")


@pytest.mark.parametrize("transposed", [False, True])
def test_a_crop_narrower_than_min_side_is_refused_even_when_not_a_sliver(transposed):
    img = np.zeros((80, 200), np.uint8)
    img[20:50, 20:180] = testing.radiograph(4, (30, 160))  # 37 % of the height, but 30 rows < MIN_SIDE
    img = np.ascontiguousarray(img.T) if transposed else img  # or 30 columns
    out, did, note = images.crop_borders(img)
    assert not did and out is img
    assert note == ("crop refused: content box 80% x 38% of the image" if transposed
                    else "crop refused: content box 38% x 80% of the image")


def test_noisy_near_black_bars_are_border_too():
    img, box = framed(top=24, bottom=24, left=20, right=20)
    bars = img == 0
    img[bars] = np.random.default_rng(0).integers(0, 13, size=int(bars.sum()))  # JPEG-like noise up to 12
    assert images.content_box(img) == box


def test_a_thin_dark_band_across_the_film_does_not_cut_it():
    img, box = framed(top=20, bottom=20, left=16, right=16)
    img[100:103, :] = 0  # 3 rows: within the 2 % gap that still counts as one film
    assert images.content_box(img) == box


def test_white_bars_above_and_below_with_black_bars_beside():
    img = np.zeros((200, 180), np.uint8)
    img[:20], img[180:] = 255, 255
    img[20:180, 26:154] = testing.radiograph(3)
    assert images.content_box(img) == (20, 180, 26, 154)


def test_a_label_in_the_corner_does_not_widen_the_film():
    img = np.zeros((200, 200), np.uint8)
    img[40:, 40:] = testing.radiograph(9, (160, 160))
    img[0:30, 0:40] = 128  # a grey label block beside the film, above it
    assert images.content_box(img) == (40, 200, 40, 200)


def test_no_border_means_no_crop():
    film = testing.radiograph(5)
    out, did, note = images.crop_borders(film)
    assert not did and note == "" and out.shape == film.shape


def test_resize_bounds_the_long_side_and_never_upscales():
    img = testing.radiograph(6, (300, 150))
    out = images.resize_max_side(img, 100)
    assert out.shape == (100, 50)
    small = testing.radiograph(7, (40, 30))
    assert images.resize_max_side(small, 512) is small


def test_equalization_modes():
    low_contrast = (testing.radiograph(8) // 4 + 100).astype(np.uint8)
    assert images.equalize(low_contrast, "none") is low_contrast
    for mode in ("clahe", "hist"):
        out = images.equalize(low_contrast, mode)
        assert out.shape == low_contrast.shape and out.dtype == np.uint8
        assert out.std() > 1.5 * low_contrast.std()
    hist = images.equalize(low_contrast, "hist")
    assert hist.max() - hist.min() > 200  # global equalization spreads to the full range
    # CLAHE works locally: it differs from global equalization
    assert not np.array_equal(images.equalize(low_contrast, "clahe"), hist)
    with pytest.raises(ValueError, match="unknown equalization"):
        images.equalize(low_contrast, "fancy")


def test_read_gray_converts_modes(tmp_path):
    film = testing.radiograph(9)
    rgb = np.stack([film, film, film], -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(images.read_gray(str(tmp_path / "rgb.png"))[0], film)
    Image.fromarray(np.dstack([rgb, np.full(film.shape, 255, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(images.read_gray(str(tmp_path / "rgba.png"))[0], film)
    transparent = np.dstack([rgb, np.full(film.shape, 255, np.uint8)])
    transparent[:, :10, 3] = 0  # a transparent margin is black, like a border, not white
    Image.fromarray(transparent).save(tmp_path / "transparent.png")
    out = images.read_gray(str(tmp_path / "transparent.png"))[0]
    assert (out[:, :10] == 0).all()
    np.testing.assert_array_equal(out[:, 10:], film[:, 10:])
    deep = film.astype(np.uint16) * 200 + 1000
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = images.read_gray(str(tmp_path / "deep.png"))[0]
    assert out.min() == 0 and out.max() == 255
    assert np.corrcoef(out.ravel(), film.ravel())[0, 1] > 0.999


def test_unreadable_files_raise_image_error_without_paths(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"\x89PNG garbage")
    good = testing.write_image(tmp_path / "ok.jpg", testing.radiograph(10))
    data = open(good, "rb").read()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    for name in ("junk.png", "trunc.jpg", "missing.png"):
        with pytest.raises(images.ImageError) as e:
            images.process(str(tmp_path / name))
        assert str(tmp_path) not in str(e.value)
        result, reason = images.process_job((str(tmp_path / name), 512, True, "none"))
        assert result is None and reason


def test_blank_and_tiny_images_are_rejected(tmp_path):
    testing.write_image(tmp_path / "blank.png", np.full((100, 100), 77, np.uint8))
    testing.write_image(tmp_path / "tiny.png", testing.radiograph(11, (20, 20)))
    assert "blank" in images.process_job((str(tmp_path / "blank.png"), 512, True, "none"))[1]
    assert "too small" in images.process_job((str(tmp_path / "tiny.png"), 512, True, "none"))[1]
    # 16-bit: a single level is blank too (no stretch by a zero range)
    Image.fromarray(np.full((100, 100), 3000, np.uint16)).save(tmp_path / "blank16.png")
    assert images.process_job((str(tmp_path / "blank16.png"), 512, True, "none"))[1] == "blank image (a single grey level)"
    side = images.MIN_SIDE
    testing.write_image(tmp_path / "edge.png", testing.radiograph(11, (side - 1, 100)))
    testing.write_image(tmp_path / "least.png", testing.radiograph(11, (side, 100)))
    assert images.process_job((str(tmp_path / "edge.png"), 512, False, "none"))[1] == f"image too small (100x{side - 1})"
    assert images.process_job((str(tmp_path / "least.png"), 512, False, "none"))[1] == ""


def test_exif_orientation_is_applied(tmp_path):
    film = testing.radiograph(12, (120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned: rotate 90 degrees clockwise to view
    Image.fromarray(film).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    gray = images.read_gray(str(tmp_path / "turned.jpg"))[0]
    assert gray.shape == (80, 120)
    assert np.abs(gray.astype(int) - np.rot90(film, -1)).mean() < 3


def test_dicom_lateral_and_oblique_views_are_refused(tmp_path):
    film = testing.radiograph(13)
    refusals = {view: images.read_gray(testing.write_dicom(tmp_path / f"{view}.dcm", film, view=view))[1].refusal()
                for view in ("PA", "LL", "LAO")}
    assert refusals == {"PA": None, "LL": "lateral view: DICOM ViewPosition", "LAO": "oblique view: DICOM ViewPosition"}


@pytest.mark.parametrize("modality, refusal", [
    ("CR", None), ("DX", None), ("OT", None), ("", None),  # radiographs, and exports that do not say
    ("CT", "not an X-ray: CT"), ("XC", "not an X-ray: XC"), ("SM", "not an X-ray: SM"), ("DOC", "not an X-ray: DOC"),
])
def test_dicom_modalities_that_are_surely_no_radiograph_are_refused(tmp_path, modality, refusal):
    path = testing.write_dicom(tmp_path / "film.dcm", testing.radiograph(13), modality=modality)
    assert images.read_gray(path)[1].refusal() == refusal


NOT_CHEST = "not a chest film: DICOM BodyPartExamined "


@pytest.mark.parametrize("body_part, refusal", [
    (None, None), ("", None), ("  ", None),  # no tag or an empty one: many real files (the shared nih-dx-sample.dcm)
    ("CHEST", None), (" chest ", None), ("Thorax", None), ("PORT CHEST", None), ("LUNG", None),
    ("ABDOMEN", NOT_CHEST + "ABDOMEN"), ("skull ", NOT_CHEST + "SKULL"), ("HAND", NOT_CHEST + "HAND"),
    ("KNEE", NOT_CHEST + "KNEE"), ("PELVIS", NOT_CHEST + "PELVIS"),
    # Not a DICOM code string (a broken file's free text could be anything, a name too): not quoted.
    (testing.SECRET_NAME, NOT_CHEST + "(not a DICOM code string)"),
])
def test_dicom_body_parts_other_than_the_chest_are_refused_naming_the_tag_and_its_value(tmp_path, body_part, refusal):
    path = testing.write_dicom(tmp_path / "film.dcm", testing.radiograph(13), body_part=body_part)
    assert images.read_gray(path)[1].refusal() == refusal


@pytest.mark.realdata
@pytest.mark.skipif(not testing.REAL_DATA.is_dir(), reason=testing.REAL_DATA_REASON)
def test_the_real_dicom_films_tagged_chest_or_untagged_are_taken_as_chest_films():
    rsna = sorted((testing.REAL_DATA / testing.REAL_SOURCE_DIRS["rsna"] / "stage_2_train_images").glob("*.dcm"))
    samples = sorted((testing.REAL_DATA / "dicom-samples").glob("*.dcm"))
    assert len(rsna) == 200 and len(samples) == 4
    headers = {path.name: images.read_gray(str(path))[1] for path in rsna + samples}
    assert {h.body_part for h in headers.values()} == {"CHEST", ""}  # the tag is read: RSNA's and SIIM's say CHEST
    assert headers["nih-dx-sample.dcm"].body_part == ""
    assert {name: h.refusal() for name, h in headers.items() if h.refusal()} == {}


def test_a_float_image_with_nan_and_a_multi_page_image_are_refused_with_their_reason(tmp_path):
    film = testing.radiograph(15, (120, 100)).astype(np.float32)
    Image.fromarray(film, mode="F").save(tmp_path / "float.tif")
    result, reason = images.process_job((str(tmp_path / "float.tif"), 512, True, "none"))
    assert result is not None and not reason  # a float film is fine
    film[5, 5] = np.nan
    Image.fromarray(film, mode="F").save(tmp_path / "nan.tif")
    assert images.process_job((str(tmp_path / "nan.tif"), 512, True, "none"))[1] == (
        "pixel values that are not finite numbers (NaN or infinity)")
    pages = [Image.fromarray(testing.radiograph(seed, (120, 100))) for seed in (16, 17)]
    pages[0].save(tmp_path / "two.tif", save_all=True, append_images=pages[1:])
    assert images.process_job((str(tmp_path / "two.tif"), 512, True, "none"))[1] == (
        "multi-page image (2 pages) is not a radiograph")
    # A phone's JPEG (MPO) carries a preview of the picture as its second frame: one picture.
    pages[0].save(tmp_path / "phone.jpg", "MPO", save_all=True, append_images=[pages[0].resize((50, 60))])
    result, reason = images.process_job((str(tmp_path / "phone.jpg"), 512, True, "none"))
    assert result is not None and not reason


def test_process_outputs_bounded_grayscale_png(tmp_path):
    img, _ = framed(12, size=(400, 300))
    path = testing.write_image(tmp_path / "a.png", img)
    p = images.process(path, max_side=128)
    decoded = images.decode_png(p.png)
    assert max(decoded.shape) == 128 and decoded.shape == (p.height, p.width)
    with Image.open(__import__("io").BytesIO(p.png)) as im:
        assert im.mode == "L" and im.format == "PNG"
    assert p.cropped
    assert images.process(path, max_side=128).png == p.png  # deterministic bytes
    assert not images.process(path, max_side=128, crop=False).cropped


def test_phash_same_picture_resized_and_reencoded_is_near_other_picture_is_far(tmp_path):
    a, b = testing.radiograph(13, (320, 256)), testing.radiograph(14, (320, 256))
    copy = testing.write_image(tmp_path / "copy.jpg", a, quality=60, rgb=True, size=(112, 112))
    ha, hb = images.perceptual_hash(a), images.perceptual_hash(b)
    hc = images.perceptual_hash(images.read_gray(copy)[0])
    assert len(ha) == images.HASH_BYTES == 32
    assert testing.hamming(ha, hc) <= dedupe.DEFAULT_THRESHOLD
    assert testing.hamming(ha, hb) > 2 * dedupe.DEFAULT_THRESHOLD
    # the hash is taken after cropping: a framed copy matches the unframed original
    framed_a = np.zeros((400, 300), np.uint8)
    framed_a[40:360, 22:278] = a
    p = images.process(testing.write_image(tmp_path / "framed.png", framed_a))
    assert testing.hamming(p.phash, ha) <= 8
    # and before resizing and equalization: the same file hashes alike whatever the settings
    assert images.process(str(tmp_path / "framed.png"), max_side=64, equalization="hist").phash == p.phash


def test_pictures_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    # Pillow only warns between its limit and twice it, and the warning is silenced while reading:
    # a 25000 x 25000 PNG (4.5 MB on disk) took 2.85 GB to decode. The limit is shrunk here to test it.
    monkeypatch.setattr(images, "MAX_PIXELS", 20 * 20 - 1)
    monkeypatch.setattr(dicom, "MAX_PIXELS", 20 * 20 - 1)
    png = testing.write_image(tmp_path / "big.png", testing.radiograph(1, (20, 20)))
    with pytest.raises(images.ImageError, match=r"^image too large \(20 x 20 pixels\)$"):
        images.read_gray(str(png))
    with pytest.raises(images.ImageError, match=r"^image too large \(20 x 20 pixels\)$"):
        images.read_gray(testing.write_dicom(tmp_path / "big.dcm", testing.radiograph(2, (20, 20))))
    monkeypatch.setattr(images, "MAX_PIXELS", 20 * 20)
    assert images.read_gray(str(png))[0].shape == (20, 20)


def test_unreadable_pictures_say_what_is_wrong(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not a picture")
    good = testing.write_image(tmp_path / "good.png", testing.radiograph(3))
    (tmp_path / "cut.png").write_bytes(open(good, "rb").read()[:200])
    for name, message in (("empty.png", r"^cannot decode image \(empty file\)$"),
                          ("text.png", r"^cannot decode image \(not a format Pillow knows, or a damaged header\)$"),
                          ("cut.png", r"^cannot decode image \(\w+; truncated or corrupt\)$")):
        with pytest.raises(images.ImageError, match=message):
            images.read_gray(str(tmp_path / name))


def test_a_file_without_read_permission_says_so(tmp_path, monkeypatch):
    # Root reads any file, so the refusal an ordinary user gets is simulated.
    png = tmp_path / "a.png"
    Image.fromarray(testing.radiograph(1)).save(png)
    path = testing.write_dicom(tmp_path / "b.dcm", testing.radiograph(2))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(images.Image, "open", refuse)
    monkeypatch.setattr(dicom.pydicom, "dcmread", refuse)
    for name in (str(png), str(path)):
        with pytest.raises(images.ImageError, match=r"^cannot read the file \(permission denied\)$"):
            images.read_gray(name)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_refused_unopened(tmp_path):
    with testing.fifo(tmp_path / "scan.dcm") as pipe, testing.fifo(tmp_path / "scan") as bare:
        assert not dicom.is_dicom(bare)
        for path in (pipe, bare):
            with pytest.raises(images.ImageError, match=r"^not a regular file: a named pipe \(FIFO\)$"):
                images.read_gray(path)


def test_a_grey_frame_with_jpeg_noise_or_a_film_touching_one_edge_is_still_a_frame():
    film = testing.radiograph(3)
    film = np.where(np.abs(film.astype(int) - 128) <= 3, 132, film).astype(np.uint8)
    noisy = (128 + np.random.default_rng(0).integers(-1, 2, size=(200, 180))).astype(np.uint8)  # levels 127-129
    noisy[20:180, 26:154] = film
    assert images.content_box(noisy) == (20, 180, 26, 154)
    # The film reaches the left edge: a fifth of the edge is film, the rest still one grey level.
    touching = np.full((200, 180), 128, np.uint8)
    touching[20:180, 0:128] = film
    assert images.content_box(touching) == (20, 180, 0, 128)


def test_a_gap_of_two_percent_of_the_side_is_bridged_and_a_wider_one_cuts_the_film():
    img, box = framed(top=20, bottom=20, left=16, right=16)  # 200 rows: gaps up to 4 rows are bridged
    img[100:104, :] = 0
    assert images.content_box(img) == box
    img[104, :] = 0  # 5 rows: two runs, the longer (rows 20-99) wins
    assert images.content_box(img)[:2] == (20, 100)


def test_of_two_equal_films_the_first_is_kept_and_a_picture_without_grey_levels_is_left_whole():
    img = np.zeros((200, 160), np.uint8)
    img[10:80], img[120:190] = testing.radiograph(1, (70, 160)), testing.radiograph(2, (70, 160))
    assert images.content_box(img)[:2] == (10, 80)
    # Only black and white (a drawing, a mask): no content to crop to, no crop and no refusal note.
    drawing = np.zeros((120, 100), np.uint8)
    drawing[30:90, 20:80:3] = 255
    assert images.content_box(drawing) == (0, 120, 0, 100)
    out, did, note = images.crop_borders(drawing)
    assert out is drawing and not did and note == ""


def test_a_crop_of_exactly_the_minimum_fraction_is_kept():
    img = np.zeros((200, 200), np.uint8)
    img[20:90, 20:180] = testing.radiograph(4, (70, 160))  # 35 % of the height: not a sliver
    out, did, note = images.crop_borders(img)
    assert did and note == "" and out.shape == (70, 160)


def test_resize_rounds_the_short_side_and_averages_what_it_merges():
    assert images.resize_max_side(testing.radiograph(6, (300, 155)), 100).shape == (100, 52)  # 51.67 -> 52
    stripes = np.tile(np.array([0, 255], np.uint8), (100, 100))  # 1-pixel columns, 100 x 200
    out = images.resize_max_side(stripes, 100)
    assert out.shape == (50, 100) and np.abs(out.astype(int) - 127.5).max() <= 1  # area, not sampling


def test_clahe_is_the_documented_clip_and_grid():
    low_contrast = (testing.radiograph(8, (256, 256)) // 4 + 100).astype(np.uint8)
    import cv2

    expected = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(low_contrast)
    np.testing.assert_array_equal(images.equalize(low_contrast, "clahe"), expected)


def test_phash_is_the_16x16_lowest_dct_frequencies_against_their_median():
    from scipy.fft import dctn
    import cv2

    gray = testing.radiograph(21, (150, 120))
    small = cv2.resize(gray.astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA)
    low = dctn(small.astype(np.float64), norm="ortho")[:16, :16]  # an independent DCT-II
    expected = np.packbits((low > np.median(low)).ravel()).tobytes()
    assert images.perceptual_hash(gray) == expected


def test_the_stored_film_is_equalized_after_resizing_and_a_tenth_of_a_row_is_content(tmp_path):
    path = testing.write_image(tmp_path / "a.png", testing.radiograph(22, (400, 300)))
    plain = images.decode_png(images.process(path, max_side=64, crop=False).png)
    stored = images.decode_png(images.process(path, max_side=64, crop=False, equalization="hist").png)
    np.testing.assert_array_equal(stored, images.equalize(plain, "hist"))  # its own histogram, at its own size
    img = np.zeros((200, 100), np.uint8)
    img[40:180] = testing.radiograph(23, (140, 100))
    img[20:40, 45:55] = 128  # 10 % of each of these rows is content
    assert images.content_box(img)[:2] == (20, 180)


def test_deep_levels_are_rounded_and_grey_with_alpha_is_laid_on_black(tmp_path):
    Image.fromarray(np.repeat(np.array([[1000, 1001, 1002]], np.uint16), 40, axis=0)).save(tmp_path / "deep.png")
    assert images.read_gray(str(tmp_path / "deep.png"))[0][0].tolist() == [0, 128, 255]  # 127.5 rounds
    film = testing.radiograph(9)
    alpha = np.full(film.shape, 255, np.uint8)
    alpha[:, :10] = 0
    Image.fromarray(np.dstack([film, alpha]), mode="LA").save(tmp_path / "la.png")
    out = images.read_gray(str(tmp_path / "la.png"))[0]
    assert (out[:, :10] == 0).all()
    np.testing.assert_array_equal(out[:, 10:], film[:, 10:])


def test_a_film_too_narrow_is_refused_and_running_out_of_memory_is_named(tmp_path, monkeypatch):
    side = images.MIN_SIDE
    testing.write_image(tmp_path / "narrow.png", testing.radiograph(11, (100, side - 1)))
    assert images.process_job((str(tmp_path / "narrow.png"), 512, False, "none"))[1] == f"image too small ({side - 1}x100)"
    # Wide enough as read, too narrow once the longest side is brought to 512 (the served graph refuses it).
    testing.write_image(tmp_path / "strip.png", testing.radiograph(12, (100, 2000)))
    assert images.process_job((str(tmp_path / "strip.png"), 512, False, "none"))[1] == (
        f"image too narrow (2000x100 is 512x26 at a longest side of 512; fewer than {side} pixels on a side)")
    assert images.process_job((str(tmp_path / "strip.png"), 2000, False, "none"))[1] == ""  # kept where not resized

    def exhausted(path):
        raise MemoryError

    monkeypatch.setattr(images, "read_gray", exhausted)
    assert images.process_job((str(tmp_path / "narrow.png"), 512, False, "none")) == (None, "image too large (out of memory)")


def test_an_upper_case_extension_is_an_image_and_a_missing_file_is_not_called_a_broken_link(tmp_path):
    assert images.is_image_file(str(tmp_path / "FILM.PNG")) and images.is_image_file(str(tmp_path / "x.Jpeg"))
    assert not images.is_image_file(str(tmp_path / "notes.txt"))
    assert images.process_job((str(tmp_path / "gone.png"), 512, True, "none")) == (None, "file not found")
    os.symlink(tmp_path / "gone.png", tmp_path / "link.png")
    assert images.process_job((str(tmp_path / "link.png"), 512, True, "none")) == (
        None, "broken symbolic link: its target does not exist")


def test_a_picture_pillow_calls_a_decompression_bomb_is_refused_as_too_large(tmp_path, monkeypatch):
    # Beyond twice its own limit Pillow raises while opening, before read_gray's own check: the
    # reason must still say what is wrong, not "cannot decode image (DecompressionBombError)".
    png = testing.write_image(tmp_path / "bomb.png", testing.radiograph(1, (40, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40 // 2 - 1)
    assert images.process_job((str(png), 512, True, "none")) == (None, "image too large")


@pytest.mark.parametrize("depth", ["8-bit", "16-bit", "float"])
def test_a_min_is_white_tiff_reads_as_the_positive_picture_at_every_depth(tmp_path, depth):
    """TIFF's MONOCHROME1: PhotometricInterpretation 0 (WhiteIsZero) stores white as 0. Pillow inverts such a
    file of up to 8 bits itself but hands a 16-bit or float one over as stored: it was curated as a negative."""
    from PIL import TiffImagePlugin

    film = testing.radiograph(9)
    stored = {"8-bit": film, "16-bit": film.astype(np.uint16) * 257, "float": film.astype(np.float32) / 255}[depth]
    for photometric in (0, 1):
        tags = TiffImagePlugin.ImageFileDirectory_v2()
        tags[262] = photometric
        Image.fromarray(stored).save(tmp_path / f"{photometric}.tif", tiffinfo=tags)
    with Image.open(tmp_path / "0.tif") as im:  # Pillow wrote the 8-bit film inverted on disk, the others as given
        assert im.tag_v2[262] == 0
    positive = images.read_gray(str(tmp_path / "1.tif"))[0]  # deeper levels are stretched to 0..255
    assert np.corrcoef(positive.ravel(), film.ravel())[0, 1] > 0.999
    np.testing.assert_array_equal(images.read_gray(str(tmp_path / "0.tif"))[0],
                                  positive if depth == "8-bit" else 255 - positive)
