"""report.html's pipeline section, rendered from the summaries artifacts.py reads."""
from covid_cxr.evaluation import html_report


def _statistics(age: dict) -> dict:
    numbers = {"type": "num", "std": 28.14, "max": 90.0, "zeros": 0, "missing": 0, "missing_fraction": 0.0}
    summary = {"num_examples": 200, "features": {"age": {**numbers, **age}, "width": {**numbers, "mean": 900.0,
                                                                                    "min": -1.0}}}
    return {"root": "/root", "statistics": {"uri": "/root/StatisticsGen/statistics/4", "splits": {"train": summary}}}


def _age_row(page: str) -> str:
    return next(row for row in page.split("<tr>") if row.startswith("<td>age</td>"))


def test_an_age_of_minus_one_is_named_unknown_and_counted_in_the_mean_and_std():
    # Curation stores an unknown age as -1 (data/features.py): a mean of 14.56 is not the patients' mean age.
    row = _age_row(html_report._pipeline_section(_statistics({"mean": 14.56, "min": -1.0})))
    assert "mean 14.56, std 28.14, min -1.00, max 90.00; -1 means unknown, and the mean and std include it" in row


def test_ages_all_known_and_other_features_carry_no_such_note():
    page = html_report._pipeline_section(_statistics({"mean": 58.24, "min": 19.0}))
    assert "mean 58.24, std 28.14, min 19.00, max 90.00</td>" in _age_row(page)
    assert "unknown" not in page  # the sentinel is age's: a -1 elsewhere is a value


def test_tfma_values_a_test_split_cannot_measure_read_not_measurable_overall_and_per_slice(tmp_path, monkeypatch):
    # A test split without non-COVID films, read as `evaluate --pipeline-root` reads it: TFMA wrote NaN
    # for the specificity and 0 for the AUC, overall and in the one source slice.
    from covid_cxr.evaluation import artifacts, gate_report

    one_sided = {"examples": 10.0, "true positives": 9.0, "false negatives": 1.0, "true negatives": 0.0,
                 "false positives": 0.0, "sensitivity": 0.9, "specificity": float("nan"), "AUC": 0.0}
    monkeypatch.setattr(gate_report, "read_gate_report", lambda uri, blessed: gate_report.GateReport(
        blessed, dict(one_sided), [], {"source:cohen": dict(one_sided)}))
    evaluation_dir = tmp_path.joinpath(*artifacts.EVALUATION, "7")
    evaluation_dir.mkdir(parents=True)
    (evaluation_dir / "metrics").write_text("")
    page = html_report._pipeline_section({"root": str(tmp_path), "evaluation": artifacts.read_evaluation(str(tmp_path))})
    header = "<tr><th>slice</th><th>AUC</th><th>examples</th><th>false negatives</th><th>false positives</th>" \
             "<th>sensitivity</th><th>specificity</th><th>true negatives</th><th>true positives</th></tr>"
    assert header in page
    rows = {row.split("</td>")[0]: row.split("</td>")[1:] for row in page.split("<tr><td>")[1:]}
    for name in ("overall", "source:cohen"):
        auc, examples, _, _, sensitivity, specificity = rows[name][:6]
        assert (auc, examples, sensitivity, specificity) == ("<td>not measurable", "<td>10", "<td>0.900",
                                                             "<td>not measurable"), name


def test_tfma_counts_read_as_whole_numbers_as_in_the_model_card_and_rates_keep_their_decimals():
    # TFMA stores its confusion counts as floats: 9.000 true positives is not how a count reads.
    overall = {"examples": 10.0, "true positives": 9.0, "false negatives": 1.0, "true negatives": 0.0,
               "false positives": 0.0, "sensitivity": 0.9, "AUC": 0.8125}
    page = html_report._pipeline_section({"root": "/root", "evaluation": {
        "uri": "/root/Evaluator/evaluation/7", "blessed": True, "failures": [], "metrics": overall, "slices": {}}})
    row = next(row for row in page.split("<tr>") if row.startswith("<td>overall</td>"))
    cells = [cell.removeprefix("<td>") for cell in row.split("</td>")[1:-1]]
    # columns by name: AUC, examples, false negatives, false positives, sensitivity, true negatives, true positives
    assert cells == ["0.812", "10", "1", "0", "0.900", "0", "9"]
