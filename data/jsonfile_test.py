"""A small JSON file is a dict or a one-line ValueError naming the file, whatever is wrong with it."""
import io
import re

import pytest

from covid_cxr.data import jsonfile


def _load(text):
    return jsonfile.load_object(io.StringIO(text), "run/summary.json", "curation summary")


def test_an_object_is_returned_as_read():
    assert _load('{"train": {"covid": 3}, "seed": 42}') == {"train": {"covid": 3}, "seed": 42}


@pytest.mark.parametrize("text, kind", [("null", "NoneType"), ('"covid"', "str"), ("3", "int"), ("[]", "list")])
def test_json_that_is_not_an_object_is_refused_by_kind(text, kind):
    with pytest.raises(ValueError, match=re.escape(
            f"run/summary.json: not a curation summary (a JSON {kind} where an object belongs)")):
        _load(text)


def test_an_unparsable_file_names_the_file_and_where_in_it_without_the_parser_traceback():
    # Truncated mid-write (empty too: no silent {}), and one not even UTF-8 (the reader's decode
    # error is a ValueError of its own, not a JSONDecodeError).
    for text, where in (('{"train": ', "line 1 column 11"), ("", "line 1 column 1")):
        with pytest.raises(ValueError, match=re.escape(
                f"run/summary.json: not a curation summary (invalid JSON: Expecting value: {where}")) as e:
            _load(text)
        assert e.value.__cause__ is None and e.value.__suppress_context__  # no "during handling of" parser trace
    latin1 = io.TextIOWrapper(io.BytesIO(b'{"site": "h\xf4pital"}'), encoding="utf-8")
    with pytest.raises(ValueError, match=r"^run/summary.json: not a curation summary \(invalid JSON: 'utf-8' codec"):
        jsonfile.load_object(latin1, "run/summary.json", "curation summary")
