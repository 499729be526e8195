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


@pytest.mark.parametrize("options, message", [
    (["--border-crop", "0.6"], "model.border_crop must be between 0 and 0.25 (of each side), got 0.6"),
    (["--border-crop", "0.1", "--set", "model.border_crop=0.2"],
     "--border-crop 0.1 and --set model.border_crop=0.2 disagree: give one of them"),
    (["--gamma", "2"], "model.augment_contrast must be in [0, 1) and model.augment_gamma in [0, 1], got 0.0 and 2.0"),
    (["--set", "model.augment_shift=1"], "model.augment_shift must be a number at least 0.0 and below 1.0, got 1.0"),
    (["--set", "model.augment_zoom=much"], "override: model.augment_zoom: 'much' is not a valid float"),
    (["--set", "model.augment_horizontal_flip"], "--set 'model.augment_horizontal_flip' must look like section.field=value"),
    (["--set", "training.epochs=3"], "--set training.epochs: only the augmentation and the border crop are set with "
                                     "--set here (model.augment, model.augment_rotation_degrees, "),
    (["--contrast", "0.2", "--set", "model.augment_contrast=0.3"],
     "--contrast 0.2 and --set model.augment_contrast=0.3 disagree: give one of them"),
])
def test_an_option_outside_the_model_range_is_a_one_line_usage_error(options, message, compare_models, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["compare_models.py", "--data", str(tmp_path), *options])
    with pytest.raises(SystemExit) as info:
        compare_models.main()
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("options, expected", [
    ([], {}),  # the run config's defaults, which are the studies'
    (["--contrast", "0.2", "--gamma", "0.1"], {"contrast": 0.2, "gamma": 0.1}),
    (["--set", "model.augment_rotation_degrees=5", "--set", "model.augment_shift=0.2", "--set", "model.augment_shear=0",
      "--set", "model.augment_zoom=0.05", "--set", "model.augment_horizontal_flip=no", "--contrast", "0.3",
      "--set", "model.augment_contrast=.30", "--set", "model.augment_gamma=0.1"],
     {"rotation_degrees": 5.0, "shift": 0.2, "shear": 0.0, "zoom": 0.05, "horizontal_flip": False, "contrast": 0.3,
      "gamma": 0.1}),
    (["--set", "model.augment=off"], {"enabled": False}),
])
def test_every_augmentation_field_of_the_run_config_is_set_with_set(options, expected, compare_models, tmp_path,
                                                                    monkeypatch):
    """Only contrast and gamma had options: the geometric sizes the run config sets could not be compared."""
    import numpy as np

    from covid_cxr.trainer import models

    trained = []
    monkeypatch.setattr(compare_models, "load", lambda *args: (
        np.zeros((2, 8, 8, 1), np.float32), np.array([0, 1]), np.array(["a", "b"]), np.array(["s", "s"])))
    monkeypatch.setattr(compare_models, "evaluate", lambda family, size, x, y, rounds, args: trained.append(args.augment) or [])
    monkeypatch.setattr(sys, "argv", ["compare_models.py", "--data", str(tmp_path), *options])
    compare_models.main()
    assert trained == [models.AugmentConfig(**expected)]


@pytest.mark.parametrize("options, expected", [
    ([], 0.0),  # the run config's default
    (["--border-crop", "0.1"], 0.1),
    (["--set", "model.border_crop=0.2"], 0.2),
    (["--border-crop", "0.1", "--set", "model.border_crop=.10"], 0.1),
])
def test_the_border_crop_is_the_run_configs_set_with_its_option_or_set(options, expected, compare_models, tmp_path,
                                                                       monkeypatch):
    """--border-crop had its own copy of model.border_crop's range check, and --set model.border_crop was refused."""
    import numpy as np

    crops = []

    def load(data_dir, size, cache_dir, border_crop):
        crops.append(border_crop)
        return np.zeros((2, 8, 8, 1), np.float32), np.array([0, 1]), np.array(["a", "b"]), np.array(["s", "s"])

    monkeypatch.setattr(compare_models, "load", load)
    monkeypatch.setattr(compare_models, "evaluate", lambda family, size, x, y, rounds, args: [])
    monkeypatch.setattr(sys, "argv", ["compare_models.py", "--data", str(tmp_path), *options])
    compare_models.main()
    assert crops == [expected]
