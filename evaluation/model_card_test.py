"""The model card: task, data, thresholds, metrics (with CIs when an evaluation is given), limitations."""
import json

from covid_cxr.evaluation import gate_report, metrics, model_card
from covid_cxr.serving import model_metadata

METADATA = {
    "task": "covid-vs-normal",
    "classes": ["normal", "covid"],
    "threshold": 0.3125,
    "target_sensitivity": 0.95,
    "family": "cnn3",
    "family_note": "cnn3: scratch CNN on 1-channel input",
    "hyperparameters": {"learning_rate": 0.001},
    "transform_image_size": 224,
    "train_class_counts": {"normal": 700, "covid": 300},
    "eval_class_counts": {"normal": 150, "covid": 60},
    "data_summary": {"accepted": 1300, "patients": 900, "groups": 880, "rejected": 42,
                     "per_source_class": {"cohen": {"covid": 360}, "rsna": {"normal": 940}}},
    "gate": {"min_sensitivity": 0.9, "min_specificity": 0.85, "min_auc": 0.0, "max_auc_regression": 0.01},
    "validation_metrics": {"split": "eval", "sensitivity": metrics.proportion(57, 60),
                           "specificity": metrics.proportion(120, 150)},
}


def _report(blessed=True):
    return gate_report.GateReport(
        blessed=blessed,
        metrics={"sensitivity": 0.93, "specificity": 0.88, "AUC": 0.95, "examples": 200.0},
        failures=[] if blessed else ["sensitivity 0.800 is below the required minimum 0.900"],
        slices={"source:cohen": {"examples": 70.0, "sensitivity": 0.93}, "source:rsna": {"examples": 130.0}},
    )


def test_card_without_evaluation_has_every_section():
    card = model_card.render(METADATA, _report())
    assert model_card.FILE_NAME == "model_card.md"
    for text in ("# covid-cxr model card: covid-vs-normal", "Not a diagnostic device", "## Task", "## Thresholds",
                 "0.3125 (COVID when above it)", "sensitivity >= 0.95", "sensitivity >= 0.9, specificity >= 0.85", "## Data",
                 "| cohen | covid 360 |", "| rsna | normal 940 |", "training examples per class: normal 700, covid 300",
                 "held-out test examples per source: cohen 70, rsna 130", "(BLESSED)", "| sensitivity | 0.9300 |",
                 "## Intended use and limitations", "covid-cxr evaluate",
                 "on the validation split at this decision: sensitivity 0.950 (95% CI"):
        assert text in card, text
    assert "sharing any slack" not in card  # sensitivity-only rule: no specificity target to name
    card = model_card.render(dict(METADATA, target_specificity=0.9), _report())
    assert "for sensitivity >= 0.95, sharing any slack with specificity >= 0.9" in card


def test_card_with_evaluation_shows_confidence_intervals():
    evaluation = {
        "data": {"path": "/data/test", "format": "tfrecords"}, "n": 200, "class_counts": {"normal": 130, "covid": 70},
        "sensitivity": metrics.proportion(65, 70), "specificity": metrics.proportion(115, 130),
        "precision": metrics.proportion(65, 80), "npv": metrics.proportion(115, 120),
        "accuracy": metrics.proportion(180, 200),
        "auc": {"value": 0.95, "ci95": [0.92, 0.97], "method": "bootstrap", "n_positive": 70, "n_negative": 130},
        "per_source": {"cohen": {"n": 70, "sensitivity": metrics.proportion(65, 70),
                                 "specificity": metrics.proportion(0, 0),
                                 "auc": {"value": None, "ci95": None}},
                       "radiography": {"n": 130, "sensitivity": metrics.proportion(9, 10),
                                       "specificity": metrics.proportion(110, 120),
                                       "auc": {"value": 0.55, "ci95": [0.41, 0.70]}}},
        "sources_below_pooled_auc": ["radiography"],
        "shortcut_audit": {"verdict": "SHORTCUT: borders predict the label"},
    }
    card = model_card.render(METADATA, _report(), evaluation=evaluation)
    lo, hi = metrics.wilson_interval(65, 70)
    assert f"| sensitivity | {65 / 70:.3f} | {lo:.3f} – {hi:.3f} | 65/70 |" in card
    assert "| AUC | 0.950 | 0.920 – 0.970 | 70 pos / 130 neg |" in card
    lo, hi = metrics.wilson_interval(115, 120)
    assert f"| NPV | {115 / 120:.3f} | {lo:.3f} – {hi:.3f} | 115/120 |" in card
    assert "| cohen | 70 |" in card and "n/a" in card
    assert "AUC within the source (95% CI)" in card
    assert "| 0.550 (0.410 – 0.700) |" in card  # the within-source AUC column
    assert "**Warning: within-source AUC wholly below the pooled AUC's interval: radiography; there" in card
    assert "wholly below" not in model_card.render(METADATA, _report(), evaluation=dict(evaluation, sources_below_pooled_auc=[]))
    assert "shortcut audit (image borders only): SHORTCUT" in card
    assert "/data/test" in card


