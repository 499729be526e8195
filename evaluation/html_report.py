"""The self-contained HTML evaluation report (one file; plots inlined as base64 PNG)."""
from __future__ import annotations

import base64
import html
from typing import Mapping, Optional

from covid_cxr.data import features
from covid_cxr.data.sources import radiography
from covid_cxr.evaluation import attention_audit, errors, metrics, model_card
from covid_cxr.serving import near_copies, predict, typicality

MAX_SKIPPED_SHOWN = 50  # a hospital export can hold thousands of notes and previews
STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 62em; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.warn { background: #fff3cd; border: 1px solid #e0c36a; padding: 0.6em 0.8em; }
.ok { background: #e8f5e9; border: 1px solid #9ccc9c; padding: 0.6em 0.8em; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; margin: 0.4em 0.8em 0.4em 0; vertical-align: top; }
code { font-size: 0.9em; }
"""


# A numeric feature's stored stand-in for "unknown": TFDV's mean and std count it as a value.
UNKNOWN_VALUES = {features.AGE: features.UNKNOWN_AGE}


def _e(value) -> str:
    return html.escape(str(value))


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def _ci(entry) -> str:
    if not isinstance(entry, dict) or not entry.get("ci95"):
        return "n/a"
    lo, hi = entry["ci95"]
    return f"{lo:.3f} – {hi:.3f}"


def _kn(entry) -> str:
    if isinstance(entry, dict) and "k" in entry:
        return f"{entry['k']}/{entry['n']}"
    if isinstance(entry, dict) and "n_positive" in entry:
        return f"{entry['n_positive']} pos / {entry['n_negative']} neg"
    return ""


def _table(headers, rows) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(pngs: Mapping[str, bytes], name: str, alt: str) -> str:
    if name not in pngs:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(pngs[name]).decode("ascii")}">'


def _metric_rows(report: dict) -> list:
    names = (("sensitivity", "sensitivity (COVID recall)"), ("specificity", "specificity (non-COVID correctly cleared)"),
             ("precision", "precision (PPV)"), ("npv", "negative predictive value"), ("accuracy", "accuracy (all classes)"),
             ("auc", "ROC AUC (COVID probability)"))
    return [[_e(label), _num(report[key]["value"]), _ci(report[key]), _e(_kn(report[key]))]
            for key, label in names if key in report]


def _slice_table(table: dict) -> str:
    checked = all("atypical" in m for m in table.values())  # models with the atypical-input check
    rows = []
    for value, m in table.items():
        counts = ", ".join(f"{k} {v}" for k, v in m["class_counts"].items())
        rows.append([_e(value), _e(m["n"]), _e(counts),
                     f"{_num(m['sensitivity']['value'])} <span class=note>({_ci(m['sensitivity'])})</span>",
                     f"{_num(m['specificity']['value'])} <span class=note>({_ci(m['specificity'])})</span>",
                     f"{_num(m['accuracy']['value'])}", f"{_num(m['auc']['value'])}"]
                    + ([_e(m["atypical"])] if checked else []))
    return _table(["value", "n", "classes", "sensitivity (95% CI)", "specificity (95% CI)", "accuracy", "AUC"]
                  + (["atypical"] if checked else []), rows)


def _pipeline_section(pipeline: dict) -> str:
    parts = ["<h2>Pipeline artifacts</h2>", f"<p class=note>pipeline root <code>{_e(pipeline['root'])}</code></p>"]
    stats = pipeline.get("statistics")
    if stats:
        parts.append(f"<h3>TFDV statistics</h3><p class=note><code>{_e(stats['uri'])}</code></p>")
        for split, summary in stats["splits"].items():
            rows = []
            for name, f in summary["features"].items():
                if f.get("type") == "num":
                    detail = f"mean {_num(f['mean'], 2)}, std {_num(f['std'], 2)}, min {_num(f['min'], 2)}, max {_num(f['max'], 2)}"
                    unknown = UNKNOWN_VALUES.get(name)
                    # TFDV's histograms are approximate: how many films are unknown is not in the statistics.
                    if unknown is not None and f["min"] is not None and f["min"] <= unknown:
                        detail += f"; {unknown} means unknown, and the mean and std include it"
                elif "top_values" in f:
                    detail = ", ".join(f"{_e(k)}: {v}" for k, v in f["top_values"].items())
                else:
                    detail = f"{f.get('unique', '?')} unique values"
                rows.append([_e(name), _e(f.get("type")), f"{100 * f.get('missing_fraction', 0):.1f}%", detail])
            parts.append(f"<p><b>split {_e(split)}</b>: {summary['num_examples']} examples</p>")
            parts.append(_table(["feature", "type", "missing", "summary"], rows))
    anomalies = pipeline.get("anomalies")
    if anomalies:
        parts.append(f"<h3>TFDV anomalies</h3><p class=note><code>{_e(anomalies['uri'])}</code></p>")
        found = [(s, p) for s, problems in anomalies["splits"].items() for p in problems]
        if found:
            parts.append('<div class=warn><ul>' + "".join(f"<li>split {_e(s)}: {_e(p)}</li>" for s, p in found)
                         + "</ul></div>")
        else:
            parts.append(f"<p class=ok>No anomalies in splits {_e(', '.join(anomalies['splits']) or '-')}.</p>")
    evaluation = pipeline.get("evaluation")
    if evaluation:
        state = "BLESSED" if evaluation["blessed"] else "NOT BLESSED"
        parts.append(f"<h3>TFMA (Evaluator, test split): {state}</h3><p class=note><code>{_e(evaluation['uri'])}</code></p>")
        if evaluation["failures"]:
            parts.append('<div class=warn><ul>' + "".join(f"<li>{_e(f)}</li>" for f in evaluation["failures"]) + "</ul></div>")
        slices = {"overall": evaluation["metrics"], **dict(sorted(evaluation["slices"].items()))}
        names = sorted({k for m in slices.values() for k in m if not k.endswith("change")})
        unmeasurable = evaluation.get("unmeasurable") or {}
        rows = [[_e(s)] + ["not measurable" if n in unmeasurable.get(s, ()) else
                           (_num(int(round(m[n]))) if model_card.is_count(n) and _finite(m.get(n)) else _num(m.get(n)))
                           for n in names] for s, m in slices.items()]
        parts.append(_table(["slice"] + names, rows))
    for error in pipeline.get("errors", []):
        parts.append(f"<p class=warn>Could not read {_e(error)}</p>")
    if not (stats or anomalies or evaluation):
        parts.append("<p>No StatisticsGen, ExampleValidator or Evaluator output found under this root.</p>")
    return "\n".join(parts)


def _errors_section(wrong: dict, pngs: Mapping[str, bytes]) -> str:
    listed = wrong["listed"]
    extra = [k for k in ("group", "source", "view") if any(k in e for e in listed)]
    rows = [[_e(e["ref"]), _e(e["true"]), _e(e["predicted"]), _e(errors.odds(e))]
            + [_e(e.get(k, "")) for k in extra] for e in listed]
    return (f"<h2>Misclassified films ({wrong['n']})</h2>"
            f"<p class=note>{_e(wrong['order'])}; {len(listed)} listed. Look at them: a film whose label its "
            "pixels do not support is a data problem, not a model one.</p>"
            + _img(pngs, "errors.png", "misclassified films")
            + _table(["film", "true", "predicted", "probability"]
                     + [{"group": "patient (pseudonym)"}.get(k, k) for k in extra], rows))


def approval_text(model: Mapping) -> str:
    """The report's word on the model's approval (``predict.approval_text``): its version, or the gate's
    BLESSED decision on it when it was not pushed."""
    decision = model.get("gate_decision") or {}
    if not decision.get("blessed"):
        return predict.approval_text(model["version"])
    return predict.approval_text(model["version"], decision.get("record"), decision.get("served_as", ""))


def decided_by_threshold(report: Mapping) -> bool:
    """Whether the report's model labels by its threshold on P(covid): False for an older three-class model,
    which serves the argmax (evaluate's ``threshold_applies``; a report.json from before that key: True)."""
    return report.get("threshold_applies", True)


def decision_text(report: Mapping) -> tuple[str, str]:
    """(name, value) of the model's decision for the header and the terminal: its threshold and rule, or the
    argmax with no number (the threshold an argmax model's graph outputs decides nothing)."""
    if decided_by_threshold(report):
        return "decision threshold", f"{report['threshold']:.4f}: {report['threshold_note']}"
    return "decision", f"argmax (no COVID threshold used): {report['threshold_note']}"


def passed_over_text(skipped: int, hidden: int, masks: int, zero_skipped: bool = False) -> str:
    """"4 skipped; 2 hidden files or folders not read; 3 lung-mask files not read (...)": the counts
    that are not 0 (the skipped one always with ``zero_skipped``). One wording for the report and
    evaluate's "no usable images" error."""
    return "; ".join(([f"{skipped} skipped"] if skipped or zero_skipped else [])
                     + ([f"{hidden} hidden files or folders not read"] if hidden else [])
                     + ([f"{masks} {radiography.MASKS}"] if masks else []))


def skipped_text(data: dict) -> str:
    """"; " + passed_over_text of a report's data, or "" when nothing was passed over."""
    text = passed_over_text(data["skipped"], data.get("hidden_skipped") or 0, data.get("masks_skipped") or 0)
    return "; " + text if text else ""


def render(report: dict, pngs: Mapping[str, bytes], pipeline: Optional[dict] = None) -> str:
    """The HTML page for an evaluate report (evaluation/evaluate.py) and its PNGs by file name."""
    model, data = report["model"], report["data"]
    counts = ", ".join(f"{_e(k)} {v}" for k, v in report["class_counts"].items())
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>covid-cxr evaluation: {_e(report['task'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>covid-cxr evaluation: {_e(report['task'])}</h1>",
        "<p class=warn><b>Research use only, not a diagnostic device.</b> These numbers describe this model on "
        "this data; they do not transfer to another hospital's films without measuring there.</p>",
        *([f"<p class=warn>{_e(near_copies.summary_line(report.get('near_copies')))}</p>"]
          if near_copies.summary_line(report.get("near_copies")) else []),
        _table(["", ""], [
            ["model", f"<code>{_e(model['path'])}</code> ({_e(approval_text(model))}, family {_e(model.get('family'))})"],
            ["data", f"<code>{_e(data['path'])}</code> ({_e(data['format'])}, signature {_e(model.get('signature'))})"],
            ["examples", f"{report['n']} ({counts})" + skipped_text(data)],
            [_e(text) for text in decision_text(report)],
        ]),
        "<h2>Metrics</h2>",
        _table(["metric", "value", "95% CI", "k/n"], _metric_rows(report)),
        f"<p class=note>Proportions: Wilson score intervals. AUC: {_e(report['auc'].get('method', ''))}.</p>",
        *([f"<p class=note>{_e(metrics.patient_ci_text(report['patient_bootstrap']))}.</p>"]
          if report.get("patient_bootstrap") else []),
        *([f"<p class=note>{_e(typicality.rate_text(report['atypical']))}.</p>"] if report.get("atypical") else []),
        _img(pngs, "roc.png", "ROC curve") + _img(pngs, "confusion_matrix.png", "confusion matrix"),
    ]
    cm = report["confusion_matrix"]
    parts.append(_table(["true \\ predicted"] + cm["classes"],
                        [[_e(c)] + [_e(v) for v in row] for c, row in zip(cm["classes"], cm["matrix"])]))
    if "multiclass" in report:
        mc = report["multiclass"]
        parts.append(f"<h2>Three-class</h2><p>macro-F1 <b>{_num(mc['macro_f1'])}</b>; macro AUC {_num(mc['macro_auc'])}</p>")
        absent = metrics.absent_classes_text(mc.get("absent_classes"))
        if absent:
            parts.append(f"<p class=note>{_e(absent)}.</p>")
        rows = [[_e(c), _e(m["support"]), f"{_num(m['sensitivity']['value'])} ({_ci(m['sensitivity'])})",
                 f"{_num(m['specificity']['value'])} ({_ci(m['specificity'])})",
                 f"{_num(m['precision']['value'])}", _num(m["f1"]), _num(m["auc"]["value"])]
                for c, m in mc["per_class"].items()]
        parts.append(_table(["class (one vs rest)", "support", "recall (95% CI)", "specificity (95% CI)",
                             "precision", "F1", "AUC"], rows))
    if report.get("per_source"):
        parts.append("<h2>Per source</h2>" + _slice_table(report["per_source"]))
        parts.append("<p class=note>A source holding a single class has no specificity or no sensitivity: "
                     "compare sources of the same class. AUC here is within the source: only the disease "
                     "separates its classes.</p>")
        flagged = report.get("sources_below_pooled_auc") or []
        if flagged:
            parts.append(f"<p class=warn>Warning: {_e(metrics.within_source_warning(flagged))}.</p>")
    for key, table in report.get("slices", {}).items():
        parts.append(f"<h2>Per {_e(key)}</h2>" + _slice_table(table))
    wrong = report.get("errors")
    if wrong and wrong["n"]:
        parts.append(_errors_section(wrong, pngs))
    audit = report.get("shortcut_audit")
    if audit:
        css = "warn" if audit.get("flagged") else "ok"
        auc = audit.get("auc") or {}
        parts.append("<h2>Shortcut audit (image borders only)</h2>")
        parts.append(f"<p class={css}>{_e(audit['verdict'])}</p>")
        parts.append(f"<p class=note>{_e(audit['method'])}; n={audit['n']} images in {audit['n_groups']} groups; "
                     f"AUC {_num(auc.get('value'))} (95% CI {_ci(auc)}); flagged above {audit['flag_auc']}.</p>")
    attention = report.get("attention_audit")
    if attention and attention.get("band_area_share") is not None:
        parts.append("<h2>Attention audit (where the heat maps lie)</h2>")
        parts.append(f"<p class=note>Heat maps by {_e(attention_audit.method_text(attention))} for the predicted "
                     f"class; the outer {attention['border_fraction']:.0%} band is {attention['band_area_share']:.0%} "
                     "of the film's area, so a map spread evenly has that share of its heat there and a random peak "
                     f"lands there that often: {_e(attention_audit.READING)}.</p>")
        if attention.get("limit"):  # the table's counts are not the data's
            parts.append(f"<p class=note>Only {_e(attention['limit'])} films of each true class, spread over the "
                         "data, were measured (--attention-limit).</p>")
        # Films by true class (all, then each source's), then by the class the model called them.
        groups = [("all", "", attention["per_true_class"]),
                  *((source, "", per_class) for source, per_class in (attention.get("per_source") or {}).items()),
                  ("all", "called ", attention.get("per_predicted_class") or {})]
        rows = [[_e(source), _e(called + name), _e(entry["films"]), _e(entry["blank_maps"]),
                 _num((entry["border_share"] or {}).get("value")), _ci(entry["border_share"]),
                 _kn(entry["peak_in_border"]), _num((entry["peak_in_border"] or {}).get("value")),
                 _ci(entry["peak_in_border"])]
                for source, called, per_class in groups for name, entry in per_class.items()]
        parts.append(_table(["source", "films: true class, or called", "films", "blank maps", "border share",
                             "95% CI", "peak in border", "rate", "95% CI"], rows))
    history = report.get("training_history")
    if history:
        parts.append("<h2>Training curves</h2>")
        if "training_curves.png" in pngs:
            parts.append(_img(pngs, "training_curves.png", "training curves"))
        rows = model_card.training_rows(history.get("members"))
        if rows:
            parts.append(_table(list(model_card.TRAINING_COLUMNS), [[_e(cell) for cell in row] for row in rows]))
        dropped = model_card.dropped_members_note(history.get("members"), history.get("member_min_auc"))
        if dropped:
            parts.append(f"<p class=note>{_e(dropped)}</p>")
        parts.append(f"<p class=note>history: {_e(history['source'])}</p>")
    if pipeline:
        parts.append(_pipeline_section(pipeline))
    skipped = data.get("skipped_files") or []
    if skipped:
        parts.append(f"<h2>Skipped inputs ({data['skipped']})</h2>")
        parts.append(_table(["file", "reason"], [[_e(s["file"]), _e(s["reason"])] for s in skipped[:MAX_SKIPPED_SHOWN]]))
        if len(skipped) > MAX_SKIPPED_SHOWN:  # report.json keeps every one: past 50 they were dropped unsaid
            parts.append(f"<p class=note>the first {MAX_SKIPPED_SHOWN} of {len(skipped)}: report.json lists every one</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
