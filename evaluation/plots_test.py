import math

from covid_cxr.evaluation import plots

ENSEMBLE_HISTORY = {"member": [0, 0, 0, 1, 1], "phase": [1, 2, 2, 1, 2], "epoch": [0, 0, 1, 0, 0],
                    "member_names": ["mobilenet_v2", "mobilenet_v2_035"], "kept": [0.0, 0.0, 1.0, 1.0, 0.0],
                    "loss": [0.7, 0.5, 0.4, 0.8, 0.6], "val_auc": [0.8, 0.9, 0.92, 0.7, math.nan]}


def test_member_spans_name_each_members_epochs():
    assert plots._member_spans(ENSEMBLE_HISTORY) == [("mobilenet_v2", (0, 2)), ("mobilenet_v2_035", (3, 4))]
    assert plots._member_spans({"loss": [1.0]}) == []


def test_bookkeeping_is_not_plotted_and_the_ensemble_plot_renders():
    assert set(plots.numeric_series(ENSEMBLE_HISTORY)) == {"loss", "val_auc"}
    png = plots.history_png(ENSEMBLE_HISTORY)
    assert png.startswith(b"\x89PNG")


import numpy as np
import pytest


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the plots module renders, kept for inspection (the PNGs are still written)."""
    figures = []
    real_png = plots._png
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or real_png(fig))
    return figures


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []


def test_roc_draws_each_defined_curve_with_its_auc_and_the_operating_point(drawn):
    y = np.array([0, 0, 1, 1])
    plots.roc_png([("covid vs normal", y, np.array([0.1, 0.4, 0.35, 0.8])),
                   ("one class", np.ones(4), np.array([0.1, 0.2, 0.3, 0.4]))], operating_point=(0.25, 0.5))
    [ax] = drawn[-1].axes
    assert _legend(ax) == ["covid vs normal (AUC 0.750)", "stored threshold"]  # no AUC: no curve
    point = ax.lines[-1]
    assert (list(point.get_xdata()), list(point.get_ydata())) == ([0.25], [0.5])
    assert not any("undefined" in t for t in _texts(ax))


def test_roc_of_one_class_data_says_it_is_undefined(drawn):
    plots.roc_png([("covid vs normal", np.ones(3), np.array([0.1, 0.5, 0.9]))], operating_point=(0.0, 1.0))
    [ax] = drawn[-1].axes
    assert _texts(ax) == ["ROC undefined:\nthe data holds one class only"]
    assert _legend(ax) == ["stored threshold"]


def test_confusion_cells_show_counts_and_the_share_of_their_true_class(drawn):
    plots.confusion_png(np.array([[3, 1], [0, 0]]), ["normal", "covid"])
    [ax] = drawn[-1].axes[:1]
    # Row i is the true class, column j the prediction; a class with no films shows 0%, not NaN.
    assert _texts(ax) == ["3\n75%", "1\n25%", "0\n0%", "0\n0%"]
    assert [t.get_position() for t in ax.texts[:2]] == [(0, 0), (1, 0)]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["normal", "covid"]


def test_gallery_puts_each_caption_under_its_own_image(drawn):
    grays = [np.full((8, 8), v, dtype=np.uint8) for v in (0, 100, 200)]
    plots.gallery_png(grays, ["a", "b", "c"], title="t", columns=6)
    axes = drawn[-1].axes
    assert len(axes) == 3  # never more columns than images
    assert [(ax.get_title(), int(ax.images[0].get_array()[0, 0])) for ax in axes] == [("a", 0), ("b", 100), ("c", 200)]


def test_history_panels_phase_changes_and_the_served_epochs(drawn):
    history = {"loss": [0.7, 0.5, 0.4], "val_loss": [0.8, 0.6, 0.65], "auc": [0.6, 0.7, 0.8],
               "phase": [1, 1, 2], "kept": [0.0, 1.0, 0.0], "lr": [0.1, 0.1, 0.01]}
    plots.history_png(history)
    loss, auc = drawn[-1].axes
    assert (loss.get_title(), auc.get_title()) == ("loss", "auc")  # loss first; val_loss drawn in its panel
    assert _legend(loss) == ["loss", "val_loss", "weights served"]
    rings = [line for line in loss.lines if line.get_marker() == "o"]
    assert [(list(r.get_xdata()), list(r.get_ydata())) for r in rings] == [([2], [0.5]), ([2], [0.6])]
    dotted = [line for line in loss.lines if line.get_linestyle() == ":"]
    assert [list(d.get_xdata())[0] for d in dotted] == [2.5]  # between epoch 2 (phase 1) and epoch 3 (phase 2)
    assert plots.history_png({"epoch": [0, 1], "lr": [0.1, 0.1], "loss": []}) is None
    # A metric recorded for fewer epochs than the run had: no ring past its end.
    plots.history_png({"loss": [0.5, 0.4], "kept": [0.0, 0.0, 1.0]})
    assert [line for line in drawn[-1].axes[0].lines if line.get_marker() == "o"][0].get_xdata().size == 0
