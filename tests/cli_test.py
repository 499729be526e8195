"""The command line's own behaviour: which -v is the group's (its one-line failures: messages_test.py)."""
import json

from covid_cxr import cli
from covid_cxr.data.testing import DEALT_SEED


def test_only_the_groups_own_verbose_flag_shows_import_time_warnings():
    assert cli._verbose_requested(["covid-cxr", "-v", "run", "--data", "x"])
    assert cli._verbose_requested(["covid-cxr", "--verbose", "predict"])
    assert not cli._verbose_requested(["covid-cxr", "predict", "--verbose", "--model", "m"])  # a usage error
    assert not cli._verbose_requested(["covid-cxr", "run", "--data", "-v"])
    assert not cli._verbose_requested(["covid-cxr"])


def test_version_prints_the_packages_version_without_loading_tensorflow():
    """The console script's `--version` answers before the imports that load TensorFlow; in-process (the
    module already imported) click's option answers the same."""
    import re
    import subprocess
    import sys

    from click.testing import CliRunner

    import covid_cxr

    expected = f"covid-cxr {covid_cxr.__version__}\n"
    for flags in (["--version"], ["-V"], ["-v", "--version"]):
        result = CliRunner().invoke(cli.main, flags)
        assert (result.exit_code, result.output) == (0, expected), flags
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "covid_cxr.cli", "--version"],
                          capture_output=True, text=True, timeout=600)
    assert (done.returncode, done.stdout) == (0, expected)
    imported = re.findall(r"\| +([\w.]+)$", done.stderr, re.M)  # -X importtime: every module imported
    assert "covid_cxr" in imported and "tensorflow" not in imported
    # After the command, --version is the command's unknown option: a usage error, as before.
    assert "No such option: --version" in CliRunner().invoke(cli.main, ["run", "--version"]).output


