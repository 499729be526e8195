"""The model card written beside every pushed model version (markdown).

``render(metadata, report)`` is what the pusher calls (components/pusher.py): ``metadata`` is the
model's metadata asset (serving/export.py, written by trainer/task.py) and ``report`` its
GateReport (evaluation/gate_report.py). Optional inputs, used when present:

* ``evaluation=`` a ``covid-cxr evaluate`` report (evaluation/evaluate.py, its report.json dict):
  adds metrics with 95% confidence intervals, per-source results and the shortcut audit;
* metadata keys ``data_summary`` (a curation summary.json: per_source_class, patients, rejections),
  ``gate`` (the GateConfig: min_sensitivity, min_specificity, min_auc, max_auc_regression) and
  ``curation`` (settings such as equalization / max_side) -- shown when the Trainer stores them.
"""
from __future__ import annotations

from typing import Mapping, Optional

from covid_cxr.evaluation import attention_audit, metrics
from covid_cxr.serving import model_metadata, near_copies, typicality

FILE_NAME = "model_card.md"
COUNT_NAMES = ("examples", "true positives", "false positives", "true negatives", "false negatives")


def is_count(name: str) -> bool:
    """Whether a TFMA metric (by its plain name, "... change" included) counts films: a whole number,
    whatever type TFMA stored it as (the card and report.html show it so)."""
    return name.startswith(COUNT_NAMES)


def _cell(name: str, value, unmeasurable=frozenset()) -> str:
    if name in unmeasurable:  # TFMA's NaN or 0 for a rate or AUC of a class the test split lacks
        return "not measurable"
    if is_count(name):
        return str(int(round(value)))
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(values: dict, unmeasurable=frozenset()) -> list[str]:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(k, v, unmeasurable)} |" for k, v in sorted(values.items())]
    return lines


def _ci_cell(entry) -> str:
    if not isinstance(entry, Mapping) or entry.get("value") is None:
        return "n/a | n/a | "
    ci = entry.get("ci95")
    ci_text = f"{ci[0]:.3f} – {ci[1]:.3f}" if ci else "n/a"
    kn = f"{entry['k']}/{entry['n']}" if "k" in entry else (
        f"{entry.get('n_positive', '?')} pos / {entry.get('n_negative', '?')} neg" if "n_positive" in entry else "")
    return f"{entry['value']:.3f} | {ci_text} | {kn}"


def _inline(entry) -> str:
    if not isinstance(entry, Mapping) or entry.get("value") is None:
        return "n/a"
    low, high = entry["ci95"]
    return f"{entry['value']:.3f} (95% CI {low:.3f}–{high:.3f}, {entry['k']}/{entry['n']})"


def _counts(counts: Mapping) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) if counts else "not recorded"


def _data_lines(metadata: dict, report, evaluation: Optional[dict]) -> list[str]:
    lines = ["## Data"]
    summary = metadata.get("data_summary") or {}
    if summary:
        lines.append(f"- curated dataset: {summary.get('accepted', '?')} images of {summary.get('patients', '?')} "
                     f"patients ({summary.get('groups', '?')} split groups); {summary.get('rejected', 0)} inputs rejected")
        per_source = summary.get("per_source_class") or {}
        if per_source:
            lines += ["", "| source | images per class |", "|---|---|"]
            lines += [f"| {s} | {_counts(c)} |" for s, c in sorted(per_source.items())]
            lines.append("")
        if summary.get("synthetic"):
            lines.append("- **the data is SYNTHETIC** (the embedded generator): the metrics say nothing about radiographs")
    lines.append(f"- training examples per class: {_counts(metadata.get('train_class_counts', {}))}")
    lines.append(f"- validation examples per class (early stopping, threshold choice): "
                 f"{_counts(metadata.get('eval_class_counts', {}))}")
    test_sources = {k.split(":", 1)[1]: int(v.get("examples", 0)) for k, v in (report.slices or {}).items()
                    if k.startswith("source:") and "examples" in v} if report is not None else {}
    if test_sources:
        lines.append(f"- held-out test examples per source: {_counts(test_sources)}")
    if evaluation:
        data = evaluation.get("data", {})
        lines.append(f"- independent evaluation data: {data.get('path', '?')} ({data.get('format', '?')}, "
                     f"n={evaluation.get('n', '?')}: {_counts(evaluation.get('class_counts', {}))})")
    lines.append("- splits are by patient and near-duplicate group: no patient or duplicate picture is in two splits")
    curation = metadata.get("curation") or {}
    if curation:
        lines.append(f"- curation settings: {', '.join(f'{k}={v}' for k, v in sorted(curation.items()))}")
    return lines + [""]


