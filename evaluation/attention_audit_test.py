"""The attention audit's figures on heat maps whose answer is known."""
import numpy as np
import pytest

from covid_cxr.evaluation import attention_audit

SIZE = 20  # a 15% band is 3 pixels: the centre is 14 x 14, the band 204 of 400 pixels


def _spot(row, col, size=SIZE):
    heat = np.zeros((size, size), dtype=np.float32)
    heat[row, col] = 1.0
    return heat


def test_the_border_share_is_the_bands_part_of_the_maps_heat():
    assert attention_audit.border_share(np.ones((SIZE, SIZE))) == pytest.approx(204 / 400)
    assert attention_audit.border_share(_spot(0, 10)) == 1.0 and attention_audit.border_share(_spot(10, 10)) == 0.0
    half = _spot(1, 1) + _spot(10, 10) * 3  # a quarter of the heat in the band
    assert attention_audit.border_share(half) == pytest.approx(0.25)
    assert attention_audit.border_share(np.zeros((SIZE, SIZE))) is None  # no evidence: no share, not 0 / 0


@pytest.mark.parametrize("row, col, in_border", [(2, 10, True), (3, 10, False), (10, 16, False), (10, 17, True),
                                                 (19, 19, True), (10, 3, False)])
def test_the_peak_is_in_the_border_when_the_hottest_pixel_is_in_the_band(row, col, in_border):
    heat = _spot(row, col) + 0.5 * _spot(10, 10)  # a lesser peak in the centre
    assert attention_audit.peak_in_border(heat) is in_border


def test_the_band_area_share_follows_the_border_fraction():
    assert attention_audit.band_area_share(SIZE) == pytest.approx(204 / 400)
    assert attention_audit.band_area_share(SIZE, 0.25) == pytest.approx(1 - (10 / 20) ** 2)
    wide = attention_audit.audit([lambda: _spot(4, 10)], [1], ("normal", "covid"), border=0.25)
    assert wide["band_area_share"] == pytest.approx(0.75) and wide["border_fraction"] == 0.25
    covid = wide["per_true_class"]["covid"]  # row 4 is in a 5-pixel band, not a 3-pixel one
    assert covid["peak_in_border"]["k"] == 1 and covid["border_share"]["value"] == 1.0


def test_the_audit_reports_each_true_class_and_counts_blank_maps_apart():
    maps = [_spot(0, 0), _spot(10, 10), _spot(0, 5) + _spot(10, 10), np.zeros((SIZE, SIZE)),  # normal
            _spot(10, 10), _spot(9, 9)]  # covid: all centre
    calls = []
    makers = [lambda heat=heat, i=i: calls.append(i) or heat for i, heat in enumerate(maps)]
    result = attention_audit.audit(makers, [0, 0, 0, 0, 1, 1], ("normal", "covid"))
    assert calls == list(range(6))  # each map made once, in order
    assert result["band_area_share"] == pytest.approx(204 / 400) and result["border_fraction"] == 0.15
    normal, covid = result["per_true_class"]["normal"], result["per_true_class"]["covid"]
    assert (normal["films"], normal["blank_maps"], covid["films"], covid["blank_maps"]) == (4, 1, 2, 0)
    assert normal["border_share"]["value"] == pytest.approx((1 + 0 + 0.5) / 3) and normal["border_share"]["n"] == 3
    lo, hi = normal["border_share"]["ci95"]
    assert (lo, hi) == (0.0, 1.0)  # sd 0.5 over 3 maps: 0.5 +- t(2 df) 4.30 * 0.5 / sqrt(3), past both ends
    # The tie at (0, 5) and (10, 10) goes to the first hottest pixel row by row: the band's.
    peak = normal["peak_in_border"]
    assert (peak["k"], peak["n"]) == (2, 3)
    assert attention_audit.summary_lines(result)[1] == (  # each figure in its place
        f"  normal: 4 films: border share 0.50 [{lo:.2f}, {hi:.2f}]; peak in border 2/3 = 0.67 "
        f"[{peak['ci95'][0]:.2f}, {peak['ci95'][1]:.2f}]; blank maps 1")
    assert covid["border_share"]["value"] == 0.0 and covid["peak_in_border"]["k"] == 0
    assert covid["border_share"]["ci95"] == [0.0, 0.0]


