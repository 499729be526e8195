"""scripts/compare_models.py on a tiny synthetic curation: grouped CV, ensemble and mirror-TTA rows."""
import sys

import pytest

from covid_cxr.data import features, synthetic


@pytest.fixture(scope="module")
def compare_models(load_script):
    return load_script("compare_models")


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_folds_ensemble_and_tta_rows(compare_models, tmp_path, monkeypatch, capsys):
    data = tmp_path / "curated"
    synthetic.generate(str(data), patients_per_class=12, seed=3)
    monkeypatch.setattr(sys, "argv", [
        "compare_models.py", "--data", str(data), "--families", "cnn3,cnn4", "--sizes", "32", "--epochs", "1",
        "--fine-tune-epochs", "0", "--folds", "3", "--tta", "--cache", str(tmp_path), "--batch-size", "8"])
    compare_models.main()
    n_images = len(compare_models.load(str(data), 32, str(tmp_path))[1])  # from the cache main() wrote
    rows = _table_rows(capsys.readouterr().out)
    assert set(rows) == {"cnn3", "cnn3 + mirror TTA", "cnn4", "cnn4 + mirror TTA",
                         "ensemble (mean)", "ensemble (mean) + mirror TTA"}
    # Every curated image is held out exactly once across the 3 folds, in every row.
    assert {row[2] for row in rows.values()} == {str(n_images)}
    for row in rows.values():
        auc = float(row[3].split()[0])
        assert 0.0 <= auc <= 1.0


def test_tta_scores_are_the_mean_over_the_mirror(compare_models):
    import numpy as np

    class Model:  # scores = mean of the left half of the image: a mirror changes it
        def predict(self, images, verbose=0):
            return images[:, :, : images.shape[2] // 2].mean(axis=(1, 2, 3))[:, None]

    rng = np.random.default_rng(0)
    x = rng.random((6, 4, 4, 1)).astype(np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    val, test = np.array([1, 1, 1, 1, 0, 0], bool), np.array([0, 0, 0, 0, 1, 1], bool)
    args = type("Args", (), {"tta": True, "target_sensitivity": 0.5})()
    variants = compare_models._variants(Model(), x, val, test, y, args)
    plain, _ = variants[""]
    mirrored, _ = variants[compare_models.TTA]
    expected = (x[test][:, :, :2].mean(axis=(1, 2, 3)) + x[test][:, :, 2:].mean(axis=(1, 2, 3))) / 2
    np.testing.assert_allclose(plain, x[test][:, :, :2].mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(mirrored, expected, rtol=1e-6)


def test_border_crop_decodes_like_the_transform_and_is_cached_apart(compare_models, tmp_path):
    import numpy as np

    from covid_cxr.transform import preprocessing

    data = tmp_path / "curated"
    synthetic.generate(str(data), patients_per_class=2, seed=1)
    plain = compare_models.load(str(data), 32, str(tmp_path))[0]
    cropped = compare_models.load(str(data), 32, str(tmp_path), border_crop=0.1)[0]
    assert len(list(tmp_path.glob("covid_cxr_compare_*.npz"))) == 2  # one cache per crop
    assert plain.shape == cropped.shape and not np.allclose(plain, cropped)
    first = next(iter(compare_models.tf.data.TFRecordDataset(
        sorted(str(p) for p in data.glob(features.TFRECORD_PATTERN)), compression_type="GZIP")))
    image = compare_models.tf.train.Example.FromString(first.numpy()).features.feature[features.IMAGE].bytes_list.value[0]
    expected = preprocessing.decode_image(image, 32, 0.1).numpy()
    np.testing.assert_allclose(cropped[0], expected, atol=1e-3)  # float16 cache


@pytest.mark.parametrize("option, value, message", [
    ("--border-crop", "0.6", "--border-crop must be between 0 and 0.25 (of each side), got 0.6"),
    ("--gamma", "2", "--contrast / --gamma: augmentation gamma must be in [0, 1], got 2.0"),
])
def test_an_option_outside_the_model_range_is_a_one_line_usage_error(option, value, message, compare_models, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["compare_models.py", "--data", str(tmp_path), option, value])
    with pytest.raises(SystemExit) as info:
        compare_models.main()
    assert info.value.code == 2
    assert message in capsys.readouterr().err
