import collections
import filecmp
import hashlib
import os

import numpy as np
import pytest

from covid_cxr.data import features, images, pseudonym, synthetic, writer
from covid_cxr.data.sources.base import read_csv
from covid_cxr.data.testing import DEALT_SEED


def test_generates_the_curated_format_deterministically(tmp_path):
    a = synthetic.generate(str(tmp_path / "a"), "three-class", patients_per_class=3, seed=1)
    b = synthetic.generate(str(tmp_path / "b"), "three-class", patients_per_class=3, seed=1)
    assert a == b
    assert set(a["per_class"]) == {"covid", "normal", "pneumonia"}
    assert a["patients"] == 9 and a["accepted"] > 9  # 1-3 images per patient: some have several
    for name in os.listdir(tmp_path / "a"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name
    assert writer.read_summary(str(tmp_path / "a"))["task"] == a["settings"]["task"] == "three-class"


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


def _films(directory):
    """(manifest rows, decoded films) of a generated directory, in the same (shard) order."""
    _, manifest = read_csv(str(directory / features.MANIFEST))
    raws = [example.features.feature[features.IMAGE].bytes_list.value[0]
            for _, example in writer.read_examples(writer.record_files(str(directory)))]
    return manifest, raws


def test_patients_are_pseudonyms_of_seed_finding_and_index_and_each_film_is_hashed(tmp_path):
    # Pseudonyms as long as curation's, distinct for every seed, finding and index (another seed's
    # dataset shares no patient with this one) ...
    pseudonyms = [synthetic.patient_group(seed, finding, index)
                  for seed in (0, 1) for finding in (features.COVID, features.NORMAL) for index in (0, 1)]
    assert len(set(pseudonyms)) == len(pseudonyms)
    assert all(len(p) == pseudonym.LENGTH and int(p, 16) >= 0 for p in pseudonyms)
    # ... given to the patients in order, so the first n of a larger dataset are those of a smaller one.
    summary = synthetic.generate(str(tmp_path), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    manifest, raws = _films(tmp_path)
    patients = list(dict.fromkeys(row["patient_id"] for row in manifest))
    assert patients == [synthetic.patient_group(DEALT_SEED, finding, index)
                        for finding in (features.COVID, features.NORMAL) for index in range(3)]
    assert [row["hash"] for row in manifest] == [hashlib.sha256(raw).hexdigest()[:16] for raw in raws]
    assert len({row["source_ref"] for row in manifest}) == len(manifest)  # each film its own reference
    # What `predict` copies, in curation's vocabulary: every film fits max_side, as curated ones do.
    assert summary["settings"] == {"task": "covid-vs-normal", "max_side": 256, "crop": False, "equalize": "none"}
    assert (summary["seed"], summary["patients_per_class"]) == (DEALT_SEED, 3)
    assert max(max(images.decode_png(raw).shape) for raw in raws) <= summary["settings"]["max_side"]


def _has_marker(film) -> bool:
    """A burnt-in white marker: a run of a sixth of the width at full white, in the upper fifth."""
    h, w = film.shape
    white = np.pad(film[int(h * 0.05):int(h * 0.2) + h // 30] == 255, ((0, 0), (1, 1)))
    runs = [np.diff(np.flatnonzero(np.diff(row.astype(int)))) for row in white]
    return any((r[::2] >= w // 6).any() for r in runs if len(r))


def test_what_a_model_could_cheat_on_is_drawn_whatever_the_class(tmp_path):
    synthetic.generate(str(tmp_path), "covid-vs-normal", patients_per_class=12, seed=0)
    manifest, raws = _films(tmp_path)
    by_class = {label: [(row, images.decode_png(raw)) for row, raw in zip(manifest, raws) if row["label"] == label]
                for label in (features.COVID, features.NORMAL)}
    for label, films in by_class.items():
        rows = [row for row, _ in films]
        for field, values in (("source", set(synthetic.SOURCES)), ("sex", {"M", "F"}), ("view", {"PA", "AP"})):
            assert {row[field] for row in rows} == values, (label, field)
        assert len({row["age"] for row in rows}) > 5, label
        # 1-3 films per patient, every count drawn
        assert set(collections.Counter(row["patient_id"] for row in rows).values()) == {1, 2, 3}, label
        margins = [not (f[0].any() and f[-1].any() and f[:, 0].any() and f[:, -1].any()) for _, f in films]
        assert sum(margins) > len(films) // 2, label
        assert 0 < sum(_has_marker(f) for _, f in films) < len(films) // 2, label


class _Draws:
    """An rng whose uniform draws are all ``fraction`` and that never draws a marker."""

    def __init__(self, fraction):
        self.fraction = fraction

    def uniform(self, low, high):
        return self.fraction

    def random(self):
        return 0.99


@pytest.mark.parametrize("fraction, margin", [(0.0, 0), (0.1, 10)])
def test_a_films_margins_are_as_wide_as_drawn_and_none_is_none(fraction, margin):
    film = np.full((100, 100), 0.5)
    synthetic._draw_borders(film, _Draws(fraction))
    black = np.ones_like(film, dtype=bool)
    black[margin:100 - margin, margin:100 - margin] = False
    assert (film[black] == 0).all() and (film[~black] == 0.5).all()


class _Midpoints(_Draws):
    """An rng that draws every range's midpoint, the first choice, the least integer and no noise."""

    def __init__(self):
        super().__init__(None)

    def uniform(self, low, high):
        return (low + high) / 2

    def integers(self, low, high):
        return low

    def choice(self, options):
        return options[0]

    def normal(self, mean, std, shape):
        return np.full(shape, float(mean))


def _zones(finding):
    """Mean gray-level difference of ``finding``'s film from the normal one (same patient, same draws) per zone
    of a 200 x 200 film: lower periphery of the right and left lung fields, lower medial lung, upper periphery,
    middle of the right and left lung fields."""
    anatomy = synthetic.Anatomy(0.4, 0.33, 0.12, 0.5)
    normal, film = (synthetic.draw_radiograph(f, anatomy, _Midpoints(), (200, 200)).astype(int)
                    for f in (features.NORMAL, finding))
    diff = np.abs(film - normal)
    return {zone: diff[rows, cols].mean() for zone, rows, cols in (
        ("lower right", slice(125, 142), slice(40, 52)), ("lower left", slice(125, 142), slice(148, 160)),
        ("lower medial", slice(125, 142), slice(78, 88)), ("upper", slice(50, 80), slice(40, 52)),
        ("middle right", slice(85, 115), slice(45, 75)), ("middle left", slice(85, 115), slice(125, 155)))}


def test_covid_opacities_are_bilateral_peripheral_and_low_and_pneumonia_is_one_lungs():
    covid = _zones(features.COVID)
    assert min(covid["lower right"], covid["lower left"]) > 4 * max(covid["lower medial"], covid["upper"], 1), covid
    pneumonia = _zones(features.PNEUMONIA)
    assert pneumonia["middle right"] > 10 and pneumonia["middle left"] == 0, pneumonia


class _Highs(_Midpoints):
    """Every range's upper end: the brightest exposure, the widest margins."""

    def uniform(self, low, high):
        return high


def test_an_overexposed_film_saturates_at_white():
    film = synthetic.draw_radiograph(features.NORMAL, synthetic.Anatomy(0.4, 0.33, 0.12, 0.5), _Highs(), (200, 200))
    assert film[124, 95] == 255 and film.max() == 255  # heart over spine: over-white, clipped, never wrapped round
    assert film[:24].max() == 0  # the widest top margin (12%)
