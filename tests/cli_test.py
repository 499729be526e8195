"""The command line's own behaviour: one bounded line per failure, which -v is the group's."""
from covid_cxr import cli


def test_a_failure_message_is_one_line_of_bounded_length():
    # A damaged TFRecord's error carries the record's bytes: 37 KB on one line, seen on a truncated shard.
    long = ValueError("Not a valid TFRecord. Fewer than 25070 bytes: b'" + "0a" * 20000 + "'\nsecond line")
    line = cli._first_line(long)
    assert line.startswith("Not a valid TFRecord. Fewer than 25070 bytes: b'0a0a")
    assert len(line) == cli.MAX_MESSAGE + len(" [...]") and line.endswith(" [...]")
    assert cli._first_line(KeyError()) == "KeyError" and cli._first_line(OSError("short\nmore")) == "short"


def test_only_the_groups_own_verbose_flag_shows_import_time_warnings():
    assert cli._verbose_requested(["covid-cxr", "-v", "run", "--data", "x"])
    assert cli._verbose_requested(["covid-cxr", "--verbose", "predict"])
    assert not cli._verbose_requested(["covid-cxr", "predict", "--verbose", "--model", "m"])  # a usage error
    assert not cli._verbose_requested(["covid-cxr", "run", "--data", "-v"])
    assert not cli._verbose_requested(["covid-cxr"])