def _epochs_run(fit: Mapping) -> list:
    """[[phase, epochs], ...] in training order; models exported by 94adce6 stored a {phase: epochs}
    object instead (its keys sorted by the export)."""
    epochs_run = fit.get("epochs_run") or []
    return list(epochs_run.items()) if isinstance(epochs_run, Mapping) else list(epochs_run)


def _served_weights(fit: Mapping) -> str:
    kept = fit.get("kept")
    if not kept:
        return "not recorded"
    text = f"{kept['phase']}, epoch {kept['epoch_in_phase']}"
    if kept["phase"] == "frozen backbone" and dict(_epochs_run(fit)).get("fine-tuning"):
        text += " (fine-tuning did not beat it)"
    return text


# "validation AUC there" is Keras's binned AUC while training; "eval AUC alone" the exact one the
# Trainer computed afterwards for training.member_min_auc (the two differ in the third decimal).
TRAINING_COLUMNS = ("member", "epochs run", "weights served", "validation AUC there", "eval AUC alone")


def training_rows(fits) -> list[list[str]]:
    """One row of TRAINING_COLUMNS per trained family (the metadata's ``training``, trainer/task.py)."""
    rows = []
    for fit in fits or []:
        epochs = ", ".join(f"{phase} {n}" for phase, n in _epochs_run(fit)) or "?"
        aucs = [(fit.get("kept") or {}).get("val_auc"), fit.get("eval_auc")]  # eval_auc: models since stop 46
        rows.append([str(fit.get("family", "?")), epochs, _served_weights(fit),
                     *["n/a" if auc is None else f"{auc:.4f}" for auc in aucs]])
    return rows


def dropped_members_note(fits, min_auc=None) -> Optional[str]:
    """One line naming the trained members the served model leaves out, and why (their eval AUC
    below ``training.member_min_auc``: trainer/task.py:select_members); None when it serves all."""
    dropped = [fit for fit in fits or [] if fit.get("served") is False]  # models before the floor: no key
    if not dropped:
        return None
    floor = "training.member_min_auc" + ("" if min_auc is None else f" {min_auc:.2f}")
    named = ", ".join(f"{fit.get('family', '?')} (eval AUC {fit['eval_auc']:.3f})" for fit in dropped)
    note = f"Not served: {named}, below {floor}"
    if min_auc is not None and all(fit.get("eval_auc", min_auc) < min_auc for fit in fits):
        note += "; no member reached it, so the best one is served alone"
    return note + "."


