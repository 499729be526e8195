import dataclasses
import os
import re
import subprocess
import sys
import typing

import pytest

from covid_cxr.pipeline import config as cfg


def test_defaults_presets_and_overrides_layer_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  image_size: 96\ngate:\n  min_specificity: 0.7\n")
    config = cfg.load_config("quick", str(path), {"gate.min_specificity": "0.75", "model.families": "cnn3,cnn4"})
    assert config.model.image_size == 96  # file beats preset (64)
    assert config.gate.min_specificity == 0.75  # override beats file
    assert config.model.families == ["cnn3", "cnn4"]
    assert config.training.batch_size == 16  # from the preset
    assert config.runtime.enable_cache is True  # default


@pytest.mark.parametrize("overrides, message", [
    ({"model.task": "covid-vs-cats"}, "unknown task 'covid-vs-cats'"),
    ({"gate.min_sensitivity": "1.5"}, "between 0 and 1"),
    ({"gate.bogus": "1"}, "unknown field gate.bogus"),
    ({"training.epochs": "many"}, "^override: training.epochs: 'many' is not a valid int$"),  # the field named once
    ({"runtime.enable_cache": "maybe"}, "not a valid bool"),
    ({"nosection": "1"}, "must be section.field"),
    ({"gate.max_auc_regression": "2"}, "gate.max_auc_regression must be between -1 and 1"),
    ({"gate.min_auc": "-0.1"}, "between 0 and 1"),
    ({"training.target_specificity": "1.2"}, "training.target_specificity must be between 0 and 1"),
    # Every gate bar and training target is checked, not only the first of each kind.
    ({"gate.min_specificity": "1.5"}, "^gate.min_specificity must be between 0 and 1, got 1.5$"),
    ({"training.target_sensitivity": "1.2"}, "^training.target_sensitivity must be between 0 and 1, got 1.2$"),
    ({"training.source_balance": "2"}, "training.source_balance must be between 0 and 1"),
    ({"tuner.fine_tune_layers": "[0, 20]", "tuner.fine_tune_epochs": "0"},
     "^tuner.fine_tune_layers lists several values, but with tuner.fine_tune_epochs 0 the Tuner's trials only train"),
    ({"tuner.fine_tune_epochs": "-1"}, "^tuner.fine_tune_epochs must be a whole number at least 0, got -1$"),
    ({"training.label_smoothing": "0.6"}, "^training.label_smoothing must be a number between 0.0 and 0.5, got 0.6$"),
    ({"training.atypical_quantile": "1"}, r"^training.atypical_quantile must be 0 \(no check\) or in \[0.5, 1\), got 1.0$"),
    ({"training.atypical_quantile": "0.3"}, "^training.atypical_quantile must be 0 .*, got 0.3$"),
    ({"training.member_min_auc": "0.49"}, r"^training.member_min_auc must be in \[0.5, 1\), got 0.49$"),
    ({"training.member_min_auc": "1"}, r"^training.member_min_auc must be in \[0.5, 1\), got 1.0$"),
    ({"training.member_min_auc": "nan"}, r"^training.member_min_auc must be in \[0.5, 1\), got nan$"),
    ({"tuner.dropouts": "[]"}, "tuner.dropouts must list at least one value"),
    ({"tuner.fine_tune_lr_factors": "[0.01, 2]"}, r"^tuner.fine_tune_lr_factors must be numbers above 0.0 and below 1.0 "
                                                  r"\(fine-tuning uses a lower learning rate than the head's\), got 2.0$"),
    ({"tuner.fine_tune_lr_factors": "[abc]"}, r"^override: tuner.fine_tune_lr_factors\[0\]: 'abc' is not a valid float$"),
    ({"training.epochs": "-1"}, r"^training.epochs must be a whole number at least 1, got -1$"),
    ({"training.batch_size": "0"}, "^training.batch_size must be a whole number at least 1, got 0$"),
    ({"tuner.trials": "0"}, "^tuner.trials must be a whole number at least 1"),
    ({"tuner.dropouts": "[5]"}, "^tuner.dropouts must be numbers between 0.0 and 0.95, got 5"),
    ({"tuner.learning_rates": "[0]"}, "^tuner.learning_rates must be numbers above 0.0 and at most 1.0, got 0"),
    ({"tuner.image_sizes": "[512]"}, "^tuner.image_sizes must be whole numbers between 16 and 224, got 512$"),
    ({"model.image_size": "100000"}, "^model.image_size must be a whole number between 16 and 1024"),
    ({"runtime.beam_workers": "-3"}, "^runtime.beam_workers must be a whole number at least 0"),
    ({"model.families": "[bogus]"}, "^model.families: unknown family 'bogus'; choose from cnn3, "),
    ({"model.ensemble_with": "[mobilenet_v9]"}, "^model.ensemble_with: unknown family 'mobilenet_v9'"),
    ({"model.fallback": "bogus"}, "^model.fallback must be none, error or a family name, got 'bogus'$"),
    ({"gate.slice_features": "[bogus]"}, "^gate.slice_features: 'bogus' is not a record feature to slice by; choose from source, view, sex$"),
    ({"training.reproducible": "true", "runtime.beam_workers": "2"}, "training.reproducible needs runtime.beam_workers=1"),
    ({"training.onednn": "fast"}, "^training.onednn must be on, off or auto, got 'fast'$"),
    ({"runtime.beam_extra_args": "[--runner]"}, "^runtime.beam_extra_args: argument --runner: expected one argument$"),
    ({"runtime.beam_extra_args": "[--direct_num_workers=abc]"},
     "^runtime.beam_extra_args: argument --direct_num_workers: invalid int value: 'abc'$"),
    ({"runtime.beam_extra_args": "[--runner=DirectRunner, --direct_num_wokers=2]"},
     r"^runtime.beam_extra_args: --direct_num_wokers is not a Beam option \(Beam would drop it\)$"),
    ({"runtime.beam_extra_args": "[-v]"}, r"^runtime.beam_extra_args: -v is not a Beam option \(Beam would drop it\)$"),
    # argparse's help exits without an error line (it was an IndexError, "the run failed").
    ({"runtime.beam_extra_args": "[--help]"}, r"^runtime.beam_extra_args: Beam's option parser printed its help and "
                                              r"exited \(-h / --help is not an option to run with\)$"),
    ({"model.border_crop": "0.3"}, r"model.border_crop must be between 0 and 0.25 \(of each side\), got 0.3"),
    ({"model.augment_gamma": "2"}, r"model.augment_contrast must be in \[0, 1\) and model.augment_gamma in \[0, 1\], got 0.0 and 2.0"),
    # Caught here rather than in the Tuner, after ExampleGen, StatisticsGen and Transform have run.
    ({"model.weights": "imagenett"}, "^model.weights must be auto, imagenet, none or a path to an .h5 file, got 'imagenett'$"),
    ({"model.weights": "w.H5"}, "^model.weights must be .* got 'w.H5'$"),  # what the Trainer would refuse
    ({"training.seed": "-1"}, "^training.seed must be a whole number between 0 and 4294967295, got -1$"),
    ({"training.seed": "99999999999999999999"}, "^training.seed must be a whole number between 0 and 4294967295"),
    ({"training.epochs": "inf"}, "^override: training.epochs: 'inf' is not a valid int$"),
    ({"tuner.dense_units": "[.inf]"}, r"^override: tuner.dense_units\[0\]: inf is not a valid int$"),
    ({"tuner.dropouts": "nan"}, "^tuner.dropouts must be numbers between 0.0 and 0.95, got nan$"),
    ({"tuner.learning_rates": "[.nan]"}, "^tuner.learning_rates must be numbers above 0.0 and at most 1.0, got nan$"),
    ({"model.augment": "5"}, "^override: model.augment: '5' is not a valid bool$"),
    ({"data.test_buckets": "0"}, "^data.test_buckets must be a whole number between 1 and 4294967295, got 0$"),
    # TFX's Pipeline takes at most 63 on every runner: `run` failed on it after its checks, `demo` after generating data.
    ({"runtime.pipeline_name": "p" * 64}, "^runtime.pipeline_name 'p{64}' is 64 characters: TFX takes at most 63$"),
    # ExampleGen's split proto holds a uint32: more failed minutes later as "Value out of range", blamed on a component.
    ({"data.train_buckets": "100000000000"}, "^data.train_buckets must be a whole number between 1 and 4294967295, got 100000000000$"),
    ({"runtime.mysql_port": "70000"}, "^runtime.mysql_port must be a whole number between 1 and 65535, got 70000$"),
    ({"runtime.mysql_host": "db", "runtime.mysql_database": ""},
     r"^runtime.mysql_database '' must be 1-64 letters, digits, _ or \$ \(not only digits\)"),
    ({"runtime.mysql_host": "db", "runtime.mysql_database": "mlmd-prod"}, "^runtime.mysql_database 'mlmd-prod' must be"),
    ({"runtime.mysql_host": "db", "runtime.mysql_database": "2024"}, "^runtime.mysql_database '2024' must be"),
    ({"runtime.mysql_port": "-1"}, "^runtime.mysql_port must be a whole number between 1 and 65535, got -1$"),
    ({"runtime.beam_running_mode": "threads"}, "^runtime.beam_running_mode 'threads' is not in_memory, multi_threading or multi_processing$"),
    ({"model.families": "[]"}, "^model.families must name at least one model family$"),
    # Fine-tuning is at a lower learning rate than the head's (issue 4): a factor of 1 is not lower.
    ({"tuner.fine_tune_lr_factors": "[0.1, 1]"}, r"^tuner.fine_tune_lr_factors must be numbers above 0.0 and below 1.0 "
                                                 r"\(fine-tuning uses a lower learning rate than the head's\), got 1.0$"),
    ({"model.augment_rotation_degrees": "181"}, "^model.augment_rotation_degrees must be a number between 0.0 and 180.0, got 181.0$"),
    ({"model.augment_rotation_degrees": "-5"}, "^model.augment_rotation_degrees must be a number between 0.0 and 180.0, got -5.0$"),
    ({"model.augment_rotation_degrees": "nan"}, "^model.augment_rotation_degrees must be a number between 0.0 and 180.0, got nan$"),
    ({"model.augment_rotation_degrees": "ten"}, "^override: model.augment_rotation_degrees: 'ten' is not a valid float$"),
    ({"model.augment_shift": "1"}, "^model.augment_shift must be a number at least 0.0 and below 1.0, got 1.0$"),
    ({"model.augment_shift": "-0.1"}, "^model.augment_shift must be a number at least 0.0 and below 1.0, got -0.1$"),
    ({"model.augment_shift": "[0.1]"}, r"^override: model.augment_shift: '\[0.1\]' is not a valid float$"),
    ({"model.augment_shear": "1.5"}, "^model.augment_shear must be a number between 0.0 and 1.0, got 1.5$"),
    ({"model.augment_shear": "-0.1"}, "^model.augment_shear must be a number between 0.0 and 1.0, got -0.1$"),
    ({"model.augment_zoom": "1"}, "^model.augment_zoom must be a number at least 0.0 and below 1.0, got 1.0$"),
    ({"model.augment_zoom": "inf"}, "^model.augment_zoom must be a number at least 0.0 and below 1.0, got inf$"),
    ({"model.augment_horizontal_flip": "sometimes"}, "^override: model.augment_horizontal_flip: 'sometimes' is not a valid bool$"),
    ({"model.augment_horizontal_flip": "0.5"}, "^override: model.augment_horizontal_flip: '0.5' is not a valid bool$"),
])
def test_bad_values_are_one_line_config_errors(overrides, message):
    with pytest.raises(cfg.ConfigError, match=message) as info:
        cfg.load_config(None, None, overrides)
    assert "\n" not in str(info.value)