def test_given_the_calls_the_evidence_for_each_call_is_reported_right_or_wrong():
    """Two normals and a COVID film all called COVID, one normal called normal: the calls regroup the films."""
    maps = [_spot(0, 0), _spot(0, 19), _spot(10, 10), _spot(10, 10)]
    result = attention_audit.audit([lambda heat=heat: heat for heat in maps], [0, 0, 0, 1], ("normal", "covid"),
                                   predicted=[1, 1, 0, 1])
    called = result["per_predicted_class"]
    assert called["covid"]["films"] == 3 and called["covid"]["peak_in_border"]["k"] == 2
    assert called["normal"]["films"] == 1 and called["normal"]["peak_in_border"]["k"] == 0
    assert result["per_true_class"]["normal"]["films"] == 3  # unchanged by the calls
    lines = attention_audit.summary_lines(result)
    assert "  called covid: 3 films: border share 0.67" in "\n".join(lines) and len(lines) == 1 + 2 + 2
    assert "per_predicted_class" not in attention_audit.audit([lambda: _spot(0, 0)], [0], ("normal", "covid"))
    with pytest.raises(ValueError, match="^1 heat maps for 1 labels and 2 predictions$"):
        attention_audit.audit([lambda: _spot(0, 0)], [0], ("normal", "covid"), predicted=[0, 1])


def test_a_class_without_films_is_left_out_and_one_whose_maps_are_all_blank_says_so():
    result = attention_audit.audit([lambda: np.zeros((SIZE, SIZE))], [2], ("normal", "pneumonia", "covid"))
    assert list(result["per_true_class"]) == ["covid"]
    assert result["per_true_class"]["covid"] == {"films": 1, "blank_maps": 1, "border_share": None,
                                                 "peak_in_border": None}
    lines = attention_audit.summary_lines(result)
    assert lines == ["outer 15% band: 51% of the film's area", "  covid: 1 film, every map blank"]


def test_one_film_has_no_interval_and_a_count_mismatch_is_refused():
    result = attention_audit.audit([lambda: _spot(0, 0)], [1], ("normal", "covid"))
    assert result["per_true_class"]["covid"]["border_share"] == {"value": 1.0, "ci95": None, "n": 1}
    assert attention_audit.summary_lines(result)[1].startswith("  covid: 1 film: border share 1.00; peak in border 1/1")
    with pytest.raises(ValueError, match="^2 heat maps for 1 labels$"):
        attention_audit.audit([lambda: _spot(0, 0)] * 2, [1], ("normal", "covid"))
    assert attention_audit.summary_lines(attention_audit.audit([], [], ("normal", "covid"))) == ["no heat maps"]


def test_per_source_each_sources_films_are_reported_apart():
    maps = [_spot(0, 0), _spot(10, 10), _spot(0, 19), _spot(10, 10)]
    result = attention_audit.audit([lambda heat=heat: heat for heat in maps], [0, 0, 0, 1], ("normal", "covid"),
                                   sources=["rsna", "radiography", "rsna", "radiography"])
    assert list(result["per_source"]) == ["radiography", "rsna"]
    rsna, radiography = result["per_source"]["rsna"], result["per_source"]["radiography"]
    assert list(rsna) == ["normal"] and rsna["normal"]["peak_in_border"]["k"] == rsna["normal"]["films"] == 2
    assert radiography["normal"]["peak_in_border"]["k"] == 0 and radiography["covid"]["films"] == 1
    assert result["per_true_class"]["normal"]["peak_in_border"]["k"] == 2  # all sources together
    lines = attention_audit.summary_lines(result)
    assert lines[-1].startswith("    rsna normal: 2 films: border share 1.00") and len(lines) == 1 + 2 + 3
    with pytest.raises(ValueError, match="^4 heat maps for 4 labels and 3 sources$"):
        attention_audit.audit([lambda: _spot(0, 0)] * 4, [0] * 4, ("normal", "covid"), sources=["a"] * 3)


def _served_with_known_maps(monkeypatch, calls: list):
    """A served model whose film i transforms to i and whose explainer logs (film, class) in `calls`."""
    from covid_cxr.serving import explain

    class Explainer:  # as serving/explain.Explainer: COVID's evidence 4 pixels in, the other class's central
        method, target_layer = "grad-cam", "conv"

        def __init__(self, model):
            assert model is served

        def heatmap(self, image_xf, class_index):
            calls.append((int(image_xf), class_index))
            return (_spot(4, 10) if class_index == 1 else _spot(10, 10)), self.method

    class Served:
        def transform_images(self, pngs):
            return np.array([int(png) for png in pngs])

    served = Served()
    monkeypatch.setattr(explain, "Explainer", Explainer)
    return served


