"""The DAG wiring from the typed config (no run: the end-to-end test runs it)."""
import json

import pytest
from tfx import v1 as tfx
from tfx.utils import dependency_utils

from covid_cxr.data import features
from covid_cxr.pipeline import config as cfg
from covid_cxr.pipeline import fingerprints
from covid_cxr.pipeline import pipeline


def _ids(config):
    return [c.id for c in pipeline.create_components(config)]


def test_the_dag_has_every_stage_and_the_tuner_is_optional(tmp_path):
    config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path)})
    assert _ids(config) == ["ImportExampleGen", "StatisticsGen", "ImportSchema", "ExampleValidator", "SchemaGate",
                            "Transform", "Tuner", "Trainer", "latest_blessed_model_resolver", "Evaluator",
                            "VersionedPusher"]
    assert "Tuner" not in _ids(cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path),
                                                                   "tuner.enabled": "false"}))


def test_example_gen_splits_on_the_group_with_the_configured_buckets(tmp_path):
    # The group, not the patient id: re-crops of one film join a group across patients (data/dedupe.py),
    # and the synthetic end-to-end data cannot tell the two apart (group == patient there).
    config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path), "data.eval_buckets": "5"})
    example_gen = next(c for c in pipeline.create_components(config) if c.id == "ImportExampleGen")
    split = json.loads(example_gen.exec_properties["output_config"])["split_config"]
    assert split["partition_feature_name"] == features.GROUP == "group"
    assert [(s["name"], s["hash_buckets"]) for s in split["splits"]] == [("train", 14), ("eval", 5), ("test", 3)]



@pytest.mark.parametrize("buckets", [(14, 3, 3), (1, 1, 1), (7, 5, 2)])
def test_split_of_deals_each_group_as_example_gens_own_partition_function(buckets):
    import tensorflow as tf
    from tfx.components.example_gen import base_example_gen_executor

    data = cfg.DataConfig(**dict(zip(("train_buckets", "eval_buckets", "test_buckets"), buckets)))
    config = pipeline.split_config(data)
    edges = [sum(buckets[:i + 1]) for i in range(3)]
    groups = [f"{i:016x}" for i in range(200)] + ["", "patient 7", "rsna:0004cfab", "é-ü"]

    def tfx_split(group):
        example = tf.train.Example()
        example.features.feature[features.GROUP].bytes_list.value.append(group.encode("utf-8"))
        return ("train", "eval", "test")[base_example_gen_executor._PartitionFn(example, 3, edges, config)]

    dealt = pipeline.split_of(groups, data)
    assert dealt == [tfx_split(g) for g in groups]
    assert set(dealt) == {"train", "eval", "test"}

def test_without_a_baseline_there_is_no_resolver_and_no_auc_regression_bar(tmp_path):
    def auc_thresholds(config):
        evaluator = next(c for c in pipeline.create_components(config) if c.id == "Evaluator")
        eval_config = json.loads(evaluator.exec_properties["eval_config"])
        return [t["threshold"] for spec in eval_config["metrics_specs"] for m in spec["metrics"]
                if m["class_name"] == "AUC" for t in m.get("per_slice_thresholds", [])], evaluator

    config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path)})
    [threshold], evaluator = auc_thresholds(config)
    assert threshold["change_threshold"]["absolute"] == -0.01 and "baseline_model" in evaluator.inputs
    config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path), "gate.compare_to_baseline": "false"})
    assert "latest_blessed_model_resolver" not in _ids(config)
    [threshold], evaluator = auc_thresholds(config)
    assert "change_threshold" not in threshold and "value_threshold" in threshold
    assert "baseline_model" not in evaluator.inputs


def test_beam_runs_in_the_configured_mode():
    config = cfg.load_config("quick", overrides={"runtime.beam_running_mode": "multi_processing",
                                                 "runtime.beam_workers": "2",
                                                 "runtime.beam_extra_args": "[--direct_runner_bundle_repeat=0]"})
    args = pipeline.create_pipeline(config).beam_pipeline_args
    assert args == ["--direct_running_mode=multi_processing", "--direct_num_workers=2",
                    "--direct_runner_bundle_repeat=0", pipeline.DIRECT_RUNNER_IMAGE]


def test_tfx_builds_no_package_of_itself_for_the_direct_runner():
    # TFX's own check: without a dependency option it would build (and leave in /tmp) a 52 MB sdist
    # of itself for every Beam component of every run and add it as --extra_package.
    args = pipeline.beam_args(cfg.load_config("quick"))
    assert dependency_utils.make_beam_dependency_flags(args) == args


