"""scripts/leak_check.py refuses a damaged curated directory in one line (its end-to-end run is in
pipeline_e2e_test.py)."""
import csv
import json

import pytest


@pytest.fixture(scope="module")
def leak_check(load_script):
    return load_script("leak_check")


def _curated(path, hashes, summary=None):
    path.mkdir()
    with open(path / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["group", "source", "hash"])
        writer.writeheader()
        writer.writerows({"group": f"g{i}", "source": "cohen", "hash": h} for i, h in enumerate(hashes))
    (path / "summary.json").write_text(json.dumps({"settings": {}} if summary is None else summary))
    return str(path)


@pytest.mark.parametrize("hashes, summary, error", [
    (["00" * 32, "zz" * 32], None, "ValueError: non-hexadecimal number"),  # a hand-edited hash
    (["00" * 32, "00" * 8], None, "ValueError: perceptual hashes differ in length: 8 and 32 bytes"),
    (["00" * 32], {"no settings": 1}, "KeyError: 'settings'"),
], ids=["not-hex", "short-hash", "summary-without-settings"])
def test_a_damaged_curated_directory_is_one_line_and_exit_2(leak_check, tmp_path, capsys, hashes, summary, error):
    curated = _curated(tmp_path / "curated", hashes, summary)
    assert leak_check.main([curated]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{curated}: cannot check: {error}") and err.count("\n") == 1, err


def test_run_as_a_script_a_missing_directory_is_its_one_line_without_import_time_warnings(run_script, tmp_path):
    # Google client libraries, TFX and Beam printed ~35 warning lines at import before it.
    result = run_script("leak_check", str(tmp_path / "absent"))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"{tmp_path / 'absent'}: no manifest.csv: not a curated directory\n", result.stderr


def test_imported_by_a_test_the_script_leaves_the_runners_warning_filters(load_script):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_script("leak_check")
        warnings.warn("still shown", UserWarning)
    assert [str(w.message) for w in caught] == ["still shown"]
