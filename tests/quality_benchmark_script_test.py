"""scripts/quality_benchmark.py's repeated splits, with the curate/run/evaluate commands stubbed out."""
import csv
import json
import os

import pytest

from covid_cxr.data import curate, pseudonym, testing, writer


@pytest.fixture()
def benchmark(monkeypatch, load_script, tmp_path_factory):
    module = load_script("quality_benchmark")
    monkeypatch.setattr(module, "SHARED", str(tmp_path_factory.mktemp("shared")))  # no real films to hash
    calls = []

    def sh(args, log, env=None):
        calls.append((args, env))
        command = args[1]
        if command == "curate":  # a curated directory of no films, for the external check's near-copy search
            out = args[args.index("--out") + 1]
            os.makedirs(out)
            with open(os.path.join(out, "summary.json"), "w") as f:
                json.dump({"settings": {"hash": "dct-phash-256", "hash_threshold": 40}}, f)
            with open(os.path.join(out, "manifest.csv"), "w") as f:
                f.write(",".join(writer.MANIFEST_FIELDS) + "\n")
        elif command == "run":
            root = args[args.index("--pipeline-root") + 1]
            os.makedirs(os.path.join(root, "Trainer", "model", "7", "Format-Serving"))
            os.makedirs(os.path.join(root, "ImportExampleGen", "examples", "1", "Split-test"))
        return 60.0

    monkeypatch.setattr(module, "sh", sh)
    monkeypatch.setattr(module, "evaluate", lambda model, data, out_dir, log, options=(): {
        "n": 4, "data": data, "options": list(options), "atypical": {"value": 0.25, "ci95": [0.05, 0.7], "k": 1, "n": 4}})
    monkeypatch.delenv(pseudonym.ENV_VAR, raising=False)
    return module, calls


def test_each_split_is_curated_under_its_own_key_and_run_in_its_own_root(benchmark, tmp_path):
    module, calls = benchmark
    results = [module.run_task("covid-vs-pneumonia", str(tmp_path), ["training.epochs=1"], split) for split in (0, 1, 2)]

    curations = [(args, env) for args, env in calls if args[1] == "curate"]
    assert len(curations) == 3
    assert curations[0][1] is None  # split 0: the user's own key
    keys = [env[pseudonym.ENV_VAR] for _, env in curations[1:]]
    assert len(set(keys)) == 2 and all(len(k) == 64 for k in keys)
    assert not any(key in " ".join(args) for args, _ in calls for key in keys)  # never on a command line

    roots = [args[args.index("--pipeline-root") + 1] for args, _ in calls if args[1] == "run"]
    assert [os.path.basename(r) for r in roots] == [
        "root-covid-vs-pneumonia", "root-covid-vs-pneumonia-split1", "root-covid-vs-pneumonia-split2"]
    assert [r["split"] for r in results] == [0, 1, 2]
    assert [r["test"]["data"].startswith(root) for r, root in zip(results, roots)] == [True] * 3
    assert all("training.epochs=1" in args for args, _ in calls if args[1] == "run")
    # Timed runs never come from the cache; a user's own --set comes later and may still override.
    runs = [args for args, _ in calls if args[1] == "run"]
    assert all(args.index("runtime.enable_cache=false") < args.index("training.epochs=1") for args in runs)
    # Kermany's paediatric pneumonias are not trained on: they are the external check, as PNEUMONIA.
    assert "kermany=" not in " ".join(curations[0][0])
    assert [r["external"]["data"] for r in results] == [str(tmp_path / f"external-{name}-without-curated-copies")
                                                        for name in ("covid-vs-pneumonia", "covid-vs-pneumonia-split1",
                                                                     "covid-vs-pneumonia-split2")]
    assert os.path.isdir(tmp_path / "external-covid-vs-pneumonia" / "PNEUMONIA")


def test_a_curated_split_is_reused(benchmark, tmp_path):
    module, calls = benchmark
    module.run_task("covid-vs-pneumonia", str(tmp_path), [], 1)
    calls.clear()
    for name in ("root-covid-vs-pneumonia-split1",):
        os.rename(tmp_path / name, tmp_path / (name + "-old"))
    module.run_task("covid-vs-pneumonia", str(tmp_path), [], 1)
    assert [args[1] for args, _ in calls] == ["run"]


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_splits_below_one_is_a_usage_error(benchmark, monkeypatch, capsys, value):
    module, calls = benchmark
    monkeypatch.setattr(module.sys, "argv", ["quality_benchmark.py", "--splits", value])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2 and not calls
    assert f"--splits: must be a whole number of at least 1, got '{value}'" in capsys.readouterr().err