def test_the_ends_of_every_range_are_accepted():
    # A gate demanding every COVID film (sensitivity 1) is strict, not wrong.
    config = cfg.load_config(None, None, {"gate.min_sensitivity": "1", "gate.min_specificity": "1", "gate.min_auc": "1",
                                          "training.target_sensitivity": "1", "training.target_specificity": "1",
                                          "training.source_balance": "1", "gate.max_auc_regression": "-1"})
    assert (config.gate.min_sensitivity, config.training.target_sensitivity) == (1.0, 1.0)
    assert cfg.load_config(None, None, {"gate.max_auc_regression": "1", "training.early_stopping_patience": "0",
                                        "training.atypical_quantile": "0.5"}).gate.max_auc_regression == 1.0
    assert cfg.load_config(None, None, {"training.member_min_auc": "0.5"}).training.member_min_auc == 0.5
    assert cfg.load_config(None, None, {"training.member_min_auc": "0.999"}).training.member_min_auc == 0.999
    assert cfg.load_config(None, None, {"runtime.pipeline_name": "p" * 63}).runtime.pipeline_name == "p" * 63


def test_yes_no_on_off_answers_from_the_command_line():
    for text, value in (("on", True), ("yes", True), ("1", True), ("off", False), ("no", False), ("0", False)):
        assert cfg.load_config(None, None, {"runtime.enable_cache": text}).runtime.enable_cache is value, text