def test_card_not_blessed_and_minimal_metadata():
    card = model_card.render({"task": "three-class", "classes": ["normal", "pneumonia", "covid"]}, _report(False))
    assert "(NOT BLESSED)" in card and "below the required minimum" in card
    assert "most probable class (no threshold)" in card  # exported before three-class had a threshold
    assert "not recorded" in card  # no class counts in the metadata


def test_card_says_how_a_three_class_label_is_chosen():
    old = {"task": "three-class", "classes": ["normal", "pneumonia", "covid"], "threshold": 0.5}
    new = dict(old, threshold=0.31, decision_rule=model_metadata.COVID_THRESHOLD_RULE, target_sensitivity=0.95)
    card = model_card.render(new, _report(False))
    assert "0.3100 (COVID when above it, else the more probable other class), chosen on the validation split " \
        "for sensitivity >= 0.95" in card
    assert "no threshold" not in card


def test_card_gives_wilson_intervals_from_the_gate_counts():
    report = _report()
    report.metrics.update({"true positives": 65.0, "false negatives": 5.0, "true negatives": 115.0,
                           "false positives": 15.0})
    assert report.confusion_counts() == {"tp": 65, "fn": 5, "tn": 115, "fp": 15}
    card = model_card.render(METADATA, report)
    lo, hi = metrics.wilson_interval(115, 130)
    assert f"| specificity | {115 / 130:.3f} | {lo:.3f} – {hi:.3f} | 115/130 |" in card
    assert "65 true positives, 5 false negatives, 115 true negatives, 15 false positives" in card
    # Without the counts the card says where the intervals come from instead of inventing them.
    assert _report().intervals() == {}
    assert "covid-cxr evaluate" in model_card.render(METADATA, _report())


