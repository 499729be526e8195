"""The command line's own behaviour: which -v is the group's (its one-line failures: messages_test.py)."""
from covid_cxr import cli


def test_only_the_groups_own_verbose_flag_shows_import_time_warnings():
    assert cli._verbose_requested(["covid-cxr", "-v", "run", "--data", "x"])
    assert cli._verbose_requested(["covid-cxr", "--verbose", "predict"])
    assert not cli._verbose_requested(["covid-cxr", "predict", "--verbose", "--model", "m"])  # a usage error
    assert not cli._verbose_requested(["covid-cxr", "run", "--data", "-v"])
    assert not cli._verbose_requested(["covid-cxr"])
