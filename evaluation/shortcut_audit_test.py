"""The border-only shortcut audit flags leaky borders and stays quiet on clean ones."""
import io

import numpy as np
from PIL import Image

from covid_cxr.evaluation import shortcut_audit


def _dataset(leaky: bool, n_patients: int = 60, seed: int = 0):
    """Two images per patient. The centre always shows the label (a bright blob for class 1).

    leaky: class 1 films carry a burnt-in white marker in the top-left border (a source artefact);
    clean: the same marker appears on a random half of the films, independent of the label.
    """
    rng = np.random.default_rng(seed)
    images, labels, groups = [], [], []
    for p in range(n_patients):
        label = p % 2
        for i in range(2):
            h, w = int(rng.integers(90, 130)), int(rng.integers(90, 130))
            img = rng.normal(110, 25, (h, w))
            yy, xx = np.mgrid[0:h, 0:w]
            if label:
                img += 70 * np.exp(-(((yy - h / 2) / (h / 8)) ** 2 + ((xx - w / 2) / (w / 8)) ** 2))
            marker = label == 1 if leaky else rng.random() < 0.5
            if marker:
                img[2:int(h * 0.08), 3:int(w * 0.3)] = 255
            gray = np.clip(img, 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(gray, mode="L").save(buf, format="PNG")
            images.append(buf.getvalue() if i == 0 else gray)  # both input kinds are accepted
            labels.append(label)
            groups.append(f"patient-{p}")
    return images, labels, groups


def test_flags_borders_that_leak_the_label():
    images, labels, groups = _dataset(leaky=True)
    result = shortcut_audit.audit(images, labels, groups, n_boot=200)
    assert result["flagged"] is True, result
    assert result["auc"]["value"] > 0.9
    assert "SHORTCUT" in result["verdict"]
    assert result["n"] == 120 and result["n_groups"] == 60 and result["folds"] == 5


def test_does_not_flag_clean_borders():
    images, labels, groups = _dataset(leaky=False)
    result = shortcut_audit.audit(images, labels, groups, n_boot=200)
    assert result["flagged"] is False, result
    assert result["auc"]["value"] <= 0.6
    assert "no border shortcut" in result["verdict"]


def test_folds_are_group_disjoint_and_balanced():
    groups = [f"g{i // 3}" for i in range(30)] + [f"h{i}" for i in range(10)]
    folds = shortcut_audit.group_folds(groups, 4, seed=1)
    for g in set(groups):
        assert len({int(f) for f, gg in zip(folds, groups) if gg == g}) == 1
    sizes = np.bincount(folds, minlength=4)
    assert sizes.max() - sizes.min() <= 3


def test_border_mask_keeps_only_the_outer_ring():
    mask = shortcut_audit.border_mask(20, 0.15)
    assert mask[0].all() and mask[:, -1].all()
    assert not mask[3:17, 3:17].any()
    assert mask.sum() == 20 * 20 - 14 * 14


def test_single_class_is_not_run():
    images, labels, groups = _dataset(leaky=True, n_patients=4)
    result = shortcut_audit.audit(images, [0] * len(labels), groups)
    assert result["flagged"] is None and result["verdict"].startswith("not run")