@pytest.mark.parametrize("extra", [["--runner", "DataflowRunner"], ["--runner=PortableRunner"],
                                   ["--setup_file=./setup.py"], ["--sdk_container_image=gcr.io/p/covid-cxr:1"],
                                   ["--worker_harness_container_image=gcr.io/p/w:1"], ["--extra_packages=a.tar.gz"],
                                   ["--requirements_file=requirements.txt"]])
def test_a_remote_runner_or_the_users_own_dependencies_are_left_alone(extra):
    args = pipeline.beam_args(cfg.load_config("quick", overrides={"runtime.beam_extra_args": json.dumps(extra)}))
    assert pipeline.DIRECT_RUNNER_IMAGE not in args
    assert args[-len(extra):] == extra


def test_transform_receives_the_image_size_and_border_crop(tmp_path):
    config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path), "model.image_size": "96",
                                                 "model.border_crop": "0.05"})
    transform = next(c for c in pipeline.create_components(config) if c.id == "Transform")
    custom = transform.exec_properties["custom_config"]
    custom = json.loads(custom) if isinstance(custom, str) else custom  # TFX stores it as JSON text
    assert custom == {"image_size": 96, "border_crop": 0.05,
                      pipeline.CODE_KEY: fingerprints.code_fingerprint("covid_cxr.transform.preprocessing")}


def test_the_trainer_gets_the_data_directory_not_a_summary_read_when_the_dag_was_built(tmp_path):
    # The DAG is built (and compiled for Kubeflow) where the data may be unreadable, and a compiled
    # spec is re-run on new data: the Trainer reads summary.json itself when it runs.
    config = cfg.load_config("quick", overrides={"data.data_dir": "gs://bucket/not-readable-here"})
    trainer = next(c for c in pipeline.create_components(config) if c.id == "Trainer")
    custom = trainer.exec_properties["custom_config"]
    custom = json.loads(custom) if isinstance(custom, str) else custom
    assert custom["data_dir"] == "gs://bucket/not-readable-here"
    assert "data_summary" not in custom


def test_each_stage_reads_only_its_own_splits_and_the_pusher_gets_the_gate(tmp_path):
    # The test split is the gate's alone; the Transform's statistics come from training data only.
    config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path), "gate.min_sensitivity": "0.93"})
    components = {c.id: c for c in pipeline.create_components(config)}
    assert json.loads(components["Evaluator"].exec_properties["example_splits"]) == ["test"]
    assert json.loads(components["Transform"].exec_properties["splits_config"]) == {
        "analyze": ["train"], "transform": ["train", "eval"]}
    trainer = components["Trainer"]
    assert json.loads(trainer.exec_properties["train_args"]) == {"splits": ["train"]}
    assert json.loads(trainer.exec_properties["eval_args"]) == {"splits": ["eval"]}  # early stopping, threshold
    assert trainer.inputs["hyperparameters"].producer_component_id == "Tuner"
    assert json.loads(components["VersionedPusher"].exec_properties["gate"]) == config.to_dict()["gate"]
    assert json.loads(components["VersionedPusher"].exec_properties["gate"])["min_sensitivity"] == 0.93
    uncached = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path), "runtime.enable_cache": "false"})
    assert pipeline.create_pipeline(uncached).enable_cache is False


def _by_id(config, schema_sha256=None):
    return {c.id: c for c in pipeline.create_components(config, schema_sha256)}


def test_each_component_reads_the_outputs_it_must(tmp_path):
    # The Transform learns from the schema only once SchemaGate passed it; the Trainer gets the
    # transformed films, the Evaluator the raw ones (its model takes serialized tf.Examples).
    components = _by_id(cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path)}))
    resolver = components.pop("latest_blessed_model_resolver")
    wiring = {cid: {key: (channel.producer_component_id, channel.output_key) for key, channel in c.inputs.items()}
              for cid, c in components.items()}
    transformed = {"examples": ("Transform", "transformed_examples"), "transform_graph": ("Transform", "transform_graph")}
    assert wiring == {
        "ImportExampleGen": {},
        "StatisticsGen": {"examples": ("ImportExampleGen", "examples")},
        "ImportSchema": {},
        "ExampleValidator": {"statistics": ("StatisticsGen", "statistics"), "schema": ("ImportSchema", "schema")},
        "SchemaGate": {"schema": ("ImportSchema", "schema"), "anomalies": ("ExampleValidator", "anomalies")},
        "Transform": {"examples": ("ImportExampleGen", "examples"), "schema": ("SchemaGate", "validated_schema")},
        "Tuner": transformed,
        "Trainer": {**transformed, "hyperparameters": ("Tuner", "best_hyperparameters")},
        "Evaluator": {"examples": ("ImportExampleGen", "examples"), "model": ("Trainer", "model"),
                      "baseline_model": ("latest_blessed_model_resolver", "model")},
        "VersionedPusher": {"model": ("Trainer", "model"), "model_blessing": ("Evaluator", "blessing"),
                            "evaluation": ("Evaluator", "evaluation")},
    }
    # The baseline is the newest blessed model of earlier runs, from the store: not this run's Trainer.
    assert {key: (channel.producer_component_id, channel.type_name) for key, channel in resolver.raw_inputs.items()} == {
        "model": (None, "Model"), "model_blessing": (None, "ModelBlessing")}
    assert resolver.exec_properties["resolver_class"] is tfx.dsl.experimental.LatestBlessedModelStrategy
    assert int(components["Transform"].exec_properties["disable_statistics"])  # StatisticsGen profiles the raw data