def _training_lines(metadata: dict) -> list[str]:
    """Per trained family (ensemble member): epochs run per phase and which epoch's weights it serves."""
    fits = metadata.get("training")
    rows = training_rows(fits)
    if not rows:
        return []
    lines = ["## Training", "", "| " + " | ".join(TRAINING_COLUMNS) + " |", "|---" * len(TRAINING_COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    rules = ["Each phase stops early on the validation AUC (loss breaks ties) and keeps its best epoch"]
    if any("fine-tuning" in dict(_epochs_run(fit)) for fit in fits):
        rules.append("fine-tuning's weights are served only if they beat the frozen phase's best")
    if sum(fit.get("served", True) for fit in fits) > 1:
        rules.append("the served members' probabilities are averaged")
    note = dropped_members_note(fits, metadata.get("member_min_auc"))
    return lines + ["", "; ".join(rules) + ".", *([note] if note else []), ""]


def _value_and_ci(entry) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    ci = entry.get("ci95")
    return f"{entry['value']:.3f} ({ci[0]:.3f} – {ci[1]:.3f})" if ci else f"{entry['value']:.3f}"


def _evaluation_lines(evaluation: dict) -> list[str]:
    lines = [f"## Metrics with 95% confidence intervals ({evaluation.get('data', {}).get('path', 'evaluation data')})",
             "", "| metric | value | 95% CI | k/n |", "|---|---|---|---|"]
    for key, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("precision", "precision (PPV)"),
                       ("npv", "NPV"), ("accuracy", "accuracy"), ("auc", "AUC")):
        if key in evaluation:
            lines.append(f"| {label} | {_ci_cell(evaluation[key])} |")
    lines += ["", "Proportions: Wilson score intervals; AUC: " + str(evaluation.get("auc", {}).get("method", "")) + "."]
    near = near_copies.summary_line(evaluation.get("near_copies"))
    if near:
        lines += ["", f"- **{near}.**"]
    if evaluation.get("patient_bootstrap"):
        lines += ["", metrics.patient_ci_text(evaluation["patient_bootstrap"]) + "."]
    if evaluation.get("atypical"):
        lines += ["", typicality.rate_text(evaluation["atypical"]) + "."]
    multiclass = evaluation.get("multiclass")
    if multiclass:
        absent = metrics.absent_classes_text(multiclass.get("absent_classes"))
        lines.append(f"- three-class macro-F1: {multiclass['macro_f1']:.3f}" + (f" ({absent})" if absent else ""))
    per_source = evaluation.get("per_source") or {}
    if per_source:
        # Within-source AUC separates COVID from non-COVID films of one source only, so a model
        # that recognises the source rather than the disease scores near 0.5 here however high
        # its pooled AUC is.
        lines += ["", "| source | n | sensitivity (95% CI) | specificity (95% CI) | AUC within the source (95% CI) |",
                  "|---|---|---|---|---|"]
        for source, m in per_source.items():
            lines.append(f"| {source} | {m['n']} | {_value_and_ci(m['sensitivity'])} | "
                         f"{_value_and_ci(m['specificity'])} | {_value_and_ci(m.get('auc'))} |")
        lines += ["", "AUC within a source needs both classes in that source (n/a otherwise); far below the "
                  "pooled AUC, it says the model separates the sources better than the disease."]
        flagged = evaluation.get("sources_below_pooled_auc") or []
        if flagged:
            lines += ["", f"- **Warning: {metrics.within_source_warning(flagged)}.**"]
    audit = evaluation.get("shortcut_audit")
    if audit:
        lines += ["", f"- shortcut audit (image borders only): {audit.get('verdict', 'not run')}"]
    attention = evaluation.get("attention_audit")
    if attention and attention.get("band_area_share") is not None:
        lines += ["", f"- attention audit (where the heat maps by {attention_audit.method_text(attention)} lie; "
                  f"`covid-cxr evaluate --attention`): {attention_audit.READING}.",
                  "", "```", *attention_audit.summary_lines(attention), "```"]
    return lines + [""]


def _gate_interval_lines(report) -> list[str]:
    """The test split's confusion counts at the served decision, with Wilson 95% CIs."""
    counts, intervals = report.confusion_counts(), report.intervals()
    if not counts:
        return ["Point estimates from TFMA. Confidence intervals: `covid-cxr evaluate --model <this version> "
                "--data <test data>` reports every metric with its 95% CI.", ""]
    lines = ["At the served decision (COVID = positive): "
             f"{counts['tp']} true positives, {counts['fn']} false negatives, "
             f"{counts['tn']} true negatives, {counts['fp']} false positives.", "",
             "| metric | value | 95% CI | k/n |", "|---|---|---|---|"]
    lines += [f"| {name} | {_ci_cell(intervals[name])} |" for name in ("sensitivity", "specificity")]
    return lines + ["", "Wilson score intervals on the held-out test split.", ""]


def render(metadata: dict, report, evaluation: Optional[dict] = None) -> str:
    """Markdown card from the model's metadata asset and its gate report (evaluation/gate_report.py)."""
    task = metadata.get("task", "unknown")
    classes = metadata.get("classes", [])
    threshold = metadata.get("threshold")
    binary = len(classes) == 2
    by_threshold = model_metadata.threshold_applies(metadata)  # else an older three-class model's argmax
    lines = [
        f"# covid-cxr model card: {task}",
        "",
        "**Not a diagnostic device.** A research model that flags chest radiographs for COVID-19-like "
        "patterns. It must not be used for diagnosis, triage or to rule out infection.",
        "",
        "## Task",
        f"- task: {task}; classes (output index order): {', '.join(classes)}",
        "- input: one frontal chest radiograph (PNG/JPEG/DICOM, curated to 8-bit grayscale with borders cropped)",
        "- output: a probability per class, the COVID probability and a label "
        + ("at the stored decision threshold" if by_threshold else "(the most probable class)"),
        "",
        "## Model",
        f"- family: {metadata.get('family', '?')} {metadata.get('family_note') or ''}".rstrip(),
        f"- hyperparameters: {metadata.get('hyperparameters', {})}",
        f"- Transform image size: {metadata.get('transform_image_size', '?')}",
        *([f"- {typicality.check_text(metadata['typicality'])}."] if metadata.get("typicality") else []),
        "",
    ]
    lines += _training_lines(metadata)
    lines.append("## Thresholds")
    if by_threshold:
        target_specificity = metadata.get("target_specificity") or 0.0
        otherwise = "" if binary else ", else the more probable other class"
        # trainer/task.py always stores it; metadata written elsewhere may not, and 0.5 was never chosen.
        shown = "not recorded in the model's metadata" if threshold is None else f"{threshold:.4f}"
        lines.append(f"- decision threshold on the COVID probability: {shown} (COVID when above it{otherwise}), "
                     f"chosen on the validation split for sensitivity >= {metadata.get('target_sensitivity', '?')}"
                     + (f", sharing any slack with specificity >= {target_specificity}" if target_specificity else ""))
    else:
        lines.append("- three-class: the label is the most probable class (no threshold)")
    if not binary:
        lines.append("- the gate judges COVID one-vs-rest")
    validation = metadata.get("validation_metrics") or {}
    if validation.get("sensitivity"):
        lines.append(f"- on the validation split at this decision: sensitivity {_inline(validation['sensitivity'])}; "
                     f"specificity {_inline(validation['specificity'])}")
    gate = metadata.get("gate") or {}
    if gate:
        lines.append(f"- deployment gate on the held-out test split: sensitivity >= {gate.get('min_sensitivity', '?')}, "
                     f"specificity >= {gate.get('min_specificity', '?')}, AUC >= {gate.get('min_auc', '?')}, "
                     f"AUC loss vs the last blessed model <= {gate.get('max_auc_regression', '?')}")
    else:
        # No push record and no decision record (a bare export, or a run from before the Pusher recorded
        # every decision): no gate decision or failures to show; "see below" sent readers to nothing.
        lines.append("- deployment gate: sensitivity AND specificity (and AUC) minimums on the held-out test split; "
                     "no gate decision is on file for this model (a pushed version carries one, and so does a "
                     "Trainer artifact in its pipeline root): a model that was not pushed may have been refused")
    lines.append("")
    lines += _data_lines(metadata, report, evaluation)
    if report is not None:
        lines += [f"## Held-out test evaluation ({report.headline()})", *_table(report.metrics, report.unmeasurable()), ""]
        if report.failures:
            lines += ["Gate failures:", *[f"- {f}" for f in report.failures], ""]
        lines += _gate_interval_lines(report)
    if evaluation:
        lines += _evaluation_lines(evaluation)
    lines += [
        "## Intended use and limitations",
        "- Intended use: research and teaching on public data -- studying how COVID-19 classifiers behave, "
        "and how dataset shortcuts inflate their scores. Not for clinical decisions of any kind.",
        "- Not a diagnostic device: not cleared or approved by any regulator; no prospective or clinical validation.",
        "- Trained on public collections whose labels are the sources' labels, not radiologist re-reads; "
        "some are noisy or derived from other collections (cross-source duplicates are removed by curation).",
        "- Public COVID collections differ from their normal/pneumonia counterparts in hospital, age (the "
        "Kermany pneumonia/normal films are paediatric), device and acquisition: a model can learn the source "
        "instead of the disease. Run the shortcut audit (`covid-cxr evaluate`) and inspect Grad-CAM maps "
        "(`covid-cxr predict --explain`) and where they lie (`covid-cxr evaluate --attention`); performance on a "
        "new hospital's films must be measured there before any use.",
        "- Frontal (PA/AP) adult chest radiographs only; lateral views, CT and paediatric films are out of scope.",
        f"- Sensitivity and specificity depend on {'the stored threshold' if by_threshold else 'the decision rule'} "
        "and on prevalence; precision (PPV) "
        "measured on a balanced test set overstates the PPV at real-world prevalence.",
    ]
    return "\n".join(lines) + "\n"