def test_audit_model_measures_each_films_map_of_its_predicted_class(monkeypatch):
    calls = []
    served, n = _served_with_known_maps(monkeypatch, calls), 51
    progress = []
    result = attention_audit.audit_model(served, [str(i).encode() for i in range(n)], [1] * n, [i % 2 for i in range(n)],
                                         ("normal", "covid"), border=0.25, sources=["a"] * 50 + ["b"],
                                         progress=progress.append)
    assert calls == [(i, i % 2) for i in range(n)]  # each film once, its own predicted class
    assert progress == ["attention audit: film 1 of 51", "attention audit: film 51 of 51"]  # every 50 films
    assert (result["method"], result["target"], result["border_fraction"]) == ("grad-cam", "conv", 0.25)
    covid = result["per_true_class"]["covid"]
    assert (covid["peak_in_border"]["k"], covid["peak_in_border"]["n"]) == (25, 51)  # row 4: in a 5-pixel band
    assert result["per_source"]["b"]["covid"]["films"] == 1


def test_the_method_names_the_layer_the_heat_maps_come_from(monkeypatch):
    served = _served_with_known_maps(monkeypatch, [])
    result = attention_audit.audit_model(served, [b"0", b"1"], [0, 1], [0, 1], ("normal", "covid"))
    assert attention_audit.method_text(result) == "grad-cam at layer conv"
    averaged = dict(result, target="out_relu + Conv_1")  # an averaged ensemble: each member's layer
    assert attention_audit.method_text(averaged) == "grad-cam at layers out_relu + Conv_1"
    # Gradient saliency attributes to no layer; a report.json from before the layer was recorded has none.
    assert attention_audit.method_text({"method": "gradient-saliency", "target": None}) == "gradient-saliency"
    assert attention_audit.method_text({"method": "grad-cam"}) == "grad-cam"


def test_a_limit_draws_films_spread_over_each_true_class_and_says_so(monkeypatch):
    assert attention_audit.spread_over_each_class([1, 0, 1, 1, 0], 1).tolist() == [0, 1]
    assert attention_audit.spread_over_each_class([1, 0, 1, 1, 0], 2).tolist() == [0, 1, 3, 4]  # first and last
    assert attention_audit.spread_over_each_class([1, 0, 1, 1, 0], 9).tolist() == [0, 1, 2, 3, 4]
    assert attention_audit.spread_over_each_class([], 3).tolist() == []
    # One class's films grouped by source (as data often comes): both sources are looked at.
    assert attention_audit.spread_over_each_class([0] * 10 + [1] * 10, 3).tolist() == [0, 4, 9, 10, 14, 19]
    calls = []
    served = _served_with_known_maps(monkeypatch, calls)
    labels, predicted = [1, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 1]
    result = attention_audit.audit_model(served, [str(i).encode() for i in range(6)], labels, predicted,
                                         ("normal", "covid"), sources=["a", "b", "b", "a", "a", "b"], limit=2)
    assert calls == [(i, predicted[i]) for i in (0, 1, 3, 5)]  # the films left out cost no map
    assert {name: e["films"] for name, e in result["per_true_class"].items()} == {"normal": 2, "covid": 2}
    assert {name: e["films"] for name, e in result["per_predicted_class"].items()} == {"normal": 1, "covid": 3}
    assert result["per_source"]["b"]["normal"]["films"] == 2 and result["per_source"]["a"]["covid"]["films"] == 2
    assert result["limit"] == 2
    assert attention_audit.summary_lines(result)[0] == ("outer 15% band: 51% of the film's area; films: 2 of each "
                                                        "true class, spread over the data")  # the counts are not the data's
    unlimited = attention_audit.audit_model(served, [str(i).encode() for i in range(6)], labels, predicted,
                                            ("normal", "covid"))
    assert unlimited["limit"] is None and sum(e["films"] for e in unlimited["per_true_class"].values()) == 6
    assert attention_audit.summary_lines(unlimited)[0] == "outer 15% band: 51% of the film's area"


def test_the_border_share_interval_stays_within_zero_and_one_and_holds_its_95_percent_on_few_films():
    # Shares are fractions: an interval past 0 or 1 holds impossible values.
    spread = attention_audit._mean_with_ci([0.02, 0.95])
    assert 0.0 <= spread["ci95"][0] <= spread["value"] <= spread["ci95"][1] <= 1.0
    # --attention-limit 5: five maps of a class. A 95% interval must hold the true mean share about 95% of
    # the time there too (the normal quantile's held it 87% of the time: too narrow for five).
    rng = np.random.default_rng(0)
    held = [lo <= 0.5 <= hi for lo, hi in (attention_audit._mean_with_ci(rng.beta(2, 2, 5))["ci95"]
                                           for _ in range(4000))]
    assert np.mean(held) == pytest.approx(0.95, abs=0.015)
