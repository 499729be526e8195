"""The DAG wiring from the typed config (no run: the end-to-end test runs it)."""
import json

from covid_cxr.pipeline import config as cfg
from covid_cxr.pipeline import pipeline


def _ids(config):
    return [c.id for c in pipeline.create_components(config)]


def test_the_dag_has_every_stage_and_the_tuner_is_optional(tmp_path):
    config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path)})
    assert _ids(config) == ["ImportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "SchemaGate",
                            "Transform", "Tuner", "Trainer", "latest_blessed_model_resolver", "Evaluator",
                            "VersionedPusher"]
    assert "Tuner" not in _ids(cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path),
                                                                   "tuner.enabled": "false"}))


def test_beam_runs_in_the_configured_mode():
    config = cfg.load_config("quick", overrides={"runtime.beam_running_mode": "multi_processing",
                                                 "runtime.beam_workers": "2",
                                                 "runtime.beam_extra_args": "[--direct_runner_bundle_repeat=0]"})
    args = pipeline.create_pipeline(config).beam_pipeline_args
    assert args == ["--direct_running_mode=multi_processing", "--direct_num_workers=2",
                    "--direct_runner_bundle_repeat=0"]


def test_transform_receives_the_image_size_and_border_crop(tmp_path):
    config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path), "model.image_size": "96",
                                                 "model.border_crop": "0.05"})
    transform = next(c for c in pipeline.create_components(config) if c.id == "Transform")
    custom = transform.exec_properties["custom_config"]
    custom = json.loads(custom) if isinstance(custom, str) else custom  # TFX stores it as JSON text
    assert custom == {"image_size": 96, "border_crop": 0.05}


def test_the_trainer_gets_the_data_directory_not_a_summary_read_when_the_dag_was_built(tmp_path):
    # The DAG is built (and compiled for Kubeflow) where the data may be unreadable, and a compiled
    # spec is re-run on new data: the Trainer reads summary.json itself when it runs.
    config = cfg.load_config("quick", overrides={"data.data_dir": "gs://bucket/not-readable-here"})
    trainer = next(c for c in pipeline.create_components(config) if c.id == "Trainer")
    custom = trainer.exec_properties["custom_config"]
    custom = json.loads(custom) if isinstance(custom, str) else custom
    assert custom["data_dir"] == "gs://bucket/not-readable-here"
    assert "data_summary" not in custom
