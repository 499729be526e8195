import io
import json

import numpy as np
from PIL import Image

from covid_cxr.data import features
from covid_cxr.evaluation import errors

BINARY = features.TASKS["covid-vs-normal"]
THREE = features.TASKS["three-class"]


def _png(value: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((40, 30), value, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _drawn(monkeypatch) -> list:
    """plots.gallery_png stubbed: each call's (thumbnails, captions, title)."""
    from covid_cxr.evaluation import plots

    drawn = []
    monkeypatch.setattr(plots, "gallery_png", lambda grays, captions, title: drawn.append((grays, captions, title)) or b"png")
    return drawn


def test_only_the_wrong_films_are_listed_by_distance_from_the_stored_threshold():
    # Stored threshold 0.75: COVID above it. Films 2, 3 and 4 are wrong.
    covid = np.array([0.9, 0.1, 0.76, 0.3, 0.99, 0.74])
    labels = np.array([1, 0, 0, 1, 0, 0])  # normal = 0, covid = 1
    predicted = (covid > 0.75).astype(int)
    probabilities = np.stack([1 - covid, covid], axis=1)
    refs = [f"record {i}" for i in range(6)]
    slices = {"source": ["a", "b", "c", "d", "e", "f"]}
    out = errors.misclassified(BINARY, labels, predicted, probabilities, [f"g{i}" for i in range(6)], refs, slices,
                               threshold=0.75)
    assert out["n"] == 3 and out["order"] == errors.BINARY_ORDER
    # 0.99 and 0.3 are far from 0.75 in log-odds (3.5 and 1.9); 0.76, just over the line, is last.
    assert [e["index"] for e in out["listed"]] == [4, 3, 2]
    assert out["listed"][0] == {"index": 4, "ref": "record 4", "group": "g4", "true": "normal", "predicted": "covid",
                                "covid_probability": 0.99, "source": "e"}
    # Without a threshold (as for three-class), the probability gap orders them: 0.76 (0.52) before 0.3 (0.4).
    assert [e["index"] for e in errors.misclassified(BINARY, labels, predicted, probabilities, None, refs)["listed"]] \
        == [4, 2, 3]
    shortest = errors.misclassified(BINARY, labels, predicted, probabilities, None, refs, limit=1, threshold=0.75)
    assert shortest["n"] == 3 and len(shortest["listed"]) == 1 and "group" not in shortest["listed"][0]
    # The listing goes into report.json as it is: plain ints and floats, no numpy scalars.
    assert json.loads(json.dumps(out)) == out
    # A stored threshold of 0 is still a threshold, not an argmax's missing one.
    assert errors.misclassified(BINARY, labels, predicted, probabilities, None, refs, threshold=0.0)["order"] \
        == errors.BINARY_ORDER


def test_three_class_confusions_between_non_covid_classes_are_errors_too():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    labels = np.array([1, 2, 0])  # pneumonia called normal; covid right; normal called pneumonia
    out = errors.misclassified(THREE, labels, probabilities.argmax(1), probabilities, ["g"] * 3, ["a", "b", "c"])
    assert out["n"] == 2
    assert [(e["true"], e["predicted"]) for e in out["listed"]] == [("pneumonia", "normal"), ("normal", "pneumonia")]
    first = out["listed"][0]
    assert first["covid_probability"] == 0.1
    assert first["probabilities"] == {"normal": 0.7, "pneumonia": 0.2, "covid": 0.1}
    assert errors.caption(first) == "pneumonia -> normal\nP(pneumonia) 0.20 P(normal) 0.70"
    assert errors.odds(first) == "P(pneumonia) 0.20 P(normal) 0.70"


def test_three_class_at_a_covid_threshold_orders_by_the_served_decision():
    # Threshold 0.2: COVID above it, else the more probable of normal and pneumonia.
    assert THREE.classes == ("normal", "pneumonia", "covid")
    probabilities = np.array([
        [0.70, 0.09, 0.21],  # normal called COVID just over the threshold: a near miss
        [0.05, 0.05, 0.90],  # pneumonia called COVID far over it
        [0.55, 0.30, 0.15],  # COVID missed a little under the threshold
        [0.60, 0.40, 0.00],  # pneumonia called normal
        [0.10, 0.85, 0.05],  # right
        [0.45, 0.05, 0.50],  # normal called COVID, though normal was nearly as probable
    ])
    labels = np.array([0, 1, 2, 1, 1, 0])
    predicted = np.array([2, 2, 0, 0, 1, 2])
    out = errors.misclassified(THREE, labels, predicted, probabilities, None, list("abcdef"), threshold=0.2)
    assert out["order"] == errors.THREE_CLASS_THRESHOLD_ORDER and out["n"] == 5
    # In log-odds from the decision: 0.90 vs 0.2 -> 3.58; 0.50 vs 0.2 -> 1.39 (not log(0.50 / 0.45) = 0.11:
    # a film called COVID is judged by the threshold); pneumonia -> normal log(0.6 / 0.4) = 0.41;
    # 0.15 vs 0.2 -> 0.35; 0.21 vs 0.2 -> 0.06.
    assert [e["index"] for e in out["listed"]] == [1, 5, 3, 2, 0]
    # Read as an argmax (no threshold), the probability gaps order them otherwise (0.85, 0.40, 0.20, 0.05, -0.49).
    argmax = errors.misclassified(THREE, labels, predicted, probabilities, None, list("abcdef"))
    assert argmax["order"] == errors.MULTICLASS_ORDER
    assert [e["index"] for e in argmax["listed"]] == [1, 2, 3, 5, 0]


def test_gallery_shows_the_listed_films_and_is_absent_without_errors():
    entry = {"index": 1, "ref": "record 1", "group": "g", "true": "covid", "predicted": "normal",
             "covid_probability": 0.12, "source": "cohen", "view": features.UNKNOWN}
    assert errors.caption(entry) == "covid -> normal\nP(covid) 0.12\ncohen"
    assert errors.where(dict(entry, view="PA")) == "cohen PA"
    png = errors.gallery_png([_png(0), _png(200)], [entry], title="1 shown")
    assert Image.open(io.BytesIO(png)).size[0] > 100
    assert errors.gallery_png([_png(0)], [], title="none") is None


def test_a_film_given_no_chance_of_its_true_class_still_ranks_by_the_class_that_won():
    # Two pneumonia films called normal with P(pneumonia) = 0: log(P(predicted) / P(true)) is clipped
    # as metrics.logit clips, so the more confident call (0.95) comes first rather than a tie at infinity.
    # Clipped alike, both scales agree: they are more wrong (16.1, 15.5) than a COVID film missed at
    # P(covid) = 1e-4 (9.2 from 0.5).
    probabilities = np.array([[0.55, 0.0, 0.45], [0.95, 0.0, 0.05], [0.5, 0.4999, 1e-4]])
    out = errors.misclassified(THREE, np.array([1, 1, 2]), np.array([0, 0, 0]), probabilities, None, ["a", "b", "c"],
                               threshold=0.5)
    assert [e["index"] for e in out["listed"]] == [1, 0, 2]


def test_each_listed_film_carries_its_own_group_and_the_gallery_its_own_pictures(monkeypatch):
    covid = np.array([0.9, 0.2, 0.8])
    labels, predicted = np.array([0, 1, 0]), np.array([1, 0, 1])
    out = errors.misclassified(BINARY, labels, predicted, np.stack([1 - covid, covid], axis=1), ["g0", "g1", "g2"],
                               ["r0", "r1", "r2"], threshold=0.5)
    assert [(e["index"], e["group"], e["ref"]) for e in out["listed"]] == [(0, "g0", "r0"), (2, "g2", "r2"), (1, "g1", "r1")]
    drawn = _drawn(monkeypatch)
    # Thumbnails are picked by each entry's index into the evaluated images, and only the first `limit`.
    assert errors.gallery_png([_png(10), _png(20), _png(30)], out["listed"], title="t", limit=2) == b"png"
    [(grays, captions, title)] = drawn
    assert [int(g.mean()) for g in grays] == [10, 30] and title == "t"
    assert captions == [errors.caption(e) for e in out["listed"][:2]]


def test_by_default_the_report_lists_more_films_than_the_gallery_shows(monkeypatch):
    n = errors.MAX_LISTED + 10
    labels = np.zeros(n, int)
    out = errors.misclassified(BINARY, labels, 1 - labels, np.tile([0.1, 0.9], (n, 1)), None, [""] * n, threshold=0.5)
    assert out["n"] == n and len(out["listed"]) == errors.MAX_LISTED > errors.MAX_GALLERY
    drawn = _drawn(monkeypatch)
    errors.gallery_png([_png(0)] * n, out["listed"], title="t")
    assert len(drawn[0][0]) == errors.MAX_GALLERY


def test_each_listed_film_carries_its_own_slices_and_equally_wrong_films_keep_their_order():
    # 20 films, all wrong: numpy's default sort happens to keep ties in order in shorter arrays.
    covid = np.tile([0.9, 0.3, 0.9, 0.2], 5)
    labels, predicted = np.tile([0, 1], 10), (covid > 0.5).astype(int)
    out = errors.misclassified(BINARY, labels, predicted, np.stack([1 - covid, covid], axis=1), None,
                               [f"r{i}" for i in range(20)], {"source": [f"s{i}" for i in range(20)],
                                                              "view": [f"v{i}" for i in range(20)]}, threshold=0.5)
    # The 0.9 films are equally wrong: in their own order, then the 0.2 ones, then the 0.3 ones.
    assert [e["index"] for e in out["listed"]] == list(range(0, 20, 2)) + list(range(3, 20, 4)) + list(range(1, 20, 4))
    assert all((e["source"], e["view"]) == (f"s{e['index']}", f"v{e['index']}") for e in out["listed"])