def test_card_says_which_epoch_of_which_phase_each_member_serves():
    fits = [
        {"family": "mobilenet_v2", "epochs_run": [["frozen backbone", 4], ["fine-tuning", 9]],
         "kept": {"phase": "fine-tuning", "epoch_in_phase": 6, "val_selection": 0.9811, "val_auc": 0.9812}},
        {"family": "mobilenet_v2_035", "epochs_run": [["frozen backbone", 4], ["fine-tuning", 4]],
         "kept": {"phase": "frozen backbone", "epoch_in_phase": 3, "val_selection": 0.9777, "val_auc": 0.9778}},
        {"family": "cnn3", "epochs_run": [["end to end", 12]], "kept": None},  # a history from before KEPT
    ]
    # As the model's metadata asset stores it (serving/export.py sorts the keys): phases stay in training order.
    stored = json.loads(json.dumps(fits, sort_keys=True))
    card = model_card.render(dict(METADATA, training=stored), _report())
    assert "## Training" in card
    assert "| mobilenet_v2 | frozen backbone 4, fine-tuning 9 | fine-tuning, epoch 6 | 0.9812 |" in card
    assert ("| mobilenet_v2_035 | frozen backbone 4, fine-tuning 4 | frozen backbone, epoch 3 "
            "(fine-tuning did not beat it) | 0.9778 |") in card
    assert "| cnn3 | end to end 12 | not recorded | n/a | n/a |" in card
    # Since stop 46 each member's exact AUC alone on eval (what training.member_min_auc judges) beside Keras's.
    scored = model_card.render(dict(METADATA, training=[dict(fits[0], eval_auc=0.98374, served=True)]), _report())
    assert "| fine-tuning, epoch 6 | 0.9812 | 0.9837 |" in scored
    # A model exported by 94adce6 stored epochs_run as an object (keys sorted): still rendered.
    old_format = dict(fits[1], epochs_run={"fine-tuning": 4, "frozen backbone": 4})
    assert "| mobilenet_v2_035 | fine-tuning 4, frozen backbone 4 | frozen backbone, epoch 3 (fine-tuning did not beat it) |" in \
        model_card.render(dict(METADATA, training=[old_format]), _report())
    assert ("fine-tuning's weights are served only if they beat the frozen phase's best; the served members' probabilities "
            "are averaged.") in card
    scratch = model_card.render(dict(METADATA, training=fits[2:]), _report())
    assert "Each phase stops early on the validation AUC (loss breaks ties) and keeps its best epoch.\n" in scratch and "fine-tuning" not in scratch.split("## Training")[1].split("##")[0]
    assert "## Training" not in model_card.render(METADATA, _report())  # metadata from before this section


def test_card_says_which_members_are_not_served_and_why():
    def fit(family, eval_auc, served):
        return {"family": family, "epochs_run": [["end to end", 5]], "eval_auc": eval_auc, "served": served}

    training = [fit("cnn3", 0.81, True), fit("cnn4", 0.5, False)]
    card = model_card.render(dict(METADATA, training=training, member_min_auc=0.6), _report())
    assert "| cnn4 | end to end 5 |" in card  # still listed: it was trained
    assert ("keeps its best epoch.\nNot served: cnn4 (eval AUC 0.500), below training.member_min_auc 0.60.\n"
            in card)
    assert "probabilities are averaged" not in card  # one member served
    both = model_card.render(dict(METADATA, training=[fit("cnn3", 0.81, True), fit("cnn4", 0.7, True)],
                                  member_min_auc=0.6), _report())
    assert "Not served" not in both and "the served members' probabilities are averaged." in both
    # None reached the floor: the best was served alone.
    below = [fit("cnn3", 0.55, True), fit("cnn4", 0.5, False), fit("cnn5", 0.45, False)]
    assert ("Not served: cnn4 (eval AUC 0.500), cnn5 (eval AUC 0.450), below training.member_min_auc 0.60; no member "
            "reached it, so the best one is served alone.") in model_card.render(
                dict(METADATA, training=below, member_min_auc=0.6), _report())
    # Models from before the floor record neither: nothing said, every member averaged.
    old = model_card.render(dict(METADATA, training=[{"family": "a"}, {"family": "b"}]), _report())
    assert "Not served" not in old and "the served members' probabilities are averaged." in old
    assert model_card.dropped_members_note(training) == ("Not served: cnn4 (eval AUC 0.500), below "
                                                         "training.member_min_auc.")


def test_card_describes_the_atypical_input_check_and_its_rate():
    check = {"features": "mobilenet_v2 pooled features", "dimensions": 1280, "quantile": 0.99,
             "threshold_distance": 41.2, "shrinkage": 0.31, "train_films": 1100, "eval_films": 250, "eval_atypical": 3}
    evaluation = {"atypical": {"value": 0.0125, "ci95": [0.004, 0.036], "k": 3, "n": 240}}
    card = model_card.render(dict(METADATA, typicality=check), _report(), evaluation=evaluation)
    assert ("- atypical-input check: Mahalanobis distance of the mobilenet_v2 pooled features (1280) from 1100 "
            "training films; above the 0.99 quantile of 250 validation films (3 of them) = atypical. Reported with each "
            "prediction, never changes it.") in card
    assert "atypical inputs (unlike the training films; scored anyway): 3/240 = 0.013 [0.004, 0.036]." in card
    assert "atypical" not in model_card.render(METADATA, _report())  # models exported before the check


