"""The covid-cxr TFX DAG, wired from a PipelineConfig and nothing else.

ImportExampleGen (patient-grouped train/eval/test) -> StatisticsGen -> ImportSchema (reviewed
schema) -> ExampleValidator -> SchemaGate (anomalies stop the run) -> Transform -> Tuner -> Trainer
-> latest-blessed-model Resolver -> Evaluator (sensitivity AND specificity gate) -> VersionedPusher.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
from typing import Iterable, Optional

from apache_beam.options.pipeline_options import PipelineOptions
from tfx import v1 as tfx
from tensorflow.core.example import feature_pb2
from tfx.proto import example_gen_pb2

from covid_cxr.components.pusher import VersionedPusher
from covid_cxr.components.schema_gate import ImportSchema, SchemaGate
from covid_cxr.data import features
from covid_cxr.pipeline import fingerprints
from covid_cxr.pipeline.config import DataConfig, PipelineConfig, beam_field_args
from covid_cxr.pipeline.eval_config import TEST_SPLIT, build_eval_config
from covid_cxr.transform import preprocessing

SCHEMA_FILE = os.path.join(os.path.dirname(__file__), "schema", "schema.pbtxt")
PREPROCESSING_FN = "covid_cxr.transform.preprocessing.preprocessing_fn"
RUN_FN = "covid_cxr.trainer.task.run_fn"
TUNER_FN = "covid_cxr.trainer.task.tuner_fn"
CODE_KEY = fingerprints.CODE_KEY


def split_config(data: DataConfig) -> example_gen_pb2.SplitConfig:
    """ExampleGen's train / eval / test split (split_of deals a group as it does)."""
    return example_gen_pb2.SplitConfig(
        splits=[
            example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=data.train_buckets),
            example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=data.eval_buckets),
            example_gen_pb2.SplitConfig.Split(name=TEST_SPLIT, hash_buckets=data.test_buckets),
        ],
        # Hash on the patient/near-duplicate group: no patient, no picture in two splits.
        partition_feature_name=features.GROUP,
    )


def split_of(groups: Iterable[str], data: DataConfig) -> list[str]:
    """The split ImportExampleGen deals each group into, computed as TFX 1.16 does (its private
    base_example_gen_executor._PartitionFn, which pipeline_test compares this with): sha256 of the
    serialized partition feature, modulo the total buckets, into the split whose cumulative edge is above."""
    config = split_config(data)
    names = [s.name for s in config.splits]
    edges = list(itertools.accumulate(s.hash_buckets for s in config.splits))
    out = []
    for group in groups:
        # The group as the curated tf.Example carries it (features.Record.to_example).
        key = feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[group.encode("utf-8")]))
        bucket = int(hashlib.sha256(key.SerializeToString(deterministic=True)).hexdigest(), 16) % edges[-1]
        out.append(names[bisect.bisect(edges, bucket)])
    return out