def test_several_fine_tuning_values_are_fine_when_the_tuner_does_not_run():
    # Without the Tuner the first value of each list is used; nothing is left for trials to tell apart.
    config = cfg.load_config(None, None, {"tuner.enabled": "false", "tuner.fine_tune_layers": "[0, 20]",
                                          "tuner.fine_tune_epochs": "0"})
    assert config.tuner.fine_tune_layers == [0, 20]


def test_malformed_yaml_and_unknown_preset(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  families: [unclosed\n")
    with pytest.raises(cfg.ConfigError, match=r"is not valid YAML: while parsing a flow sequence \(line 2, column 13\); expected ',' or '\]', but got .* \(line 3, column 1\)"):
        cfg.load_config(None, str(bad))
    with pytest.raises(cfg.ConfigError, match="unknown preset"):
        cfg.load_config("medium")
    with pytest.raises(cfg.ConfigError, match="cannot read config"):
        cfg.load_config(None, str(tmp_path / "missing.yaml"))
    bad.write_bytes(b"\xff\xfe model: {}")
    with pytest.raises(cfg.ConfigError, match=r"^config '.*bad.yaml' is not UTF-8 text$"):
        cfg.load_config(None, str(bad))
    bad.write_text("model:\n  task: three-class\ntraining:\n  epochs: 2\nmodel:\n  image_size: 64\n")
    with pytest.raises(cfg.ConfigError, match=r"^config '.*bad.yaml' is not valid YAML: 'model' is given twice \(line 5, column 1\)$"):
        cfg.load_config(None, str(bad))
    for text, message in (("model:\n  augment: 5\n", "model.augment: 5 is not a valid bool"),
                          ("runtime:\n  pipeline_root: [a, b]\n", "runtime.pipeline_root: ['a', 'b'] is not a valid str"),
                          ("data:\n  schema_file: {a: 1}\n", "data.schema_file: {'a': 1} is not a valid str"),
                          ("model:\n  families: [[cnn3]]\n", "model.families[0]: ['cnn3'] is not a valid str"),
                          ("model:\n  ensemble_with: [{a: 1}]\n", "model.ensemble_with[0]: {'a': 1} is not a valid str"),
                          ("tuner:\n  dense_units: [64, many]\n", "tuner.dense_units[1]: 'many' is not a valid int"),
                          ("tuner:\n  dropouts: 0.2\n", "tuner.dropouts: 0.2 is not a valid list of float"),
                          ("training:\n  epochs: 2.5\n", "training.epochs: 2.5 is not a valid int"),  # not 2
                          ("training:\n  epochs: true\n", "training.epochs: True is not a valid int"),  # not 1
                          ("gate:\n  min_auc: false\n", "gate.min_auc: False is not a valid float"),
                          ("runtime:\n  beam_extra_args: [--a=1, ~]\n", "runtime.beam_extra_args[1]: an empty item"),
                          ("gate:\n  slice_features: [source, no]\n",
                           "gate.slice_features[1]: YAML reads a bare yes/no/on/off/true/false as False; quote it"),
                          ("model:\n  {[a]: 1}\n", "found unhashable key (line 2, column 4)")):
        bad.write_text(text)
        with pytest.raises(cfg.ConfigError, match=re.escape(message)):
            cfg.load_config(None, str(bad))
    bad.write_text("model:\n  augment: false\n")
    assert cfg.load_config(None, str(bad)).model.augment is False
    # List items take their declared type: YAML reads `2` as a number and `1e-3` as text.
    bad.write_text("runtime:\n  beam_extra_args: [--direct_runner_bundle_repeat, 2]\ntuner:\n  learning_rates: [1e-3]\n")
    config = cfg.load_config(None, str(bad))
    assert config.runtime.beam_extra_args == ["--direct_runner_bundle_repeat", "2"] and config.tuner.learning_rates == [0.001]
    # YAML merge keys are not duplicates.
    bad.write_text("training: &t\n  epochs: 3\nmodel:\n  augment: true\ntuner:\n  <<: {trials: 2}\n  epochs: 1\n")
    assert cfg.load_config(None, str(bad)).tuner.trials == 2


def test_model_custom_config_excludes_runtime_paths():
    config = cfg.load_config("quick", overrides={"runtime.serving_dir": "/a"})
    other = cfg.load_config("quick", overrides={"runtime.serving_dir": "/b"})
    assert config.model_custom_config() == other.model_custom_config()
    assert set(config.model_custom_config()) == {"model", "training", "tuner"}


def test_every_preset_loads():
    assert cfg.preset_names() == ["full", "quick"]
    quick, full = cfg.load_config("quick"), cfg.load_config("full")
    assert (quick.model.families, quick.model.image_size) == (["cnn3"], 64)
    assert (full.model.families, full.model.ensemble_with, full.model.image_size) == (["mobilenet_v2"], ["mobilenet_v2_035"], 224)


def test_runtime_paths_default_per_task_so_tasks_never_share_a_baseline():
    normal = cfg.load_config("quick", overrides={"model.task": "covid-vs-normal"})
    three = cfg.load_config("quick", overrides={"model.task": "three-class"})
    assert normal.runtime.pipeline_name == "covid-cxr-covid-vs-normal"
    assert normal.runtime.pipeline_root == "out/covid-vs-normal/root"
    assert three.runtime.serving_dir == "out/three-class/serving"
    assert cfg.load_config("quick", overrides={"runtime.pipeline_root": "/x"}).runtime.pipeline_root == "/x"


def test_generic_folder_names_are_not_installed_as_top_level_packages():
    import importlib.util

    assert importlib.util.find_spec("covid_cxr.pipeline") is not None
    for generic in ("pipeline", "data", "trainer", "transform", "components"):
        spec = importlib.util.find_spec(generic)
        assert spec is None or "covid_cxr" not in (spec.origin or ""), generic


def test_reproducible_runs_beam_on_one_worker_so_the_examples_order_repeats():
    assert cfg.load_config("quick", None, {}).runtime.beam_workers == 0  # one per core
    assert cfg.load_config("quick", None, {"training.reproducible": "true"}).runtime.beam_workers == 1
    assert cfg.load_config("full", None, {}).runtime.beam_workers == 1  # `full` is reproducible


def test_an_option_is_taken_out_of_beam_args_in_every_form_beams_parser_reads():
    args = ["--direct_num_workers=0", "--a=1", "--direct_num_workers", "0", "--direct_num_w=0", "--direct_num", "0",
            "--direct_running_mode=in_memory", "--direct_runner_bundle_repeat=2", "--direct_num_workersX=1", "0"]
    assert cfg.without_beam_option(args, "direct_num_workers") == [
        "--a=1", "--direct_running_mode=in_memory", "--direct_runner_bundle_repeat=2", "--direct_num_workersX=1", "0"]
    # An option's exact name is never read as an abbreviation of a longer one (Beam has --update).
    assert cfg.without_beam_option(["--update", "--requirements_cache=/c", "--update_c=2.5"],
                                   "update_compatibility_version") == ["--update", "--requirements_cache=/c"]


def test_beam_extra_args_may_not_set_the_worker_count_or_mode_their_own_fields_set():
    """The extra args come after runtime.beam_workers' and beam_running_mode's options and won without a word:
    `full` with [--direct_num_workers=2] ran Beam on two workers under training.reproducible's one."""
    from covid_cxr.pipeline import pipeline

    for preset, extra, message in (
            ("full", "[--direct_num_workers=2]", "--direct_num_workers 2, which runtime.beam_workers sets (1)"),
            ("full", "[--direct_num_workers, '2']", "--direct_num_workers 2, which runtime.beam_workers sets (1)"),
            ("quick", "[--direct_running_mode=multi_processing]",
             "--direct_running_mode multi_processing, which runtime.beam_running_mode sets (in_memory)")):
        with pytest.raises(cfg.ConfigError, match=rf"^runtime.beam_extra_args: {re.escape(message)}: set that field "
                                                  "instead$"):
            cfg.load_config(preset, None, {"runtime.beam_extra_args": extra})
    # The value its field gives is no conflict.
    config = cfg.load_config("full", None, {"runtime.beam_extra_args": "[--direct_num_workers=1]"})
    assert pipeline.beam_args(config)[:3] == ["--direct_running_mode=in_memory", "--direct_num_workers=1",
                                              "--direct_num_workers=1"]


def test_onednn_reads_on_and_off_from_yaml_bools_and_strings(tmp_path):
    assert cfg.load_config(None).training.onednn == "auto"
    for text, wanted in (("on", "on"), ("off", "off"), ("'on'", "on"), ("auto", "auto"), ("false", "off")):
        path = tmp_path / "c.yaml"
        path.write_text(f"training:\n  onednn: {text}\n")  # YAML 1.1 reads a bare on / off as a bool
        assert cfg.load_config(None, str(path)).training.onednn == wanted, text
    assert cfg.load_config(None, None, {"training.onednn": "OFF"}).training.onednn == "off"


def test_the_full_presets_weights_dir_is_found_beside_the_checkout_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a user running `covid-cxr run` outside the checkout
    repo = os.path.dirname(os.path.dirname(os.path.abspath(cfg.__file__)))
    assert cfg.load_config("full").model.weights_dir == os.path.join(os.path.dirname(repo), "shared", "weights")
    # A user's own relative path keeps meaning "from where I run it".
    assert cfg.load_config("full", overrides={"model.weights_dir": "my/weights"}).model.weights_dir == "my/weights"


def test_the_checkout_is_found_through_a_linked_package_directory(tmp_path):
    # e.g. a worktree put on PYTHONPATH through a link named covid_cxr: the link's parent is not the checkout.
    repo = os.path.dirname(os.path.dirname(os.path.realpath(cfg.__file__)))
    (tmp_path / "covid_cxr").symlink_to(repo)
    code = "from covid_cxr.pipeline import config; print(config.CHECKOUT_DIR)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.strip() == repo


# ---- round 9 ---------------------------------------------------------------------------------


def test_the_defaults_are_the_readmes():
    # README's configuration table ("| field | default | meaning |"), field by field.
    c = cfg.load_config(None)
    assert (c.data.train_buckets, c.data.eval_buckets, c.data.test_buckets) == (14, 3, 3)
    assert (c.model.task, c.model.image_size, c.model.border_crop) == ("covid-vs-normal", 224, 0.0)
    assert (c.model.weights, c.model.fallback, c.model.augment) == ("auto", "bn_double_conv", True)
    assert (c.training.batch_size, c.training.epochs, c.training.fine_tune_epochs) == (32, 12, 6)
    assert (c.training.target_sensitivity, c.training.target_specificity, c.training.seed) == (0.95, 0.0, 42)
    assert c.training.atypical_quantile == 0.95
    assert (c.tuner.enabled, c.tuner.trials, c.tuner.epochs, c.tuner.fine_tune_epochs) == (True, 4, 3, 1)
    assert (c.gate.min_sensitivity, c.gate.min_specificity, c.gate.min_auc) == (0.90, 0.85, 0.0)
    assert (c.gate.max_auc_regression, c.gate.compare_to_baseline) == (0.01, True)
    assert c.gate.slice_features == ["source", "view", "sex"]
    assert (c.runtime.mysql_port, c.runtime.mysql_database, c.runtime.mysql_user) == (3306, "covid_cxr_mlmd", "root")
    assert (c.runtime.beam_running_mode, c.runtime.beam_workers, c.runtime.enable_cache) == ("in_memory", 0, True)


@pytest.mark.parametrize("overrides, message", [
    ({"model.augment_contrast": "1"}, r"^model.augment_contrast must be in \[0, 1\) .* got 1.0 and 0.0$"),
    ({"model.augment_contrast": "-0.1"}, r"^model.augment_contrast must be in \[0, 1\) .* got -0.1 and 0.0$"),
    ({"model.border_crop": "-0.1"}, r"^model.border_crop must be between 0 and 0.25 \(of each side\), got -0.1$"),
    ({"training.fine_tune_epochs": "-1"}, "^training.fine_tune_epochs must be a whole number at least 0, got -1$"),
    ({"tuner.epochs": "0"}, "^tuner.epochs must be a whole number at least 1, got 0$"),
    ({"tuner.fine_tune_layers": "[-1]"}, r"^tuner.fine_tune_layers must be whole numbers at least 0, got -1$"),
    ({"tuner.dense_units": "[-1]"}, r"^tuner.dense_units must be whole numbers at least 0, got -1$"),
    ({"model.families": "[cnn3, bogus]"}, "^model.families: unknown family 'bogus'"),  # every family, not the first
    ({"runtime.mysql_host": "db", "runtime.mysql_database": "d" * 65}, "^runtime.mysql_database 'd{65}' must be 1-64"),
    ({"runtime.beam_running_mode": ""}, "^runtime.beam_running_mode '' is not in_memory"),
])
def test_more_bad_values_are_one_line_config_errors(overrides, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load_config(None, None, overrides)


def test_more_ends_of_ranges_and_documented_values_are_accepted():
    c = cfg.load_config(None, None, {"model.augment_gamma": "1", "model.augment_contrast": "0.9", "model.border_crop": "0.25",
                                     "training.atypical_quantile": "0", "model.fallback": "none"})
    assert (c.model.augment_gamma, c.model.border_crop, c.training.atypical_quantile) == (1.0, 0.25, 0.0)
    assert cfg.load_config(None, None, {"model.fallback": "error"}).model.fallback == "error"
    db = "d" * 64
    assert cfg.load_config(None, None, {"runtime.mysql_host": "db", "runtime.mysql_database": db}).runtime.mysql_database == db
    # Without a MySQL host the database name is never used, so it is not judged.
    assert cfg.load_config(None, None, {"runtime.mysql_database": "a-b"}).runtime.mysql_database == "a-b"
    # The same fine-tuning value twice is one value: nothing for head-only trials to tell apart.
    c = cfg.load_config(None, None, {"tuner.fine_tune_layers": "[20, 20]", "tuner.fine_tune_epochs": "0"})
    assert c.tuner.fine_tune_layers == [20, 20]
    # A trailing comma on the command line lists no empty item.
    c = cfg.load_config(None, None, {"tuner.dense_units": "64,128,", "model.families": "cnn3,"})
    assert (c.tuner.dense_units, c.model.families) == ([64, 128], ["cnn3"])
    assert cfg.load_config("quick", overrides={"runtime.serving_dir": "/srv"}).runtime.serving_dir == "/srv"


def test_a_config_file_beats_a_commands_own_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("runtime:\n  pipeline_root: from-file\n")
    c = cfg.load_config(None, str(path), command_defaults={"runtime.pipeline_root": "demo-out/root",
                                                          "runtime.serving_dir": "demo-out/serving"})
    assert (c.runtime.pipeline_root, c.runtime.serving_dir) == ("from-file", "demo-out/serving")


def test_sections_that_are_not_known_mappings_and_empty_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    for text, message in (("model: 5\n", "section 'model' must be a mapping"),
                          ("modle:\n  task: three-class\n", "unknown section 'modle'; sections: data, model, training")):
        path.write_text(text)
        with pytest.raises(cfg.ConfigError, match=re.escape(message)):
            cfg.load_config(None, str(path))
    path.write_text("data:\n  schema_file: ~\nruntime:\n  mysql_password:\n")  # YAML null: empty, not "None"
    c = cfg.load_config(None, str(path))
    assert (c.data.schema_file, c.runtime.mysql_password) == ("", "")


def test_parse_override_splits_at_the_first_equals_sign_and_strips_both_sides():
    assert cfg.parse_override(" gate.min_auc = 0.8 ") == ("gate.min_auc", "0.8")
    assert cfg.parse_override("runtime.beam_extra_args=[--direct_num_workers=2]") == (
        "runtime.beam_extra_args", "[--direct_num_workers=2]")
    for text in ("=0.8", " =0.8", "gate.min_auc"):
        with pytest.raises(cfg.ConfigError, match="must look like section.field=value"):
            cfg.parse_override(text)


@pytest.mark.parametrize("text, kind", [("gate.min_auc=0.8\n", "str"), ("- model\n- gate\n", "list"), ("5\n", "int")])
def test_a_config_file_that_is_not_a_mapping_of_sections_is_a_one_line_error(tmp_path, text, kind):
    # e.g. --set's syntax written into the file: a clear error, not an AttributeError from deep inside.
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError, match=rf"^config '{re.escape(str(path))}' must be a mapping of sections, "
                                              rf"got {kind}$"):
        cfg.load_config(None, str(path))


# ---- stop 51: the studies' geometric augmentation is set in the config ---------------------------


def test_augmentation_sizes_are_read_from_a_config_file_and_their_limits_accepted(tmp_path):
    path = tmp_path / "aug.yaml"
    path.write_text("model:\n  augment_rotation_degrees: 180\n  augment_shift: 0.99\n  augment_shear: 1\n"
                    "  augment_zoom: 0\n  augment_horizontal_flip: no\ntuner:\n  fine_tune_lr_factors: [0.999]\n")
    c = cfg.load_config("quick", str(path))
    assert (c.model.augment_rotation_degrees, c.model.augment_shift, c.model.augment_shear, c.model.augment_zoom,
            c.model.augment_horizontal_flip, c.tuner.fine_tune_lr_factors) == (180.0, 0.99, 1.0, 0.0, False, [0.999])
    path.write_text("model:\n  augment_zoom: much\n")
    with pytest.raises(cfg.ConfigError, match=f"^{re.escape(str(path))}: model.augment_zoom: 'much' is not a valid float$"):
        cfg.load_config(None, str(path))


def test_the_augmentation_defaults_are_the_studies_and_the_trainers():
    from covid_cxr.trainer import models
    studies = models.AugmentConfig()
    for preset in (None, "quick", "full"):
        model = cfg.load_config(preset).model
        assert {f: getattr(model, f"augment_{f}") for f in models.CONFIGURABLE_AUGMENT_FIELDS} == {
            f: getattr(studies, f) for f in models.CONFIGURABLE_AUGMENT_FIELDS}
    assert (studies.rotation_degrees, studies.shift, studies.shear, studies.zoom, studies.horizontal_flip) == (
        15.0, 0.1, 0.1, 0.1, True)


# ---- stop 52: path fields are declared, not listed; ~ is the home folder in them ----------------------


def test_every_field_that_names_a_file_or_folder_is_declared_a_path():
    """The CLI once kept its own list of path fields (and had left out model.weights, an .h5 path): a field
    that names a file or folder by its name must be declared PathStr, and only str fields can be."""
    sections = typing.get_type_hints(cfg.PipelineConfig)
    hints = {f"{section}.{name}": hint for section, kind in sections.items()
             for name, hint in typing.get_type_hints(kind).items()}
    named_as_paths = {key for key in hints if key.endswith(("_dir", "_file", "_path", "_root"))}
    assert {"data.data_dir", "model.weights_dir", "runtime.pipeline_root", "runtime.metadata_path"} <= named_as_paths
    assert named_as_paths | {"model.weights"} <= cfg.path_fields()
    assert all(hints[key] is str for key in cfg.path_fields())


def test_a_new_field_declared_a_path_is_read_and_compared_as_one_from_its_type_alone(tmp_path, monkeypatch):
    @dataclasses.dataclass
    class CacheConfig:
        folder: cfg.PathStr = ""
        label: str = ""

    @dataclasses.dataclass
    class ExtendedConfig(cfg.PipelineConfig):
        cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)

    assert cfg.path_fields(ExtendedConfig) == cfg.path_fields() | {"cache.folder"}
    monkeypatch.setattr(cfg, "PipelineConfig", ExtendedConfig)  # what load_config builds
    monkeypatch.setenv("HOME", str(tmp_path))
    config = cfg.load_config(None, None, {"cache.folder": "~/c", "cache.label": "~/c"})
    assert (config.cache.folder, config.cache.label) == (str(tmp_path / "c"), "~/c")
    # The command line compares it as a path (cli.build_config merges through command_line_values), and not the other.
    assert cfg.command_line_values(["cache.folder=~/c/", f"cache.folder={tmp_path}/c"]) == {"cache.folder": f"{tmp_path}/c"}
    with pytest.raises(cfg.ConfigError, match="^--set cache.label is given twice"):
        cfg.command_line_values(["cache.label=c/", "cache.label=./c"])


def test_a_leading_tilde_in_a_path_field_is_the_home_folder_wherever_the_value_comes_from(tmp_path, monkeypatch):
    """`--set runtime.pipeline_root=~/x`: bash expands ~ after the = of an assignment only, so the run wrote
    into a folder named `~` under the working directory. A password or a name that starts with ~ is no path."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    config = cfg.load_config(None, None, {"runtime.pipeline_root": "~/root", "data.data_dir": "~/data",
                                          "model.weights": "~/w.h5", "runtime.mysql_password": "~secret",
                                          "runtime.pipeline_name": "~name"})
    home = tmp_path / "home"
    assert (config.runtime.pipeline_root, config.data.data_dir, config.model.weights) == (
        str(home / "root"), str(home / "data"), str(home / "w.h5"))
    assert (config.runtime.mysql_password, config.runtime.pipeline_name) == ("~secret", "~name")
    path = tmp_path / "c.yaml"
    path.write_text("runtime:\n  serving_dir: ~/serving\n  metadata_path: ~/m.sqlite\n")
    config = cfg.load_config(None, str(path))
    assert (config.runtime.serving_dir, config.runtime.metadata_path) == (str(home / "serving"), str(home / "m.sqlite"))
    # Every path field, and only where it begins: a ~ inside a path is a character of a name.
    for key in sorted(cfg.path_fields()):
        section, _, name = key.partition(".")
        value = getattr(getattr(cfg.load_config(None, None, {key: "~/a~b.h5"}), section), name)
        assert value == str(home / "a~b.h5"), key
    assert cfg.load_config(None, None, {"data.data_dir": "d/~x"}).data.data_dir == "d/~x"
