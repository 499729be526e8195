import filecmp
import os

import numpy as np

from covid_cxr.data import features, images, synthetic, writer
from covid_cxr.data.sources.base import read_csv


def test_generates_the_curated_format_deterministically(tmp_path):
    a = synthetic.generate(str(tmp_path / "a"), "three-class", patients_per_class=3, seed=1)
    b = synthetic.generate(str(tmp_path / "b"), "three-class", patients_per_class=3, seed=1)
    assert a == b
    assert set(a["per_class"]) == {"covid", "normal", "pneumonia"}
    assert a["patients"] == 9 and a["accepted"] > 9  # 1-3 images per patient: some have several
    for name in os.listdir(tmp_path / "a"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name
    assert writer.read_summary(str(tmp_path / "a"))["task"] == "three-class"


def test_classes_differ_where_the_pattern_is_drawn_not_in_the_borders():
    anatomy = synthetic.Anatomy(0.4, 0.33, 0.12, 0.5)
    normal = synthetic.draw_radiograph(features.NORMAL, anatomy, np.random.default_rng(3), (200, 200))
    covid = synthetic.draw_radiograph(features.COVID, anatomy, np.random.default_rng(3), (200, 200))
    diff = np.abs(covid.astype(int) - normal.astype(int))
    lower_periphery = diff[115:160, 40:70].mean() + diff[115:160, 130:160].mean()
    assert lower_periphery > 4 * diff[40:80, 90:110].mean()  # opacities, not a global shift


def test_a_patients_films_share_one_group_and_the_summary_says_how_the_films_were_made(tmp_path):
    summary = synthetic.generate(str(tmp_path), "covid-vs-noncovid", patients_per_class=4, seed=2)
    _, manifest = read_csv(str(tmp_path / features.MANIFEST))
    # Patient-grouped splitting is what the synthetic data exercises: a film's own group would leak.
    assert all(row["group"] == row["patient_id"] for row in manifest)
    assert len({row["patient_id"] for row in manifest}) < len(manifest)
    # The findings the docstring draws (no other_opacity), and the settings `predict` copies: borders kept.
    assert {row["source_ref"].split("/")[0] for row in manifest} == {features.COVID, features.NORMAL, features.PNEUMONIA}
    assert summary["synthetic"] is True and summary["settings"]["crop"] is False
    edges = [images.decode_png(example.features.feature[features.IMAGE].bytes_list.value[0])
             for _, example in writer.read_examples(writer.record_files(str(tmp_path)))]
    with_border = sum(not (e[0].any() and e[-1].any() and e[:, 0].any() and e[:, -1].any()) for e in edges)
    assert with_border > len(edges) // 2
