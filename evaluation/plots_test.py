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