def test_counts_are_whole_numbers_however_tfma_stored_them():
    # Three-class gate reports name their counts "... (covid vs rest)"; TFMA stores them as floats.
    report = gate_report.GateReport(blessed=True, metrics={"true positives (covid vs rest)": 64.99999,
                                                           "examples": 199.9999, "AUC": 0.95}, failures=[], slices={})
    card = model_card.render(METADATA, report)
    assert "| true positives (covid vs rest) | 65 |" in card and "| examples | 200 |" in card
    assert "| AUC | 0.9500 |" in card


def test_validation_intervals_read_low_to_high_and_only_source_slices_count_as_sources():
    report = _report()
    report.slices["view:PA"] = {"examples": 200.0}  # TFMA slices by view and sex too: not sources
    card = model_card.render(METADATA, report)
    assert "- held-out test examples per source: cohen 70, rsna 130\n" in card
    assert "- validation examples per class (early stopping, threshold choice): normal 150, covid 60\n" in card
    lo, hi = metrics.wilson_interval(57, 60)
    assert f"sensitivity {57 / 60:.3f} (95% CI {lo:.3f}–{hi:.3f}, 57/60)" in card and lo < hi


def test_synthetic_data_is_named_and_a_phase_never_run_never_lost():
    assert "SYNTHETIC" not in model_card.render(METADATA, _report())
    synthetic = dict(METADATA, data_summary=dict(METADATA["data_summary"], synthetic=True))
    assert "**the data is SYNTHETIC**" in model_card.render(synthetic, _report())
    # A member stopped before fine-tuning serves its frozen phase: fine-tuning did not lose, it never ran.
    fit = {"family": "mobilenet_v2", "epochs_run": [["frozen backbone", 5]],
           "kept": {"phase": "frozen backbone", "epoch_in_phase": 4, "val_auc": 0.9}}
    assert "| mobilenet_v2 | frozen backbone 5 | frozen backbone, epoch 4 | 0.9000 |" in \
        model_card.render(dict(METADATA, training=[fit]), _report())


def test_three_class_evaluation_lines_and_curation_settings():
    metadata = {"task": "three-class", "classes": ["normal", "pneumonia", "covid"], "threshold": 0.31,
                "decision_rule": model_metadata.COVID_THRESHOLD_RULE, "curation": {"max_side": 512, "equalization": "clahe"}}
    boot = {"patients": 30, "films": 45, "sensitivity": [0.81, 0.97], "specificity": None, "accuracy": [0.7, 0.9]}
    evaluation = {"data": {"path": "/data/test"}, "sensitivity": metrics.proportion(9, 10),
                  "multiclass": {"macro_f1": 0.8123}, "patient_bootstrap": boot,
                  "per_source": {"radiography": {"n": 130, "sensitivity": metrics.proportion(9, 10),
                                                 "specificity": metrics.proportion(110, 120),
                                                 "auc": {"value": 0.55, "ci95": [0.41, 0.70]}}}}
    card = model_card.render(metadata, _report(), evaluation=evaluation)
    assert "- the gate judges COVID one-vs-rest" in card
    assert "- curation settings: equalization=clahe, max_side=512" in card
    assert "- three-class macro-F1: 0.812" in card
    assert metrics.patient_ci_text(boot) + "." in card
    sens, spec = metrics.wilson_interval(9, 10), metrics.wilson_interval(110, 120)
    assert (f"| radiography | 130 | 0.900 ({sens[0]:.3f} – {sens[1]:.3f}) | {110 / 120:.3f} ({spec[0]:.3f} – {spec[1]:.3f}) "
            "| 0.550 (0.410 – 0.700) |") in card
    assert "one-vs-rest" not in model_card.render(METADATA, _report())  # binary: COVID is the positive class