def create_components(config: PipelineConfig, schema_sha256: Optional[str] = None) -> list:
    """The DAG's components. ``schema_sha256``: the schema's content hash when the compiling machine
    reads it elsewhere than at the path the containers use (a Kubeflow image's copy); else hashed here."""
    data = config.data
    example_gen = tfx.components.ImportExampleGen(
        input_base=data.data_dir,
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name="all", pattern=features.TFRECORD_PATTERN)]),
        output_config=tfx.proto.Output(split_config=split_config(data)),
    )
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_file = data.schema_file or SCHEMA_FILE
    if schema_sha256 is None:
        schema_sha256 = fingerprints.file_fingerprint(schema_file)
    schema_gen = ImportSchema(schema_file=schema_file, content_sha256=schema_sha256)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    schema_gate = SchemaGate(schema=schema_gen.outputs["schema"], anomalies=example_validator.outputs["anomalies"])

    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gate.outputs["validated_schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config={preprocessing.IMAGE_SIZE_KEY: config.model.image_size,
                       preprocessing.BORDER_CROP_KEY: config.model.border_crop,
                       # In the cache key: the functions are named by path, their code is not hashed.
                       CODE_KEY: fingerprints.code_fingerprint(PREPROCESSING_FN.rsplit(".", 1)[0])},
        splits_config=tfx.proto.SplitsConfig(analyze=["train"], transform=["train", "eval"]),
        disable_statistics=True,  # StatisticsGen already profiles the raw data
    )
    # The Trainer reads the curation summary where it runs: a compiled Kubeflow spec is re-run on
    # new data, and the compiling machine may not be able to read the bucket at all.
    model_config = dict(config.model_custom_config(), data_dir=data.data_dir,
                        **{CODE_KEY: fingerprints.code_fingerprint(RUN_FN.rsplit(".", 1)[0])})
    train_args = tfx.proto.TrainArgs(splits=["train"])
    eval_args = tfx.proto.EvalArgs(splits=["eval"])
    trainer_inputs = dict(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        train_args=train_args,
        eval_args=eval_args,
        custom_config=model_config,
    )
    components = [example_gen, statistics_gen, schema_gen, example_validator, schema_gate, transform]
    hyperparameters = None
    if config.tuner.enabled:
        tuner = tfx.components.Tuner(tuner_fn=TUNER_FN, **trainer_inputs)
        components.append(tuner)
        hyperparameters = tuner.outputs["best_hyperparameters"]
    trainer = tfx.components.Trainer(run_fn=RUN_FN, hyperparameters=hyperparameters, **trainer_inputs)

    baseline = []
    if config.gate.compare_to_baseline:
        baseline = [tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("latest_blessed_model_resolver")]
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline[0].outputs["model"] if baseline else None,
        eval_config=build_eval_config(config),
        example_splits=[TEST_SPLIT],
    )
    pusher = VersionedPusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"],
        serving_dir=config.runtime.serving_dir,
        gate=json.dumps(config.to_dict()["gate"], sort_keys=True),
    )
    return components + [trainer, *baseline, evaluator, pusher]


# TFX's dependency_utils: unless one of these Beam options is set, every Beam component of every
# run builds a 52 MB sdist of TFX (2-3 s) for remote workers, in a temp directory it never deletes.
_DEPENDENCY_OPTIONS = ("extra_packages", "setup_file", "requirements_file", "sdk_container_image",
                       "worker_harness_container_image")
# The DirectRunner's workers are this Python environment (in_memory, multi_threading) or
# subprocesses of it (multi_processing): it stages nothing and ignores this value.
DIRECT_RUNNER_IMAGE = "--sdk_container_image=unused-by-the-direct-runner"


def _configured_beam_args(config: PipelineConfig) -> list[str]:
    return beam_field_args(config.runtime) + list(config.runtime.beam_extra_args)


def beam_runner(config: PipelineConfig) -> tuple[str, tuple[str, ...]]:
    """(the Beam runner the config names, "direct" if none; the options it gives for how workers get
    the code, e.g. ("sdk_container_image",))."""
    return _runner_of(_configured_beam_args(config))


def _runner_of(args: list[str]) -> tuple[str, tuple[str, ...]]:
    options = PipelineOptions(args).get_all_options()
    return options["runner"] or "direct", tuple(o for o in _DEPENDENCY_OPTIONS if options[o])


def beam_args(config: PipelineConfig) -> list[str]:
    args = _configured_beam_args(config)
    runner, staged = _runner_of(args)
    if "direct" in runner.lower() and not staged:  # direct, DirectRunner, BundleBased...
        args.append(DIRECT_RUNNER_IMAGE)
    return args


def create_pipeline(config: PipelineConfig, metadata_connection_config=None,
                    schema_sha256: Optional[str] = None) -> tfx.dsl.Pipeline:
    return tfx.dsl.Pipeline(
        pipeline_name=config.runtime.pipeline_name,
        pipeline_root=config.runtime.pipeline_root,
        components=create_components(config, schema_sha256),
        enable_cache=config.runtime.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_args(config),
    )