def test_example_gen_reads_the_curated_shards_of_the_data_directory(tmp_path):
    example_gen = _by_id(cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path)}))["ImportExampleGen"]
    assert example_gen.exec_properties["input_base"] == str(tmp_path)
    assert json.loads(example_gen.exec_properties["input_config"]) == {
        "splits": [{"name": "all", "pattern": features.TFRECORD_PATTERN}]}


def _import_schema(config, schema_sha256=None):
    props = _by_id(config, schema_sha256)["ImportSchema"].exec_properties
    return props["schema_file"], props["content_sha256"]


def test_the_schema_imported_is_the_configured_one_pinned_by_its_content(tmp_path):
    overrides = {"data.data_dir": str(tmp_path)}
    assert _import_schema(cfg.load_config("quick", overrides=overrides)) == (
        pipeline.SCHEMA_FILE, fingerprints.file_fingerprint(pipeline.SCHEMA_FILE))
    mine = tmp_path / "mine.pbtxt"
    mine.write_text("# reviewed\n")
    config = cfg.load_config("quick", overrides={**overrides, "data.schema_file": str(mine)})
    assert _import_schema(config) == (str(mine), fingerprints.file_fingerprint(str(mine)))
    # A hash given by the caller (the image's copy, read elsewhere) is the one pinned, as given.
    assert _import_schema(config, "ab" * 32) == (str(mine), "ab" * 32)
    [schema_gen] = [c for c in pipeline.create_pipeline(config, schema_sha256="cd" * 32).components
                    if c.id == "ImportSchema"]
    assert schema_gen.exec_properties["content_sha256"] == "cd" * 32


def test_the_trainer_and_tuner_key_their_cache_on_the_training_codes_fingerprint(tmp_path):
    components = _by_id(cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path)}))
    code = fingerprints.code_fingerprint("covid_cxr.trainer.task")
    for cid in ("Tuner", "Trainer"):
        custom = components[cid].exec_properties["custom_config"]
        custom = json.loads(custom) if isinstance(custom, str) else custom
        assert custom[pipeline.CODE_KEY] == code, cid


def test_the_pipeline_runs_under_its_configured_name_root_store_and_serving_directory(tmp_path):
    config = cfg.load_config("quick", overrides={
        "data.data_dir": str(tmp_path / "data"), "runtime.pipeline_name": "my-run",
        "runtime.pipeline_root": str(tmp_path / "root"), "runtime.serving_dir": str(tmp_path / "serving")})
    connection = object()
    built = pipeline.create_pipeline(config, connection)
    assert (built.pipeline_info.pipeline_name, built.pipeline_info.pipeline_root) == ("my-run", str(tmp_path / "root"))
    assert built.metadata_connection_config is connection
    pusher = next(c for c in built.components if c.id == "VersionedPusher")
    assert pusher.exec_properties["serving_dir"] == str(tmp_path / "serving")


@pytest.mark.parametrize("runner", [["--runner=DirectRunner"], ["--runner", "BundleBasedDirectRunner"],
                                    ["--runner=SwitchingDirectRunner"]])
def test_the_direct_runner_named_in_any_spelling_gets_the_placeholder_image(runner):
    config = cfg.load_config("quick", overrides={"runtime.beam_extra_args": json.dumps(runner)})
    assert pipeline.beam_runner(config) == (runner[-1].removeprefix("--runner="), ())
    assert pipeline.beam_args(config)[-len(runner) - 1:] == [*runner, pipeline.DIRECT_RUNNER_IMAGE]