def test_the_data_line_tells_patients_from_split_groups():
    summary = METADATA["data_summary"]
    card = model_card.render(METADATA, _report())
    assert (f"- curated dataset: {summary['accepted']} images of {summary['patients']} patients "
            f"({summary['groups']} split groups); {summary['rejected']} inputs rejected\n") in card


def test_a_metric_the_evaluation_could_not_measure_is_na_not_a_crash():
    # Evaluation data holding COVID films only: no specificity, no NPV to give.
    evaluation = {"data": {"path": "/data/covid-only"}, "n": 10, "class_counts": {"covid": 10},
                  "sensitivity": metrics.proportion(9, 10), "specificity": metrics.proportion(0, 0),
                  "npv": metrics.proportion(0, 0)}
    card = model_card.render(METADATA, _report(), evaluation=evaluation)
    assert "| specificity | n/a | n/a |  |\n" in card and "| NPV | n/a | n/a |  |\n" in card
    assert "| sensitivity | 0.900 | " in card


def test_a_blessed_three_class_card_does_not_give_tfma_values_for_a_class_the_test_split_lacks():
    # Blessed on COVID one-vs-rest; the test split holds no pneumonia film, so TFMA wrote NaN for its
    # sensitivity and 0 for its AUC (and so for the macro AUC): numbers the card must not show.
    three_class = dict(METADATA, task="three-class", classes=["normal", "pneumonia", "covid"])
    measured = {"true positives": 9, "false negatives": 1, "true negatives": 27, "false positives": 3,
                "sensitivity (covid vs rest)": 0.9, "AUC (covid vs rest)": 0.95}
    report = gate_report.GateReport(True, {**measured, "sensitivity (pneumonia vs rest)": float("nan"),
                                           "AUC (pneumonia vs rest)": 0.0, "macro AUC": 0.61}, [], {})
    card = model_card.render(three_class, report)
    for name in ("sensitivity (pneumonia vs rest)", "AUC (pneumonia vs rest)", "macro AUC"):
        assert f"| {name} | not measurable |\n" in card, name
    assert "| AUC (covid vs rest) | 0.9500 |\n" in card and "| true positives | 9 |\n" in card
    assert "nan" not in card


def test_a_threshold_models_card_without_a_stored_threshold_says_so_instead_of_inventing_one():
    """trainer/task.py always stores the threshold; metadata without it (written elsewhere, or hand-edited)
    must not get a 0.5000 that no one chose printed as the model's decision threshold."""
    binary = {key: value for key, value in METADATA.items() if key != "threshold"}
    three_class = {"task": "three-class", "classes": ["normal", "pneumonia", "covid"],
                   "decision_rule": model_metadata.COVID_THRESHOLD_RULE, "target_sensitivity": 0.95}
    for metadata, otherwise in ((binary, ""), (three_class, ", else the more probable other class")):
        card = model_card.render(metadata, _report())
        assert "0.5000" not in card
        assert ("- decision threshold on the COVID probability: not recorded in the model's metadata "
                f"(COVID when above it{otherwise}), chosen on the validation split for sensitivity >= 0.95") in card


def test_the_card_of_an_argmax_model_does_not_say_its_label_is_at_a_threshold():
    argmax = {"task": "three-class", "classes": ["normal", "pneumonia", "covid"], "threshold": 0.5}
    assert "a label at the stored decision threshold" in model_card.render(METADATA, _report())
    card = model_card.render(argmax, _report())
    assert "threshold" not in card.split("## Task")[1].split("## Model")[0]
    assert "- output: a probability per class, the COVID probability and a label (the most probable class)" in card
    assert "stored threshold" not in card and "stored threshold" in model_card.render(METADATA, _report())