def test_setup_py_takes_the_version_from_the_package(tmp_path):
    """One copy of the version: setup.py reads __init__.py's (the one --version prints)."""
    import os
    import shutil
    import subprocess
    import sys

    import covid_cxr

    root = os.path.dirname(covid_cxr.__file__)
    for name in ("setup.py", "requirements.txt"):
        shutil.copy(os.path.join(root, name), tmp_path / name)
    with open(os.path.join(root, "__init__.py"), encoding="utf-8") as f:
        package = f.read().replace(f'__version__ = "{covid_cxr.__version__}"', '__version__ = "9.8.7"')
    (tmp_path / "__init__.py").write_text(package, encoding="utf-8")
    done = subprocess.run([sys.executable, "setup.py", "--version"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert (done.returncode, done.stdout.splitlines()[-1:]) == (0, ["9.8.7"]), done.stderr


def test_the_demo_checks_where_it_writes_before_it_generates_data(tmp_path):
    from click.testing import CliRunner

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    result = CliRunner().invoke(cli.main, ["demo", "--out", str(tmp_path / "demo"), "--pipeline-root", str(a_file / "root")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"covid-cxr: error: runtime.pipeline_root (--pipeline-root) '{a_file / 'root'}' cannot be a directory: "
        f"'{a_file}' is a file"]
    assert not (tmp_path / "demo").exists()  # no synthetic data was written first


def test_a_refused_model_says_where_it_is_and_can_fail_the_command(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.data import synthetic
    from covid_cxr.evaluation import gate_report
    from covid_cxr.pipeline import metadata

    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    refused = metadata.RunOutcome(
        blessed=False, pushed=False, destination="", reason="", model_uri="root/Trainer/model/9",
        evaluation_uri="root/Evaluator/evaluation/10",
        report=gate_report.GateReport(False, {"sensitivity": 0.5}, ["sensitivity 0.5000 is below the minimum 0.9"], {}),
        decision_record="root/VersionedPusher/pushed_model/11/covid_cxr_decision.json")
    monkeypatch.setattr(local_runner, "run", lambda config, checked=None: refused)
    serving = tmp_path / "serving"
    args = ["run", "--preset", "quick", "--data", str(tmp_path / "data"), "--pipeline-root", str(tmp_path / "root"),
            "--serving-dir", str(serving)]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output  # a refusal is the gate at work, not a failed run
    assert "NOT BLESSED" in result.output
    assert (f"Not pushed, and {serving} holds no earlier model. predict and evaluate take the refused one as "
            "--model root/Trainer/model/9") in result.output
    assert "Gate decision:  root/VersionedPusher/pushed_model/11/covid_cxr_decision.json" in result.output
    (serving / "1700000000").mkdir(parents=True)
    result = CliRunner().invoke(cli.main, [*args, "--require-blessed"])
    assert result.exit_code == cli.REFUSED_EXIT == 3, result.output
    assert "Not pushed: the serving directory keeps its previous model." in result.output


def test_a_test_split_without_normal_films_is_named_not_printed_as_nan(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.data import synthetic
    from covid_cxr.evaluation import gate_report
    from covid_cxr.pipeline import metadata

    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    metrics = {"sensitivity": 1.0, "sensitivity at the gate's specificity": 0.0, "specificity": float("nan"),
               "AUC": 0.0, "true positives": 6,
               "false negatives": 0, "true negatives": 0, "false positives": 0}
    refused = metadata.RunOutcome(
        blessed=False, pushed=False, destination="", reason="", model_uri="m", evaluation_uri="e",
        report=gate_report.GateReport(False, metrics, [], {}))
    monkeypatch.setattr(local_runner, "run", lambda config, checked=None: refused)
    result = CliRunner().invoke(cli.main, ["run", "--preset", "quick", "--data", str(tmp_path / "data"),
                                           "--pipeline-root", str(tmp_path / "root"),
                                           "--serving-dir", str(tmp_path / "serving")])
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert "sensitivity 1.0000" in lines and "specificity not measurable" in lines and "AUC not measurable" in lines
    assert "sensitivity at the gate's specificity not measurable" in lines
    assert any(line.startswith("the test split holds no non-COVID films") for line in lines), lines
    assert "nan" not in result.output


def test_the_demo_does_not_replace_a_curated_dataset(tmp_path):
    from click.testing import CliRunner

    from covid_cxr.data import synthetic

    summary = synthetic.generate(str(tmp_path / "demo" / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    summary_file = tmp_path / "demo" / "data" / "summary.json"
    summary_file.write_text(json.dumps({k: v for k, v in summary.items() if k != "synthetic"}))  # as `curate` writes it
    before = {p.name: p.read_bytes() for p in (tmp_path / "demo" / "data").iterdir()}
    result = CliRunner().invoke(cli.main, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"covid-cxr: error: the demo's data folder '{tmp_path / 'demo' / 'data'}' holds a dataset `curate` wrote, "
        "which the demo would replace: choose another --out"]  # before it says it generates anything
    assert {p.name: p.read_bytes() for p in (tmp_path / "demo" / "data").iterdir()} == before
    assert not (tmp_path / "demo" / "root").exists()


def test_data_anomalies_and_an_interrupt_end_the_run_with_their_own_exit_codes(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.components.schema_gate import DataValidationError
    from covid_cxr.data import synthetic

    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    args = ["run", "--preset", "quick", "--data", str(tmp_path / "data"), "--pipeline-root", str(tmp_path / "root"),
            "--serving-dir", str(tmp_path / "serving")]

    def fails_with(error):
        def run(config, checked=None):
            raise error
        monkeypatch.setattr(local_runner, "run", run)
        return CliRunner().invoke(cli.main, args)

    # Bad data is a failed run (1), not a usage error (2): the command line was right.
    result = fails_with(DataValidationError("data validation failed, 1 anomaly: split test: feature label: Unexpected"))
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "covid-cxr: error: data validation failed, 1 anomaly: split test: feature label: Unexpected "
        "(the run stopped before Transform; fix the data or the schema)")
    result = fails_with(KeyboardInterrupt())
    assert result.exit_code == 130 and result.output.strip().splitlines()[-1] == "covid-cxr: error: interrupted"


def test_log_lines_read_like_the_cli_s_own_even_after_a_library_configures_logging(capsys):
    """absl's first log call (TFMA's, at import) runs logging.basicConfig(): users saw each warning twice,
    once as "WARNING:covid_cxr.trainer.task:..."."""
    import logging

    root = logging.getLogger()
    plain = logging.StreamHandler()  # what basicConfig() adds
    plain.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    root.addHandler(plain)
    try:
        cli._quiet_logs(verbose=False)
        logging.getLogger("covid_cxr.trainer.task").warning("cnn3: no pooled features layer")
        logging.getLogger("covid_cxr.trainer.task").info("hidden without -v")
        cli._quiet_logs(verbose=True)  # again, as a restarted run does: still one handler
        logging.getLogger("covid_cxr.trainer.task").info("shown with -v")
        err = capsys.readouterr().err.splitlines()
        assert err[0] == "covid-cxr: warning: cnn3: no pooled features layer"
        assert len(err) == 2 and err[1].startswith("covid-cxr: info: ") and err[1].endswith(
            " covid_cxr.trainer.task: shown with -v")
    finally:
        for handler in [h for h in root.handlers if h is plain or isinstance(h, cli._LogHandler)]:
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)


def test_max_side_has_curations_bounds_in_every_command():
    """predict and evaluate repeat curation's --max-side: a side curation cannot store is refused alike."""
    from click.testing import CliRunner

    from covid_cxr.data import images

    commands = (["curate", "--source", "folder=x", "--out", "o"], ["predict", "--model", "m", "x.png"],
                ["evaluate", "--model", "m", "--data", "d"])
    for side in (images.MIN_SIDE - 1, images.MAX_SIDE + 1):
        for args in commands:
            result = CliRunner().invoke(cli.main, [*args, "--max-side", str(side)])
            assert result.exit_code == 2, result.output
            assert f"'--max-side': {side} is not in the range {images.MIN_SIDE}<=x<={images.MAX_SIDE}." in result.output


def test_training_on_the_held_out_external_test_set_is_warned_about(tmp_path, monkeypatch):
    """`run --data curated/cohen` (the folder `curate --hold-out cohen=curated/cohen` wrote) trained on the
    external test set without a word."""
    import json

    from covid_cxr.data import synthetic

    synthetic.generate(str(tmp_path / "held"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    summary_file = tmp_path / "held" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["held_out_of"] = {"source": "cohen", "training_data": "curated/cvn"}
    summary_file.write_text(json.dumps(summary))
    result = _run_without_the_dag(tmp_path / "held", tmp_path, monkeypatch)
    assert "is the external test set `curate --hold-out` wrote (cohen's films, held out of 'curated/cvn')" in result.stderr
    assert ("note: films per split (train/eval/test 14/3/3 buckets): train normal 2, covid 3; eval normal 1, covid 1; "
            "test normal 3, covid 2\n") in result.stderr


def test_one_run_reads_the_manifest_once(tmp_path, monkeypatch):
    """The films per split were counted three times (manifest.csv read each time): `run`'s check of its
    inputs, its note, and local_runner.run's own check of the same inputs, again."""
    import builtins

    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.data import features, synthetic
    from covid_cxr.pipeline import metadata

    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    reads, counted, launched = [], [], []
    real_open, split_counts = builtins.open, local_runner.split_counts

    def counting_open(file, *args, **kwargs):
        if str(file).endswith(features.MANIFEST):
            reads.append(file)
        return real_open(file, *args, **kwargs)

    class Runner:  # the DAG launch, done: what comes before it is real
        def run(self, pipeline):
            launched.append(pipeline)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(local_runner, "split_counts", lambda *a: counted.append(a) or split_counts(*a))
    monkeypatch.setattr(local_runner, "create_pipeline", lambda config, connection: "the pipeline")
    monkeypatch.setattr(local_runner.tfx.orchestration, "LocalDagRunner", Runner)
    monkeypatch.setattr(metadata, "latest_outcome", lambda config: None)
    result = CliRunner(mix_stderr=False).invoke(cli.main, [
        "run", "--preset", "quick", "--data", str(tmp_path / "data"), "--pipeline-root", str(tmp_path / "root"),
        "--serving-dir", str(tmp_path / "serving")])
    assert result.exit_code == 0, (result.output, result.stderr)
    assert launched == ["the pipeline"] and "note: films per split (" in result.stderr
    assert (len(reads), len(counted)) == (1, 1), (reads, counted)


def test_the_demo_checks_its_settings_once_and_its_generated_data(tmp_path, monkeypatch):
    """`demo` checked its settings before generating the data, then local_runner.run checked them again."""
    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.pipeline import metadata

    settings, data, launched = [], [], []
    check_settings, check_data = local_runner.check_settings, local_runner.check_data

    class Runner:  # the DAG launch, done: what comes before it is real
        def run(self, pipeline):
            launched.append(pipeline)

    monkeypatch.setattr(local_runner, "check_settings", lambda config: settings.append(config) or check_settings(config))
    monkeypatch.setattr(local_runner, "check_data", lambda config: data.append(config) or check_data(config))
    monkeypatch.setattr(local_runner, "create_pipeline", lambda config, connection: "the pipeline")
    monkeypatch.setattr(local_runner.tfx.orchestration, "LocalDagRunner", Runner)
    monkeypatch.setattr(metadata, "latest_outcome", lambda config: None)
    result = CliRunner(mix_stderr=False).invoke(cli.main, ["demo", "--out", str(tmp_path / "demo"),
                                                           "--patients-per-class", "12"])
    assert result.exit_code == 0, (result.output, result.stderr)
    assert launched == ["the pipeline"] and (len(settings), len(data)) == (1, 1), (settings, data)
    assert (tmp_path / "demo" / "data" / "manifest.csv").exists()  # checked after it was generated


def test_the_held_out_warning_is_said_once_when_run_restarts_itself(tmp_path, monkeypatch):
    """`run` restarts itself for training.reproducible / onednn and the restarted process checks its
    inputs again: a warning given before the restart was said twice."""
    import json

    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.data import synthetic
    from covid_cxr.trainer import training

    synthetic.generate(str(tmp_path / "held"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    summary_file = tmp_path / "held" / "summary.json"
    summary_file.write_text(json.dumps(dict(json.loads(summary_file.read_text()),
                                            held_out_of={"source": "cohen", "training_data": "curated/cvn"})))
    monkeypatch.setattr(local_runner, "run", lambda config, checked=None: None)
    args = ["run", "--preset", "quick", "--data", str(tmp_path / "held"), "--pipeline-root", str(tmp_path / "root"),
            "--serving-dir", str(tmp_path / "serving")]

    def execve(*_):  # the restart: this process ends, the same command runs again with the variables set
        raise SystemExit(0)

    monkeypatch.setattr(cli.os, "execve", execve)
    stderr = ""
    for missing in ({"TF_DETERMINISTIC_OPS": "1"}, {}):  # before the restart, then the restarted process
        monkeypatch.setattr(training, "process_env_problems", lambda *_, missing=missing: missing)
        result = CliRunner(mix_stderr=False).invoke(cli.main, args)
        assert result.exit_code == 0, result.output
        stderr += result.stderr
    assert stderr.count("is the external test set `curate --hold-out` wrote") == 1, stderr


def test_sigterm_ends_the_command_in_one_line_like_an_interrupt(tmp_path, monkeypatch):
    """`kill PID` (or a container stopping) during a run: before, the process died silently with exit 143, and a
    Pusher's half-staged copy stayed in the serving directory (SIGTERM never unwound the stack)."""
    import os
    import signal
    import time

    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.data import synthetic

    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)

    def run(config, checked=None):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(local_runner, "run", run)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        result = CliRunner().invoke(cli.main, ["run", "--preset", "quick", "--data", str(tmp_path / "data"),
                                               "--pipeline-root", str(tmp_path / "root"),
                                               "--serving-dir", str(tmp_path / "serving")])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 143, result.output
    assert result.output.strip().splitlines()[-1] == "covid-cxr: error: terminated (SIGTERM)"


def test_the_demos_paths_under_out_give_way_to_config_and_set(tmp_path, monkeypatch):
    """`demo --set runtime.serving_dir=...` (or a --config naming it) pushed into <out>/serving all the same."""
    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.data import synthetic

    used = []
    monkeypatch.setattr(synthetic, "generate", lambda *args, **kwargs: {"accepted": 0, "patients": 0, "per_class": {}})
    monkeypatch.setattr(local_runner, "run", lambda config, checked=None: used.append(config.runtime))
    monkeypatch.setattr(local_runner, "check_data", lambda config: None)  # nothing was generated to check
    config_file = tmp_path / "c.yaml"
    config_file.write_text(f"runtime:\n  pipeline_root: {tmp_path / 'file-root'}\n")
    out = tmp_path / "demo"
    for args, root, serving in (
            ([], out / "root", out / "serving"),
            (["--config", str(config_file), "--set", f"runtime.serving_dir={tmp_path / 'set-serving'}"],
             tmp_path / "file-root", tmp_path / "set-serving"),
            (["--config", str(config_file), "--pipeline-root", str(tmp_path / "flag-root")],
             tmp_path / "flag-root", out / "serving")):
        result = CliRunner().invoke(cli.main, ["demo", "--out", str(out), *args])
        assert result.exit_code == 0, result.output
        assert (used[-1].pipeline_root, used[-1].serving_dir) == (str(root), str(serving))


def test_processes_the_command_starts_inherit_its_quiet_warnings(tmp_path, monkeypatch):
    """runtime.beam_running_mode=multi_processing starts Beam's workers as new Pythons: without -v they printed the
    import-time FutureWarnings this process hides (36 lines in a quick run). The process that ran the command (a
    test runner) gets its own setting back: the end-to-end tests' subprocesses must show what the CLI itself hides."""
    import os
    import subprocess
    import sys

    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.data import synthetic

    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    printed = []

    def run(config, checked=None):  # a process the run starts, as Beam starts its workers
        printed.append(subprocess.run([sys.executable, "-c", "import warnings; warnings.warn('old', FutureWarning)"],
                                      capture_output=True, text=True, check=True).stderr)

    monkeypatch.setattr(local_runner, "run", run)
    monkeypatch.setattr(cli, "print_outcome", lambda outcome, serving_dir: None)
    args = ["run", "--preset", "quick", "--data", str(tmp_path / "data"), "--pipeline-root", str(tmp_path / "root"),
            "--serving-dir", str(tmp_path / "serving")]
    for environment, verbose, shown in ((None, [], False), (None, ["-v"], True), ("default", [], True)):
        if environment is None:
            monkeypatch.delenv("PYTHONWARNINGS", raising=False)
        else:  # the user's own choice stays
            monkeypatch.setenv("PYTHONWARNINGS", environment)
        assert CliRunner().invoke(cli.main, [*verbose, *args]).exit_code == 0
        assert ("FutureWarning: old" in printed[-1]) == shown, (environment, verbose, printed[-1])
        assert os.environ.get("PYTHONWARNINGS") == environment  # as it was before the command


def test_the_sigterm_handler_is_the_commands_only(tmp_path):
    """After the command the caller's own SIGTERM handling is back (a test runner's, a script's)."""
    import signal

    from click.testing import CliRunner

    def own(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, own)
    try:
        assert CliRunner().invoke(cli.main, ["run", "--data", str(tmp_path / "missing")]).exit_code == 2
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)


def _outcome(blessed, pushed, metrics, failures=(), destination="", reason="", decision_record=""):
    from covid_cxr.evaluation import gate_report
    from covid_cxr.pipeline import metadata

    return metadata.RunOutcome(
        blessed=blessed, pushed=pushed, destination=destination, reason=reason, model_uri="root/Trainer/model/9",
        evaluation_uri="root/Evaluator/evaluation/10",
        report=gate_report.GateReport(blessed, metrics, list(failures), {}), decision_record=decision_record)


def test_a_pushed_models_figures_are_printed_in_one_column_with_counts_and_intervals(capsys, tmp_path):
    """The run's closing lines: each gate figure in one column (no '... change' diffs against the baseline),
    the example count whole, the counts at the served decision in TP FN TN FP order, Wilson intervals from
    those counts, where the model went; no 'Gate decision' line without a record."""
    from covid_cxr.evaluation import metrics as ci

    figures = {"sensitivity": 0.9, "sensitivity change": 0.01, "specificity": 0.8, "AUC": 0.93, "AUC change": -0.02,
               "accuracy": 0.85, "precision": 0.82, "examples": 40.0, "true positives": 18.0, "false negatives": 2.0,
               "true negatives": 16.0, "false positives": 4.0}
    cli.print_outcome(_outcome(True, True, figures, destination="serving/17"), str(tmp_path / "serving"))
    sens, spec = ci.wilson_interval(18, 20), ci.wilson_interval(16, 20)
    assert capsys.readouterr().out.splitlines() == [
        "",
        "BLESSED",
        f"  {'sensitivity':<28} 0.9000",
        f"  {'specificity':<28} 0.8000",
        f"  {'AUC':<28} 0.9300",
        f"  {'accuracy':<28} 0.8500",
        f"  {'precision':<28} 0.8200",
        f"  {'examples':<28} 40",
        "  at the served decision: 18 TP, 2 FN, 16 TN, 4 FP",
        f"  {'sensitivity 95% CI (Wilson)':<28} {sens[0]:.4f} - {sens[1]:.4f}",
        f"  {'specificity 95% CI (Wilson)':<28} {spec[0]:.4f} - {spec[1]:.4f}",
        "Model pushed to serving/17",
        "Model artifact: root/Trainer/model/9",
        "Evaluation:     root/Evaluator/evaluation/10",
    ]


def test_a_blessed_model_not_pushed_again_and_a_refused_ones_failures_are_said(capsys, tmp_path):
    cli.print_outcome(_outcome(True, False, {"sensitivity": 0.9}, destination="serving/17",
                               reason="this model is already the newest served version"), str(tmp_path))
    out = capsys.readouterr().out
    assert "Not pushed again: this model is already the newest served version (serving/17)" in out
    assert "Not pushed:" not in out and "Model pushed" not in out
    failure = "sensitivity 0.5000 is below the minimum 0.9"
    cli.print_outcome(_outcome(False, False, {"sensitivity": 0.5}, failures=[failure],
                               decision_record="root/VersionedPusher/pushed_model/11/covid_cxr_decision.json"), str(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "NOT BLESSED" and f"  failed: {failure}" in lines
    assert lines[-1] == "Gate decision:  root/VersionedPusher/pushed_model/11/covid_cxr_decision.json"
    cli.print_outcome(None, str(tmp_path))
    assert capsys.readouterr().out == "The pipeline finished but recorded no push decision.\n"


def test_require_blessed_fails_a_run_that_recorded_no_decision(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.data import synthetic

    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    monkeypatch.setattr(local_runner, "run", lambda config, checked=None: None)
    result = CliRunner().invoke(cli.main, ["run", "--preset", "quick", "--data", str(tmp_path / "data"), "--pipeline-root",
                                           str(tmp_path / "root"), "--serving-dir", str(tmp_path / "serving"),
                                           "--require-blessed"])
    assert result.exit_code == cli.REFUSED_EXIT, result.output
    assert result.output.strip().splitlines()[-1] == "The pipeline finished but recorded no push decision."


def test_named_gate_flags_set_their_own_field_even_at_zero():
    config = cli.build_config("quick", None, ["gate.min_specificity=0.6"], min_sensitivity=0.0)
    assert (config.gate.min_sensitivity, config.gate.min_specificity) == (0.0, 0.6)
    config = cli.build_config("quick", None, ["gate.min_sensitivity=0.5"], min_specificity=0.75)
    assert (config.gate.min_sensitivity, config.gate.min_specificity) == (0.5, 0.75)
    # The same value twice is one value: said as --set and as its flag, written differently.
    config = cli.build_config("quick", None, ["gate.min_sensitivity=0.50", "gate.min_sensitivity=5e-1", "model.task=three-class"],
                              min_sensitivity=0.5, task="three-class")
    assert (config.gate.min_sensitivity, config.model.task) == (0.5, "three-class")


def test_a_field_given_two_different_values_on_the_command_line_is_an_error_not_one_dropped(tmp_path, monkeypatch):
    """`--set k=a --set k=b`, or --set and a flag that sets the same field (--task, --min-sensitivity, run's
    --data, demo's --out), kept one value without a word: `demo --set data.data_dir=D` wrote into <out>/data."""
    import pytest
    from click.testing import CliRunner

    from covid_cxr.data import synthetic
    from covid_cxr.pipeline.config import ConfigError

    for overrides, named, message in (
            (["gate.min_sensitivity=0.95", "gate.min_sensitivity=0.5"], {},
             "--set gate.min_sensitivity is given twice, as '0.95' and '0.5': give it once"),
            (["gate.min_sensitivity=0.95"], {"min_sensitivity": 0.5},
             "--min-sensitivity 0.5 and --set gate.min_sensitivity=0.95 disagree: give one of them"),
            (["model.task=covid-vs-normal"], {"task": "three-class"},
             "--task 'three-class' and --set model.task=covid-vs-normal disagree: give one of them"),
            (["data.data_dir=b"], {"data_dir": "a"},
             "--data 'a' and --set data.data_dir=b disagree: give one of them")):
        with pytest.raises(ConfigError) as raised:
            cli.build_config("quick", None, overrides, **named)
        assert str(raised.value) == message

    monkeypatch.setattr(synthetic, "generate", lambda *args, **kwargs: pytest.fail("generated data"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli.main, ["demo", "--out", str(out), "--set", f"data.data_dir={tmp_path / 'mine'}"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"covid-cxr: error: --out's data folder '{out / 'data'}' and --set data.data_dir={tmp_path / 'mine'} disagree: "
        "give one of them"]
    assert not out.exists()


def test_two_spellings_of_one_path_agree_and_two_places_do_not(tmp_path, monkeypatch):
    """`--pipeline-root out/x --set runtime.pipeline_root=out/x/` was refused as a disagreement. A bucket URI
    keeps its inner slashes (gs://b//x is another object) and its scheme (gs:/b/x is no URI)."""
    import pytest

    from covid_cxr.pipeline.config import ConfigError

    monkeypatch.chdir(tmp_path)
    for flag_value, text in (("out/x", "out/x/"), ("out/x", "./out//x"), ("out/x", str(tmp_path / "out" / "x")),
                             ("gs://bucket/x", "gs://bucket/x/")):
        config = cli.build_config("quick", None, [f"runtime.pipeline_root={text}", f"runtime.serving_dir={text}"],
                                  pipeline_root=flag_value, serving_dir=flag_value)
        assert config.runtime.pipeline_root == flag_value
    config = cli.build_config("quick", None, ["data.data_dir=d/", "data.data_dir=./d"])
    assert config.data.data_dir == "./d"
    for flag_value, text in (("out/x", "out/y"), ("gs://bucket/x", "gs://bucket//x"), ("gs://bucket/x", "gs:/bucket/x"),
                             ("gs://bucket/x", "s3://bucket/x")):
        with pytest.raises(ConfigError, match="disagree: give one of them$"):
            cli.build_config("quick", None, [f"runtime.pipeline_root={text}"], pipeline_root=flag_value)
    with pytest.raises(ConfigError, match="given twice"):  # not a path: its text is its value
        cli.build_config("quick", None, ["model.task=three-class/", "model.task=three-class"])


def test_every_path_field_compares_as_a_path(tmp_path, monkeypatch):
    """The CLI kept its own list of path fields, and had left out model.weights (an .h5 path):
    `--set model.weights=./w//x.h5 --set model.weights=w/x.h5` was refused as given twice."""
    import pytest

    from covid_cxr.pipeline import config as cfg

    monkeypatch.chdir(tmp_path)
    config = cli.build_config("quick", None, ["model.weights=./w//x.h5", "model.weights=w/x.h5"])
    assert config.model.weights == "w/x.h5"
    for key in sorted(cfg.path_fields()):
        section, _, name = key.partition(".")
        config = cli.build_config("quick", None, [f"{key}=./d//a.h5", f"{key}={tmp_path}/d/a.h5", f"{key}=d/a.h5"])
        assert getattr(getattr(config, section), name) == "d/a.h5", key
        with pytest.raises(cfg.ConfigError, match=f"^--set {key} is given twice, as 'd/a.h5' and 'd/b.h5': give it once$"):
            cli.build_config("quick", None, [f"{key}=d/a.h5", f"{key}=d/b.h5"])


def test_a_tilde_in_a_path_on_the_command_line_is_the_home_folder(tmp_path, monkeypatch):
    """`--pipeline-root $HOME/x --set runtime.pipeline_root=~/x` disagreed (bash leaves the ~ after `key=` alone), and
    `--set runtime.pipeline_root=~/x` alone wrote into a folder named ~ under the working directory."""
    import pytest

    from covid_cxr.pipeline import config as cfg

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    config = cli.build_config("quick", None, ["runtime.pipeline_root=~/x/"], pipeline_root=str(home / "x"))
    assert config.runtime.pipeline_root == str(home / "x")
    for key in sorted(cfg.path_fields()):
        section, _, name = key.partition(".")
        config = cli.build_config("quick", None, [f"{key}=./home/a.h5", f"{key}=~/a.h5"])
        assert getattr(getattr(config, section), name) == str(home / "a.h5"), key
        with pytest.raises(cfg.ConfigError, match=f"^--set {key} is given twice, as '~/a.h5' and 'a.h5': give it once$"):
            cli.build_config("quick", None, [f"{key}=~/a.h5", f"{key}=a.h5"])


def _commands(group):
    """{'demo': command, 'curate': command, ...}: every command under ``group``, nested groups' too."""
    import click

    found = {}
    for name, command in group.commands.items():
        found[name] = command
        if isinstance(command, click.Group):
            found.update({f"{name} {sub}": c for sub, c in _commands(command).items()})
    return found


def test_every_path_option_of_every_command_reads_a_tilde_as_the_home_folder(tmp_path, monkeypatch):
    """bash leaves the ~ of `--out=~/x` alone: the command's own path options got '~/x', a folder named ~ under
    the working directory or a file not found (the config's path fields expand it: user_path)."""
    import click

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    checked = set()
    for name, command in _commands(cli.main).items():
        for param in command.params:
            if isinstance(param.type, click.Path):
                flag = param.opts[0] if isinstance(param, click.Option) else param.name
                with click.Context(command) as ctx:
                    assert param.type.convert("~/x", param, ctx) == str(home / "x"), f"{name} {flag}"
                checked.add(f"{name} {flag}")
    assert {"run --config", "demo --out", "run --data", "run --pipeline-root", "run --serving-dir", "compile --output",
            "compile --data", "curate --out", "evaluate --model", "evaluate --data", "evaluate --out",
            "evaluate --pipeline-root", "predict --model", "predict inputs", "predict --explain"} <= checked, checked


def test_the_config_file_and_compiles_output_may_start_with_a_tilde(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covid_cxr import kubeflow_runner

    compiled = []
    monkeypatch.setattr(kubeflow_runner, "compile_pipeline",
                        lambda config, output, image: compiled.append((config.gate.min_sensitivity, output)) or [])
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    home.mkdir()
    (home / "c.yaml").write_text("gate:\n  min_sensitivity: 0.91\n")
    result = CliRunner().invoke(cli.main, ["compile", "--image", "registry.example/covid-cxr@sha256:" + "0" * 64,
                                           "--data", "gs://b/d", "--config=~/c.yaml", "--output=~/spec.json"])
    assert result.exit_code == 0, result.output
    assert compiled == [(0.91, str(home / "spec.json"))]
    assert result.output.splitlines()[-1] == f"Pipeline spec written to {home / 'spec.json'}"


def test_curate_writes_under_the_home_folder_for_a_tilde_in_out_and_source(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covid_cxr.data import testing

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for seed, folder in enumerate(("COVID", "Normal", "COVID", "Normal")):
        testing.write_image(home / "src" / folder / f"{seed}.png", testing.radiograph(seed))
    result = CliRunner().invoke(cli.main, ["curate", "--source", "folder=~/src", "--out=~/curated", "--workers", "1",
                                           "--key", "cli-test-key-0123456789abcdef0123456789"])
    assert result.exit_code == 0, result.output
    assert (home / "curated" / "summary.json").is_file()
    assert not (tmp_path / "~").exists()  # no folder named ~ in the working directory


def test_each_command_starts_from_its_own_preset(monkeypatch, tmp_path):
    """demo: quick; run and compile: full (real training), unless --preset says otherwise."""
    from click.testing import CliRunner

    presets = []

    def build_config(preset, *args, **kwargs):
        presets.append(preset)
        raise ValueError("stop here")

    monkeypatch.setattr(cli, "build_config", build_config)
    for args in (["demo", "--out", str(tmp_path / "d")], ["run", "--data", str(tmp_path)],
                 ["compile", "--image", "registry.example/covid-cxr:1", "--data", "gs://b/d"],
                 ["run", "--preset", "quick", "--data", str(tmp_path)]):
        assert CliRunner().invoke(cli.main, args).exit_code == 2
    assert presets == ["quick", "full", "full", "quick"]


def test_file_and_permission_errors_are_user_errors_and_other_failures_name_the_run(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.data import synthetic

    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    args = ["run", "--preset", "quick", "--data", str(tmp_path / "data"), "--pipeline-root", str(tmp_path / "root"),
            "--serving-dir", str(tmp_path / "serving")]

    def component():
        raise ValueError("the component's own error")

    def fails_with(error, verbose=()):
        def run(config, checked=None):
            if isinstance(error, local_runner.PipelineRunError):
                try:
                    component()
                except ValueError as cause:
                    raise error from cause
            raise error
        monkeypatch.setattr(local_runner, "run", run)
        result = CliRunner().invoke(cli.main, [*verbose, *args])
        result.lines = [line for line in result.output.strip().splitlines() if not line.startswith("note: ")]
        return result

    for error in (PermissionError(13, "Permission denied", "serving"), FileNotFoundError(2, "No such file", "x")):
        result = fails_with(error)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1] == f"covid-cxr: error: {error}"
    result = fails_with(RuntimeError("boom\nsecond line"))
    assert result.exit_code == 1 and result.lines == [
        "covid-cxr: error: the run failed: RuntimeError: boom (re-run with --verbose for the details)"]
    result = fails_with(local_runner.PipelineRunError("Trainer failed: ValueError: the component's own error"))
    assert result.exit_code == 1 and result.lines == [
        "covid-cxr: error: the run failed: Trainer failed: ValueError: the component's own error "
        "(re-run with --verbose for the details)"]
    # --verbose: the component's traceback (not the CLI's PipelineRunError wrapping it), then the line, no hint.
    result = fails_with(local_runner.PipelineRunError("Trainer failed: ValueError: the component's own error"), ["-v"])
    assert result.exit_code == 1, result.output
    assert "in component" in result.output and "PipelineRunError" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        "covid-cxr: error: the run failed: Trainer failed: ValueError: the component's own error")


def test_a_verbose_flag_after_the_command_names_where_it_goes_and_usage_errors_name_their_help(monkeypatch):
    from click.testing import CliRunner

    for flag in ("-v", "--verbose"):
        result = CliRunner().invoke(cli.main, ["predict", flag], prog_name="covid-cxr")
        assert result.exit_code == 2 and result.output == (
            f"covid-cxr: error: No such option: {flag} here: -v / --verbose goes before the command, as in "
            "`covid-cxr -v predict ...`\n")
    result = CliRunner().invoke(cli.main, ["run"], prog_name="covid-cxr")
    assert result.exit_code == 2 and result.output == "covid-cxr: error: Missing option '--data'. (see `covid-cxr run --help`)\n"


def test_an_option_missing_its_value_names_its_commands_help():
    """click's parser raises these without the command's context: the hint read "(see `--help`)", the group's."""
    from click.testing import CliRunner

    for args, option in ((["run", "--data"], "--data"), (["demo", "--out"], "--out"),
                         (["predict", "--model", "m", "--json=yes", "x.png"], "--json")):
        result = CliRunner().invoke(cli.main, args, prog_name="covid-cxr")
        assert result.exit_code == 2, result.output
        assert result.output.endswith(f" (see `covid-cxr {args[0]} --help`)\n") and f"'{option}'" in result.output, \
            result.output
        assert len(result.output.splitlines()) == 1


def test_an_abort_or_a_commands_own_click_error_ends_in_one_line_with_exit_1(tmp_path, monkeypatch):
    """click.Abort, and a ClickException that is no usage error (curate's 'no image was accepted'), keep exit 1."""
    import click
    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.data import synthetic

    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    for error, line in ((click.Abort(), "covid-cxr: error: aborted"),
                        (click.ClickException("no image was accepted"), "covid-cxr: error: no image was accepted")):
        def run(config, checked=None, error=error):
            raise error

        monkeypatch.setattr(local_runner, "run", run)
        result = CliRunner().invoke(cli.main, ["run", "--preset", "quick", "--data", str(tmp_path / "data"),
                                               "--pipeline-root", str(tmp_path / "root"), "--serving-dir", str(tmp_path / "s")])
        assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == line, result.output


def test_import_time_warnings_are_hidden_unless_the_group_is_verbose(monkeypatch):
    """cli.py filters warnings when it is imported (Google client libraries warn about Python versions then):
    loaded afresh as its own module under each command line, the filter is there without -v only."""
    import importlib.util
    import warnings

    for argv, shown in ((["covid-cxr", "run", "--data", "d"], False), (["covid-cxr", "-v", "run", "--data", "d"], True)):
        monkeypatch.setattr("sys.argv", argv)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            spec = importlib.util.spec_from_file_location("covid_cxr_cli_fresh", cli.__file__)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            warnings.warn("at import", FutureWarning)
        assert bool(caught) == shown, (argv, caught)


def test_quiet_logs_hide_library_noise_that_verbose_shows(capsys):
    """Without -v: TensorFlow's warnings and Beam's and absl's errors (a failing transform's traceback, TFX's
    'Execution N failed') are not shown, the CLI says what failed; -v shows their progress lines."""
    import logging

    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("tensorflow", "apache_beam", "absl")}
    try:
        cli._quiet_logs(verbose=False)
        logging.getLogger("tensorflow").warning("tf warning")
        logging.getLogger("tensorflow").error("tf error")
        logging.getLogger("apache_beam").error("beam error")
        logging.getLogger("absl").error("absl error")
        err = capsys.readouterr().err
        assert "tf error" in err and "tf warning" not in err and "beam error" not in err and "absl error" not in err, err
        cli._quiet_logs(verbose=True)
        for name in ("tensorflow", "apache_beam", "absl"):
            logging.getLogger(name).info(f"{name} progress")
        err = capsys.readouterr().err
        assert all(f"{name} progress" in err for name in ("tensorflow", "apache_beam", "absl")), err
    finally:
        for handler in [h for h in root.handlers if isinstance(h, cli._LogHandler)]:
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_a_commands_help_is_no_failure():
    """`covid-cxr run --help` ends the command with click's Exit from inside the group's invoke: help and exit 0,
    not 'the run failed'."""
    from click.testing import CliRunner

    result = CliRunner().invoke(cli.main, ["run", "--help"], prog_name="covid-cxr")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: covid-cxr run [OPTIONS]") and "error" not in result.output


def test_the_demo_reuses_its_own_data_only_for_the_same_task_and_patients(tmp_path, monkeypatch):
    """A second demo with the same settings reuses the records (ExampleGen's cache then pushes nothing new); another
    --patients-per-class or --task generates them again."""
    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.data import synthetic

    generate, generated = synthetic.generate, []
    monkeypatch.setattr(synthetic, "generate", lambda *args, **kwargs: generated.append(args[1:]) or generate(*args, **kwargs))
    monkeypatch.setattr(local_runner, "run", lambda config, checked=None: None)
    out = tmp_path / "demo"
    for args, again in (([], True), ([], False), (["--patients-per-class", "13"], True),
                        (["--patients-per-class", "13", "--task", "covid-vs-pneumonia"], True)):
        before = len(generated)
        result = CliRunner().invoke(cli.main, ["demo", "--out", str(out), "--patients-per-class", "12", *args])
        assert result.exit_code == 0, result.output
        assert (len(generated) > before) == again and ("reusing the synthetic data already there" in result.output) != again
    assert generated[-1] == ("covid-vs-pneumonia", 13)


def test_the_demos_fewest_patients_deal_every_class_into_every_split_and_one_fewer_does_not():
    """`demo --patients-per-class 4` (the old minimum) generated its data and then was refused: at the default
    buckets its seed left eval without a normal patient."""
    from click.testing import CliRunner

    from covid_cxr.data import features, synthetic
    from covid_cxr.pipeline import config as cfg
    from covid_cxr.pipeline.pipeline import split_of

    data = cfg.load_config("quick").data

    def missing(task, patients):  # (split, class) pairs without a patient, as local_runner.check_data counts them
        findings = [f for f in features.FINDINGS if task.class_of(f) and f != features.OTHER_OPACITY]
        groups = [(synthetic.patient_group(0, f, p), task.class_of(f)) for f in findings for p in range(patients)]
        dealt = set(zip(split_of([g for g, _ in groups], data), [label for _, label in groups]))
        return {(split, label) for split in ("train", "eval", "test") for label in task.classes} - dealt

    fewest = cli.DEMO_MIN_PATIENTS_PER_CLASS
    assert not any(missing(features.get_task(name), fewest) for name in features.TASKS)
    assert missing(features.get_task("covid-vs-normal"), fewest - 1) == {("test", "normal")}
    result = CliRunner().invoke(cli.main, ["demo", "--patients-per-class", str(fewest - 1)])
    assert result.exit_code == 2 and f"{fewest}<=x<=10000" in result.output, result.output


def test_the_demo_names_its_data_folder_when_out_cannot_hold_it(tmp_path):
    from click.testing import CliRunner

    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "data").write_text("not a folder")
    result = CliRunner().invoke(cli.main, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"covid-cxr: error: the demo's data folder (--out) '{tmp_path / 'demo' / 'data'}' "), line


def test_the_demo_restarts_for_tensorflows_settings_before_it_generates_data(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covid_cxr import local_runner
    from covid_cxr.data import synthetic
    from covid_cxr.trainer import training

    def execve(path, argv, env):
        raise SystemExit(0)

    monkeypatch.setattr(training, "process_env_problems", lambda *_: {"TF_DETERMINISTIC_OPS": "1"})
    monkeypatch.setattr(cli.os, "execve", execve)
    monkeypatch.setattr(synthetic, "generate", lambda *args, **kwargs: _fail_test("generated before the restart"))
    monkeypatch.setattr(local_runner, "run", lambda config, checked=None: _fail_test("ran before the restart"))
    result = CliRunner().invoke(cli.main, ["demo", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("restarting with the TensorFlow settings of training.reproducible / training.onednn: "
                                    "TF_DETERMINISTIC_OPS=1")


def _fail_test(message):
    import pytest

    pytest.fail(message)


def _run_without_the_dag(data, tmp_path, monkeypatch):
    """`covid-cxr run --preset quick` on ``data`` with everything before the DAG real; its result, exit 0."""
    from click.testing import CliRunner

    from covid_cxr import local_runner

    monkeypatch.setattr(local_runner, "run", lambda config, checked=None: None)
    result = CliRunner(mix_stderr=False).invoke(cli.main, [
        "run", "--preset", "quick", "--data", str(data), "--pipeline-root", str(tmp_path / "root"),
        "--serving-dir", str(tmp_path / "serving")])
    assert result.exit_code == 0, result.output
    return result


def test_runs_settings_notes_are_said_before_the_run(tmp_path, monkeypatch):
    from covid_cxr import local_runner
    from covid_cxr.data import synthetic

    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    monkeypatch.setattr(local_runner, "settings_notes", lambda config: ["model.weights: the weights_dir copy is used"])
    result = _run_without_the_dag(tmp_path / "data", tmp_path, monkeypatch)
    assert "note: model.weights: the weights_dir copy is used\n" in result.stderr


def test_compile_prints_its_notes_then_where_the_spec_went(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covid_cxr import kubeflow_runner

    monkeypatch.setattr(kubeflow_runner, "compile_pipeline", lambda config, output, image: ["beam_workers is fixed"])
    out = str(tmp_path / "spec.json")
    # Named by digest: an image named by tag adds its own note first (tests/kubeflow_compile_test.py).
    result = CliRunner().invoke(cli.main, ["compile", "--image", "registry.example/covid-cxr@sha256:" + "0" * 64,
                                           "--data", "gs://b/d", "--pipeline-root", "gs://b/root",
                                           "--serving-dir", "gs://b/serving", "--output", out])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["note: beam_workers is fixed", f"Pipeline spec written to {out}"]
