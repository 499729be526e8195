"""The command line's own behaviour: which -v is the group's (its one-line failures: messages_test.py)."""
from covid_cxr import cli


def test_only_the_groups_own_verbose_flag_shows_import_time_warnings():
    assert cli._verbose_requested(["covid-cxr", "-v", "run", "--data", "x"])
    assert cli._verbose_requested(["covid-cxr", "--verbose", "predict"])
    assert not cli._verbose_requested(["covid-cxr", "predict", "--verbose", "--model", "m"])  # a usage error
    assert not cli._verbose_requested(["covid-cxr", "run", "--data", "-v"])
    assert not cli._verbose_requested(["covid-cxr"])


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
