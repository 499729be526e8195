"""scripts/threshold_check.py on a pipeline-root layout built around the tiny test model."""
import dataclasses
import json
import os

import numpy as np
import pytest

from covid_cxr.evaluation import evaluate as ev
from covid_cxr.serving import predict, testing
from covid_cxr.trainer import training as T

binary_model = testing.tiny_model_fixture()
three_class_model = testing.tiny_model_fixture("three-class")


@dataclasses.dataclass
class TinyStandIn:  # what _fake_root reads of a TinyModel
    model_dir: str
    data_dir: str


@pytest.fixture(scope="module")
def threshold_check(load_script):
    return load_script("threshold_check")


def _fake_root(tmp_path, tiny, with_records: bool = True) -> str:
    """Trainer/model/<id>/Format-Serving and ImportExampleGen/examples/<id>/Split-{eval,test}, as TFX lays them out."""
    root = tmp_path / "root"
    (root / "Trainer" / "model" / "7").mkdir(parents=True)
    os.symlink(tiny.model_dir, root / "Trainer" / "model" / "7" / "Format-Serving")
    (root / "ImportExampleGen" / "examples" / "2").mkdir(parents=True)
    for split in ("eval", "test"):
        split_dir = root / "ImportExampleGen" / "examples" / "2" / f"Split-{split}"
        if with_records:
            os.symlink(tiny.data_dir, split_dir)
        else:
            split_dir.mkdir()
    return str(root)


def test_stored_threshold_and_mirror_tta_rows(threshold_check, binary_model, tmp_path, capsys):
    root = _fake_root(tmp_path, binary_model)
    assert threshold_check.main([root, "--tta", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)

    # Recomputed independently: the model's own scores at its own stored threshold.
    model = predict.load_model(binary_model.model_dir)
    data = ev.load_tfrecords(binary_model.data_dir)
    scores = np.asarray(model.predict_examples(data.serialized)["covid_probability"]).ravel()
    covid = data.labels == model.task.positive_index
    assert 0 < (scores > binary_model.threshold).sum() < len(scores)  # both decisions occur
    stored = result["stored"]
    assert stored["threshold"] == pytest.approx(binary_model.threshold)
    # The export's rule: COVID when the probability is above the stored threshold.
    assert stored["test"]["sensitivity"]["k"] == int((scores[covid] > binary_model.threshold).sum())
    assert stored["test"]["specificity"]["k"] == int((scores[~covid] <= binary_model.threshold).sum())
    assert stored["eval"] == stored["test"]  # both splits are the same records here
    # The TTA threshold is re-chosen on eval for the model's 0.95 target, which it then meets there.
    tta = result["mirror_tta"]
    assert tta["eval"]["sensitivity"]["value"] >= 0.95
    assert 0.0 <= tta["test_roc_spec_at_sens_0.97"] <= tta["test_roc_spec_at_sens_0.95"] <= 1.0

    assert threshold_check.main([root]) == 0
    table = capsys.readouterr().out
    assert "root " in table and "test ROC spec@sens" in table and "mirror TTA" not in table


def test_not_a_pipeline_root_is_one_line(threshold_check, tmp_path):
    with pytest.raises(SystemExit, match="no Trainer model or ImportExampleGen examples"):
        threshold_check.main([str(tmp_path)])


def test_three_class_covid_vs_rest_and_an_argmax_export_gets_the_trainers_threshold(
        threshold_check, three_class_model, tmp_path, capsys):
    assert threshold_check.main([_fake_root(tmp_path / "new", three_class_model), "--json"]) == 0
    [new] = json.loads(capsys.readouterr().out)
    assert new["stored"]["threshold"] == pytest.approx(three_class_model.threshold)
    assert not new["threshold_chosen_here"]

    old_model = testing.argmax_era_copy(three_class_model.model_dir, str(tmp_path / "old-model"))
    old = TinyStandIn(model_dir=old_model, data_dir=three_class_model.data_dir)
    old_root = _fake_root(tmp_path / "old", old)
    assert threshold_check.main([old_root]) == 0
    assert "the model served the argmax; threshold chosen here on eval" in capsys.readouterr().out
    assert threshold_check.main([old_root, "--json"]) == 0
    [chosen] = json.loads(capsys.readouterr().out)
    model = predict.load_model(old_model)
    data = ev.load_tfrecords(three_class_model.data_dir)
    covid = (data.labels == model.task.positive_index).astype(int)
    scores = np.asarray(model.predict_examples(data.serialized)["covid_probability"]).ravel()
    assert chosen["threshold_chosen_here"]
    assert chosen["stored"]["threshold"] == pytest.approx(T.choose_threshold(
        covid, scores, model.metadata["target_sensitivity"], model.metadata.get("target_specificity", 0.0)))
    assert chosen["stored"]["eval"]["sensitivity"]["value"] >= model.metadata["target_sensitivity"]


def test_an_empty_split_is_one_line(threshold_check, binary_model, tmp_path):
    with pytest.raises(SystemExit, match=r"threshold_check.py: no records in .*Split-eval"):
        threshold_check.main([_fake_root(tmp_path, binary_model, with_records=False)])


def test_re_deals_keep_patient_groups_whole_and_size_the_eval_part(threshold_check):
    rng = np.random.default_rng(1)
    groups = np.repeat([f"p{i}" for i in range(40)], rng.integers(1, 4, 40))
    for _ in range(20):
        is_eval = threshold_check.deal_by_group(groups, 30, rng)
        assert 27 <= is_eval.sum() <= 30  # whole groups of up to 3 films, never past 30
        assert not set(groups[is_eval]) & set(groups[~is_eval])


def test_resampled_rules_on_separable_and_on_overlapping_scores(threshold_check):
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200, int), np.zeros(200, int)]
    groups = np.array([f"g{i}" for i in range(400)])
    rules = threshold_check.rules_for([(0.95, 0.90), (0.97, 0.90)])
    assert list(rules) == ["sensitivity only", "shared slack 0.95/0.9", "shared slack 0.97/0.9"]
    assert rules["sensitivity only"] == (0.95, 0.0)
    separable = np.r_[rng.uniform(0.6, 1.0, 200), rng.uniform(0.0, 0.4, 200)]
    result = threshold_check.resample(y, separable, groups, 200, 30, rules, (0.95, 0.90))
    assert result["deals"] == 30
    for shared in ("shared slack 0.95/0.9", "shared slack 0.97/0.9"):
        assert result[shared]["both_met"] == 1.0 and result[shared]["mean_sensitivity"] == 1.0
    # The sensitivity-only rule sits on the 10th-lowest eval positive, so some test positives fall under it.
    assert result["sensitivity only"]["mean_sensitivity"] < 1.0
    # Overlapping scores: no rule meets 0.95 / 0.90 reliably, and the shares are proportions.
    overlapping = np.r_[rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)]
    result = threshold_check.resample(y, 1 / (1 + np.exp(-overlapping)), groups, 200, 30, rules, (0.95, 0.90))
    for rule in rules:
        assert result[rule]["both_met"] == 0.0 and 0.0 <= result[rule]["sensitivity_bar_met"] <= 1.0
    # A higher sensitivity target buys sensitivity with specificity on the same deals.
    assert (result["shared slack 0.97/0.9"]["mean_sensitivity"] > result["shared slack 0.95/0.9"]["mean_sensitivity"]
            and result["shared slack 0.97/0.9"]["mean_specificity"] < result["shared slack 0.95/0.9"]["mean_specificity"])


