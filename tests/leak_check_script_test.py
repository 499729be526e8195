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


def test_a_test_film_counts_as_leaked_only_when_a_near_copy_of_another_group_sits_in_train_or_eval(
        leak_check, tmp_path, monkeypatch, capsys):
    import numpy as np

    from covid_cxr.pipeline.config import DataConfig

    monkeypatch.setattr(leak_check, "REAL_DATA", tmp_path / "no-corpus")  # the RSNA check needs the shared corpus
    groups = [f"g{i}" for i in range(60)]
    split = dict(zip(groups, leak_check.split_of(groups, DataConfig())))
    test, trained = [g for g in groups if split[g] == "test"], [g for g in groups if split[g] != "test"]
    rng = np.random.default_rng(0)
    own = {g: rng.integers(0, 256, 32, dtype=np.uint8).tobytes() for g in groups}  # ~128 bits apart: no copies
    copy = bytearray(own[trained[0]])
    copy[0] ^= 0b111  # 3 bits from it: the same film, re-cropped
    hashes = {**{g: own[g].hex() for g in groups},
              test[0]: copy.hex(),  # leaked: a near copy of a train/eval film of another group
              test[2]: own[test[1]].hex()}  # a copy within the test split: no leak
    rows = [dict(group=g, source="cohen", hash=hashes[g], label="covid" if n % 2 else "normal")
            for n, g in enumerate(groups)]
    curated = tmp_path / "curated"
    curated.mkdir()
    with open(curated / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["group", "source", "hash", "label"])
        writer.writeheader()
        writer.writerows(rows)
    (curated / "summary.json").write_text(json.dumps({"settings": {}}))

    result = leak_check.check(str(curated), 56, DataConfig(), {})
    assert result["test_films"] == len(test)
    assert (result["test_with_copy_elsewhere"], result["leaked_groups"]) == (1, [test[0]])
    assert result["leaked_by_label"] == {next(r["label"] for r in rows if r["group"] == test[0]): 1}
    assert leak_check.check(str(curated), 2, DataConfig(), {})["test_with_copy_elsewhere"] == 0  # 3 bits > 2
    assert leak_check.main([str(curated)]) == 0
    assert "in train/eval: 1; RSNA films whose NIH patient is in train/eval: not checked" in capsys.readouterr().out