def test_first_split_runs_fresh_draws_only(benchmark, monkeypatch, tmp_path, capsys):
    module, calls = benchmark
    monkeypatch.setattr(module, "SHARED", str(tmp_path))
    monkeypatch.setattr(module.sys, "argv", ["quality_benchmark.py", "--tasks", "covid-vs-normal", "--splits", "2",
                                             "--first-split", "1", "--out", str(tmp_path / "out")])
    module.main()
    curations = [env for args, env in calls if args[1] == "curate"]
    assert len(curations) == 2 and all(env and env[pseudonym.ENV_VAR] for env in curations)  # no split 0
    roots = [os.path.basename(args[args.index("--pipeline-root") + 1]) for args, _ in calls if args[1] == "run"]
    assert roots == ["root-covid-vs-normal-split1", "root-covid-vs-normal-split2"]
    monkeypatch.setattr(module.sys, "argv", ["quality_benchmark.py", "--first-split", "-1"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2 and "--first-split must be 0 or more, got -1" in capsys.readouterr().err


def test_hold_out_curates_a_source_apart_and_evaluates_on_it(benchmark, monkeypatch, tmp_path, capsys):
    module, calls = benchmark
    monkeypatch.setattr(module, "SHARED", str(tmp_path))
    out = tmp_path / "out"
    monkeypatch.setattr(module.sys, "argv", ["quality_benchmark.py", "--tasks", "covid-vs-normal", "--first-split", "3",
                                             "--hold-out", "cohen", "--out", str(out)])
    module.main()
    [curation] = [args for args, _ in calls if args[1] == "curate"]
    held_out = str(out / "heldout-covid-vs-normal-without-cohen-split3")
    assert curation[curation.index("--hold-out") + 1] == f"cohen={held_out}"
    assert curation[curation.index("--out") + 1] == str(out / "curated-covid-vs-normal-without-cohen-split3")
    [result] = module.json.load(open(out / "results.json"))
    assert result["hold_out"] == "cohen" and result["held_out"]["data"] == held_out
    assert result["test"]["data"].startswith(str(out / "root-covid-vs-normal-without-cohen-split3"))
    printed = capsys.readouterr().out
    assert "external: cohen (held out of training: an unseen source)" in printed
    assert "| AUC | accuracy | atypical | pipeline minutes |" in printed
    assert printed.count("| 0.250 [0.050, 0.700] |") == 3  # own test split, held-out source, Kermany
    # A source the task is not curated from cannot be held out of it.
    calls.clear()
    monkeypatch.setattr(module.sys, "argv", ["quality_benchmark.py", "--tasks", "three-class", "covid-vs-normal",
                                             "--hold-out", "kermany", "--out", str(out)])
    with pytest.raises(SystemExit, match="--hold-out kermany: covid-vs-normal is not curated from it"):
        module.main()
    assert not calls  # three-class, listed first, did not run before the refusal


def test_a_reused_root_is_measured_on_its_newest_test_split(benchmark, tmp_path):
    """Execution ids are numbers: examples/12 is newer than examples/9 (a string sort put 9 last)."""
    module, _ = benchmark
    root = tmp_path / "root-covid-vs-pneumonia"
    for execution in ("9", "12"):
        os.makedirs(root / "ImportExampleGen" / "examples" / execution / "Split-test")
    # (the stubbed run then adds examples/1: older still)
    result = module.run_task("covid-vs-pneumonia", str(tmp_path), [])
    assert result["test"]["data"] == str(root / "ImportExampleGen" / "examples" / "12" / "Split-test")


def test_a_reused_root_is_measured_with_its_newest_model_by_execution_id_not_file_time(benchmark, tmp_path):
    module, _ = benchmark
    models = tmp_path / "root-covid-vs-pneumonia" / "Trainer" / "model"
    for execution in ("12", "9"):
        os.makedirs(models / execution / "Format-Serving")
    os.utime(models / "9", (2_000_000_000, 2_000_000_000))  # touched last (a copy, a restore): not the newest run
    assert module.run_task("covid-vs-pneumonia", str(tmp_path), [])["model"] == str(models / "12")


def test_a_run_that_left_no_trained_model_is_one_line_and_exit_code_2(benchmark, monkeypatch, tmp_path, capsys):
    module, calls = benchmark
    stub = module.sh
    monkeypatch.setattr(module, "sh", lambda args, log, env=None: 60.0 if args[1] == "run" else stub(args, log, env))
    monkeypatch.setattr(module, "SHARED", str(tmp_path))
    out = tmp_path / "out"
    monkeypatch.setattr(module.sys, "argv", ["quality_benchmark.py", "--tasks", "covid-vs-normal", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"quality_benchmark: {out / 'root-covid-vs-normal'}: no Trainer model or ImportExampleGen examples (not a "
        f"finished pipeline root?); see {out / 'covid-vs-normal.log'}\n")
    assert [args[1] for args, _ in calls] == ["curate"]  # curated; the (stubbed) run left no model


def test_evaluate_options_reach_every_evaluation_and_the_command_line(benchmark, load_script, monkeypatch, tmp_path):
    module, _ = benchmark
    result = module.run_task("covid-vs-pneumonia", str(tmp_path), [], evaluate_options=["--attention"])
    assert result["test"]["options"] == result["external"]["options"] == ["--attention"]
    assert module.run_task("covid-vs-pneumonia", str(tmp_path / "plain"), [])["test"]["options"] == []  # off by default
    # The real evaluate puts them on covid-cxr evaluate's command line.
    import subprocess

    ran = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kwargs: ran.append(args) or subprocess.CompletedProcess(
        args, 0, stdout="{}", stderr=""))
    real = load_script("quality_benchmark").evaluate  # the fixture's module has it stubbed
    assert real("m", "d", str(tmp_path / "out"), str(tmp_path / "log"), ["--attention"]) == {}
    assert ran[0][-1] == "--attention" and ran[0][ran[0].index("--model") + 1] == "m"


def test_external_films_that_copy_a_curated_film_are_left_out_and_listed(benchmark, monkeypatch, tmp_path, capsys):
    """Kermany's normals are external to covid-vs-normal, but Radiography's normals, which it trains on,
    hold some of them re-encoded: those films are left out of the external check, each named with its copy."""
    module, _ = benchmark
    shared = tmp_path / "shared"
    rad = shared / "radiography"
    testing.write_image(rad / "Normal" / "Normal-1.png", testing.radiograph(70), rgb=True, size=(224, 224))
    testing.write_image(rad / "COVID" / "COVID-1.png", testing.radiograph(71))
    kermany = shared / "chest-xray-pneumonia"
    testing.write_image(kermany / "train" / "NORMAL" / "IM-0001.jpeg", testing.radiograph(70))  # Radiography's Normal-1
    testing.write_image(kermany / "test" / "NORMAL" / "IM-0002.jpeg", testing.radiograph(72))
    (kermany / "test" / "NORMAL" / "IM-0003.jpeg").write_bytes(b"not a jpeg")  # not hashed: kept, and said
    stub = module.sh

    def sh(args, log, env=None):  # curation for real, of the Radiography folder alone
        if args[1] != "curate":
            return stub(args, log, env)
        curate.curate({"radiography": str(rad)}, args[args.index("--out") + 1], "covid-vs-normal",
                      key="quality-benchmark-test-key-0123456789", workers=1)
        return 1.0

    monkeypatch.setattr(module, "sh", sh)
    monkeypatch.setattr(module, "SHARED", str(shared))
    out = tmp_path / "out"
    monkeypatch.setattr(module.sys, "argv", ["quality_benchmark.py", "--tasks", "covid-vs-normal", "--first-split", "2",
                                             "--out", str(out)])
    module.main()
    [result] = json.load(open(out / "results.json"))
    evaluated = result["external"]["data"]
    assert evaluated == str(out / "external-covid-vs-normal-split2-without-curated-copies")
    assert sorted(os.listdir(os.path.join(evaluated, "NORMAL"))) == ["test-IM-0002.jpeg", "test-IM-0003.jpeg"]
    assert sorted(os.listdir(out / "external-covid-vs-normal" / "NORMAL")) == [
        "test-IM-0002.jpeg", "test-IM-0003.jpeg", "train-IM-0001.jpeg"]
    listing = str(out / "external-covid-vs-normal-split2-left-out.csv")
    [row] = list(csv.DictReader(open(listing)))
    assert (row["external_film"], row["curated_film"]) == ("train-IM-0001.jpeg", "radiography:Normal/Normal-1.png")
    assert int(row["distance_bits"]) <= 40 and row["reason"] == "near copy of a curated film (<= 40 bits)"
    left = result["external"]["left_out"]
    assert (left["k"], left["n"], left["file"], list(left["unchecked"])) == (1, 3, listing, ["test-IM-0003.jpeg"])
    printed = capsys.readouterr()
    line = (f"left out 1 of 3 external films: near copies of curated films (<= 40 bits; {listing}); "
            "kept 1 that could not be hashed")
    assert f"covid-vs-normal split 2 external: {line}" in printed.out
    assert f"quality_benchmark: covid-vs-normal-split2: {line}" in printed.err


def test_a_curated_directory_without_hashes_stops_the_external_check_with_one_line(benchmark, monkeypatch, tmp_path):
    module, _ = benchmark
    stub = module.sh

    def sh(args, log, env=None):  # a curation that wrote no manifest
        code = stub(args, log, env)
        if args[1] == "curate":
            os.remove(os.path.join(args[args.index("--out") + 1], "manifest.csv"))
        return code

    monkeypatch.setattr(module, "sh", sh)
    with pytest.raises(SystemExit, match=r"^quality_benchmark: .*curated-covid-vs-normal: cannot read its films' hashes "
                                         r"\(FileNotFoundError"):
        module.run_task("covid-vs-normal", str(tmp_path), [])