def test_resample_option_on_a_pipeline_root(threshold_check, binary_model, tmp_path, capsys):
    root = _fake_root(tmp_path, binary_model)
    assert threshold_check.main([root, "--resample", "4", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["resample"]["deals"] == 4 and result["resample"]["bars"] == [0.95, 0.9]
    for rule in ("sensitivity only", "shared slack 0.95/0.9"):
        assert 0.0 <= result["resample"][rule]["both_met"] <= result["resample"][rule]["sensitivity_bar_met"] <= 1.0
    for bad in (["--resample", "-1"], ["--resample", "4", "--bars", "95", "90"], ["--targets", "0.95", "-0.1"],
                ["--targets", "0.95", "0.9", "--targets", "1.5", "0.9"]):
        with pytest.raises(SystemExit) as exit_info:
            threshold_check.main([root, *bad])
        assert exit_info.value.code == 2, bad
    err = capsys.readouterr().err
    assert "--bars must be two proportions in [0, 1], got 95.0 90.0" in err
    assert "--targets must be two proportions in [0, 1], got 1.5 0.9" in err


def test_each_rule_judged_on_each_roots_own_test_split_and_counted_over_roots(
        threshold_check, binary_model, tmp_path, capsys):
    roots = [_fake_root(tmp_path / name, binary_model) for name in ("a", "b")]
    args = ["--targets", "0.95", "0.90", "--targets", "0.5", "0.5", "--bars", "0.95", "0.0"]
    assert threshold_check.main([*roots, *args, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    model = predict.load_model(binary_model.model_dir)
    data = ev.load_tfrecords(binary_model.data_dir)
    scores = np.asarray(model.predict_examples(data.serialized)["covid_probability"]).ravel()
    covid = (data.labels == model.task.positive_index).astype(int)
    for name, targets in (("sensitivity only", (0.95, 0.0)), ("shared slack 0.95/0.9", (0.95, 0.9)),
                          ("shared slack 0.5/0.5", (0.5, 0.5))):
        row = results[0]["rules"][name]
        assert row["threshold"] == pytest.approx(T.choose_threshold(covid, scores, *targets))
        sens, _ = T.sensitivity_specificity(covid, scores, row["threshold"])
        assert row["test"]["sensitivity"]["value"] == pytest.approx(sens)
        assert row["both_met"] == (sens >= 0.95)  # eval and test are the same records; the spec bar is 0
    # Eval = test here, so the 0.95 rules meet the 0.95 sensitivity bar on test as they do on eval.
    assert results[0]["rules"]["sensitivity only"]["both_met"]
    assert threshold_check.main([*roots, *args]) == 0
    table = capsys.readouterr().out
    met = sum(r["rules"]["shared slack 0.5/0.5"]["both_met"] for r in results)
    assert "over 2 roots (each its own training and test split):" in table
    assert f"shared slack 0.5/0.5         both bars met on {met} of 2 test splits" in table
    assert "sensitivity only             both bars met on 2 of 2 test splits" in table


def test_run_as_a_script_a_missing_root_is_its_one_line_without_import_time_warnings(run_script, tmp_path):
    result = run_script("threshold_check", str(tmp_path / "absent"))
    assert result.returncode == 1 and result.stderr.splitlines() == [
        f"threshold_check.py: {tmp_path / 'absent'}: no Trainer model or ImportExampleGen examples (not a finished "
        "pipeline root?)"], result.stderr
