from covid_cxr import messages


def test_first_line_is_the_first_line_cut_at_the_limit_with_the_type_on_request():
    assert messages.first_line(OSError("short\nmore")) == "short"
    assert messages.first_line(KeyError()) == "KeyError"
    assert messages.first_line(ValueError("  \n")) == "ValueError"
    assert messages.first_line(ValueError("x" * 400)) == "x" * messages.MAX_MESSAGE + " [...]"
    assert messages.first_line(ValueError("abcdef"), limit=3) == "abc [...]"
    assert messages.first_line(ValueError("abc"), limit=3) == "abc"  # exactly the limit: nothing was cut
    assert messages.first_line(ValueError("bad\nvalue"), with_type=True) == "ValueError: bad"
    assert messages.first_line(KeyError(), with_type=True) == "KeyError"


def test_a_failure_message_is_one_line_of_bounded_length():
    # A damaged TFRecord's error carries the record's bytes: 37 KB on one line, seen on a truncated shard.
    long = ValueError("Not a valid TFRecord. Fewer than 25070 bytes: b'" + "0a" * 20000 + "'\nsecond line")
    line = messages.first_line(long)
    assert line.startswith("Not a valid TFRecord. Fewer than 25070 bytes: b'0a0a")
    assert len(line) == messages.MAX_MESSAGE + len(" [...]") and line.endswith(" [...]")
