import math

from covid_cxr.evaluation import metrics, plots

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


def test_roc_names_its_point_by_the_models_decision(drawn):
    y = np.array([0, 0, 1, 1])
    plots.roc_png([("covid vs rest", y, np.array([0.1, 0.4, 0.35, 0.8]))], operating_point=(0.5, 1.0),
                  point_label=plots.ARGMAX_DECISION)
    [ax] = drawn[-1].axes
    assert _legend(ax) == ["covid vs rest (AUC 0.750)", "argmax decision (no COVID threshold)"]


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


def _caption_texts(ax):
    return [t for t in (ax.title, *ax.texts) if t.get_text()]  # a title or a text: measured alike


def _caption(ax):
    return "".join(t.get_text() for t in _caption_texts(ax))


def _extents(fig):
    """Each image's and each caption's box in pixels, as the figure lays them out when drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()  # the PNG is written and the figure closed: draw it again to measure
    renderer = fig.canvas.get_renderer()
    return ([ax.images[0].get_window_extent(renderer) for ax in fig.axes if ax.images],
            [t.get_window_extent(renderer) for ax in fig.axes for t in _caption_texts(ax)])


def test_gallery_puts_each_caption_under_its_own_image(drawn):
    grays = [np.full((8, 8), v, dtype=np.uint8) for v in (0, 100, 200)]
    plots.gallery_png(grays, ["a", "b", "c"], title="t", columns=6)
    axes = drawn[-1].axes
    assert len(axes) == 3  # never more columns than images
    assert [(_caption(ax), int(ax.images[0].get_array()[0, 0])) for ax in axes] == [("a", 0), ("b", 100), ("c", 200)]
    images, captions = _extents(drawn[-1])
    for image, caption in zip(images, captions):
        assert caption.y1 < image.y0 and caption.x0 < (image.x0 + image.x1) / 2 < caption.x1


def test_no_caption_covers_a_tall_or_a_wide_film(drawn):
    # A tall film fills its cell's height: a title set just below the axes was lifted onto its last rows.
    shapes = [(300, 100), (80, 300), (120, 120), (400, 90), (60, 240)]
    grays = [np.full(shape, 120, dtype=np.uint8) for shape in shapes]
    plots.gallery_png(grays, ["covid -> normal\nP(covid) 0.12\ncohen PA"] * len(shapes), title="Errors", columns=3)
    images, captions = _extents(drawn[-1])
    assert len(images) == len(captions) == len(shapes)
    assert not [(i, c) for i, image in enumerate(images) for c, caption in enumerate(captions) if image.overlaps(caption)]


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


def test_roc_axes_and_curve_data_follow_the_metrics_module(drawn):
    y, s = np.array([0, 1, 0, 1, 1]), np.array([0.2, 0.3, 0.6, 0.7, 0.9])
    # An undefined curve listed first does not stop the defined ones after it from being drawn.
    plots.roc_png([("one class", np.zeros(3), np.array([0.1, 0.2, 0.3])), ("all", y, s)], title="ROC test split")
    [ax] = drawn[-1].axes
    fpr, tpr, _ = metrics.roc_curve(y, s)
    curve = ax.lines[-1]
    np.testing.assert_array_equal(curve.get_xdata(), fpr)  # x is the false positive rate, y the sensitivity
    np.testing.assert_array_equal(curve.get_ydata(), tpr)
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "1 - specificity (false positive rate)", "sensitivity (true positive rate)", "ROC test split")
    assert ax.get_xlim() == ax.get_ylim() == (-0.01, 1.01)  # the corners (0, 0) and (1, 1) stay in view


def test_roc_without_any_labelled_line_has_no_empty_legend(drawn):
    plots.roc_png([("one class", np.ones(3), np.array([0.1, 0.5, 0.9]))])
    [ax] = drawn[-1].axes
    assert ax.get_legend() is None
    assert _texts(ax) == ["ROC undefined:\nthe data holds one class only"]


def test_confusion_shares_are_per_true_class_and_drawn_on_an_absolute_scale(drawn):
    cm = np.array([[3, 1], [2, 2]])
    plots.confusion_png(cm, ["normal", "covid"], title="Confusion test split")
    ax = drawn[-1].axes[0]
    assert _texts(ax) == ["3\n75%", "1\n25%", "2\n50%", "2\n50%"]  # each row sums to 100%, not the whole table
    assert [t.get_color() for t in ax.texts] == ["white", "black", "black", "black"]  # legible on dark cells
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.75, 0.25], [0.5, 0.5]])
    assert ax.images[0].get_clim() == (0, 1)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["normal", "covid"]
    assert ax.get_title() == "Confusion test split"


def test_gallery_shows_every_image_on_a_partial_last_row_without_axes(drawn):
    grays = [np.full((8, 8), 10 * v, dtype=np.uint8) for v in range(7)]
    plots.gallery_png(grays, [f"film {v}" for v in range(7)], title="Gallery", columns=6)
    fig = drawn[-1]
    shown = [ax for ax in fig.axes if ax.images]
    assert [_caption(ax) for ax in shown] == [f"film {v}" for v in range(7)]  # the 7th is not dropped
    assert not any(ax.axison for ax in fig.axes)
    assert fig._suptitle.get_text() == "Gallery"
    assert {ax.images[0].get_clim() for ax in shown} == {(0, 255)}  # grey levels as stored, not re-stretched


@pytest.mark.parametrize("history, expected", [
    ({"loss": [0.5, 0.4], "learning_rate": [0.1, 0.01]}, {"loss": [0.5, 0.4]}),  # bookkeeping
    ({"loss": [0.5], "note": "12"}, {"loss": [0.5]}),  # a text value is not a series of its characters
    ({"loss": [0.5], "names": ["a", "b"], "gaps": [0.1, None]}, {"loss": [0.5]}),  # not numbers: not plotted
])
def test_numeric_series_keeps_only_numeric_lists(history, expected):
    assert plots.numeric_series(history) == expected


def test_a_member_without_epochs_has_no_span():
    assert plots._member_spans({"member": [0, 0], "member_names": ["a", "b"]}) == [("a", (0, 1))]


def test_history_layout_member_changes_and_names(drawn):
    history = {"loss": [0.5, 0.4, 0.6, 0.5], "auc": [0.6, 0.7, 0.6, 0.8], "precision": [0.5] * 4,
               "recall": [0.4] * 4, "phase": [1, 1, 1, 1], "member": [0, 0, 1, 1], "member_names": ["big", "small"]}
    plots.history_png(history)
    axes = drawn[-1].axes
    panels = [ax for ax in axes if ax.axison]
    assert [ax.get_title() for ax in panels] == ["loss", "auc", "precision", "recall"]
    assert len(axes) == 6  # three columns, two rows: the unused two are blank
    assert panels[3].get_subplotspec().rowspan.start == 1 and panels[3].get_subplotspec().colspan.start == 0
    loss = panels[0]
    assert loss.get_xlabel() == "epoch"
    # The next ensemble member in the same phase is still a change (between epochs 2 and 3).
    assert [list(d.get_xdata())[0] for d in loss.lines if d.get_linestyle() == ":"] == [2.5]
    # Each member's name is centred over its epochs (1-based: epochs 1-2, then 3-4).
    assert [(t.get_text(), t.get_position()[0]) for t in loss.texts] == [("big", 1.5), ("small", 3.5)]


def test_only_epochs_flagged_kept_get_a_ring_not_nan_padding(drawn):
    # trainer.training.concatenate_histories pads a member's missing "kept" with NaN: not a served epoch.
    plots.history_png({"loss": [0.5, 0.4, 0.3], "kept": [math.nan, 1.0, 0.0]})
    [ring] = [line for line in drawn[-1].axes[0].lines if line.get_marker() == "o"]
    assert list(ring.get_xdata()) == [2]


def test_an_ensembles_epochs_are_counted_per_member_as_the_training_table_counts_them(drawn):
    # Two members of 3 epochs each: the second's served epoch is its own epoch 2 (the table's
    # "epoch 2"), not the plot's sixth point.
    history = {"loss": [0.7, 0.5, 0.4, 0.8, 0.6, 0.65], "auc": [0.6, 1.0, 1.0, 0.7, 1.0, 1.0],
               "epoch": [0, 1, 2, 0, 1, 2], "phase": [0] * 6, "member": [0, 0, 0, 1, 1, 1],
               "member_names": ["cnn3", "cnn4"], "kept": [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]}
    plots.history_png(history)
    drawn[-1].canvas.draw()
    loss = drawn[-1].axes[0]
    assert loss.get_xlabel() == "epoch (of each phase and member)"
    ticks = {int(t.get_position()[0]): t.get_text() for t in loss.get_xticklabels() if t.get_text()}
    assert ticks == {1: "1", 2: "2", 3: "3", 4: "1", 5: "2", 6: "3"}
    # The member names sit above the frame, off the curves that reach 1.0.
    auc = drawn[-1].axes[1]
    assert [(t.get_text(), t.get_position()[1], t.get_va()) for t in auc.texts] == [("cnn3", 1.0, "bottom"),
                                                                                   ("cnn4", 1.0, "bottom")]
    frame_top = auc.get_window_extent().y1
    assert all(t.get_window_extent().y0 >= frame_top - 1 for t in auc.texts), (frame_top, [t.get_window_extent() for t in auc.texts])
    assert auc.title.get_window_extent().y0 >= max(t.get_window_extent().y1 for t in auc.texts)


def test_long_stretches_are_labelled_at_round_epochs_without_crowding_their_boundary():
    # The demo's two members of 15 epochs: the second's epoch 1 would print beside the first's 15.
    assert plots._own_epoch_ticks(list(range(1, 16)) * 2) == [1, 5, 10, 15, 20, 25, 30]
    # A stretch's last epoch just past a round one is left unlabelled (11 beside 10); 13 is far enough from 10.
    assert plots._own_epoch_ticks(list(range(1, 12)) + list(range(1, 14))) == [1, 5, 10, 16, 21, 24]
