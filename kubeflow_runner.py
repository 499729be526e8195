"""Compiles the pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines (thin entry point).

    covid-cxr compile --image REGISTRY/covid-cxr:TAG --data gs://BUCKET/curated
        --pipeline-root gs://BUCKET/root --serving-dir gs://BUCKET/serving [--config prod.yaml]
        --output covid-cxr.json

A .json output is a PipelineJob for Vertex AI Pipelines
(`google.cloud.aiplatform.PipelineJob(template_path=...)`); a .yaml output is a bare KFP pipeline
spec (schema 2.1) for open-source Kubeflow Pipelines 2.x (see README).
The container image must have this package installed (see Dockerfile); the data, the pipeline root
and the serving directory must be gs:// paths the containers can reach (the file systems this TensorFlow reads).
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Optional

import tensorflow as tf
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from tfx import v1 as tfx

from covid_cxr.components import schema_gate
from covid_cxr.data import writer
from covid_cxr.pipeline import fingerprints
from covid_cxr.pipeline.config import ConfigError, PipelineConfig, without_beam_option
from covid_cxr.pipeline.pipeline import SCHEMA_FILE, beam_args, beam_runner, create_pipeline
from covid_cxr.trainer import models, training


# Where the Dockerfile puts the reviewed schema. The spec names files by path, and the path of this
# checkout on the compiling machine does not exist inside the container.
IMAGE_SCHEMA_FILE = "/pipeline/schema/schema.pbtxt"
# The Dockerfile's base for a Dataflow worker image (Beam's SDK image of the pinned Beam and Python).
BEAM_WORKER_BASE = "apache/beam_python3.11_sdk:2.61.0"
CONTAINER_BEAM_WORKERS = 4  # the DirectRunner's workers in a pod: Vertex AI's default machine has 4 vCPUs


# Docker's image reference grammar (distribution/reference): [registry[:port]/]path[:tag][@digest],
# path components lowercase. A reference outside it compiles fine and fails every pod at pull time.
_REGISTRY = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?/)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(rf"{_REGISTRY}{_COMPONENT}(?:/{_COMPONENT})*(?::\w[\w.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?",
                             re.ASCII)


def check_image(image: str) -> None:
    if not IMAGE_REFERENCE.fullmatch(image):
        raise ConfigError(f"--image {image!r} is not an image reference: REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:<64 hex> "
                          "(name in lowercase)")


def image_note(image: str) -> Optional[str]:
    """A note for an image named by tag: a tag pushed again puts other code under the same spec, which the
    components' code-fingerprint check then stops at every step; a digest names one build for good."""
    if "@sha256:" in image:
        return None
    return (f"--image {image} is named by tag: if the tag is pushed again, every step stops as not the code the "
            "pipeline was built with; name it by digest (REGISTRY/NAME@sha256:..., which docker push prints)")


def _on_this_machine(path: str) -> bool:
    """A path the containers cannot reach: no scheme, file://, or a scheme without a bucket (gs://)."""
    scheme, sep, rest = path.partition("://")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return bool(path)  # no scheme ("/tmp/a://b" is a local path too)
    return scheme.lower() == "file" or not rest.split("/", 1)[0]


# What the Kubeflow / Vertex compiler accepts as a pipeline name (tfx.orchestration.kubeflow.v2); its length
# is TFX's Pipeline's limit on every runner, checked with the config (config.MAX_PIPELINE_NAME).
PIPELINE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


def _check_scheme(field: str, path: str) -> None:
    """ConfigError for a URI whose scheme TensorFlow cannot open. The image installs this same stack
    (constraints.txt), so a scheme unknown here (s3://, hdfs://, az://) fails every component there."""
    scheme, sep, _ = path.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return
    known = tf.io.gfile.get_registered_schemes()
    if scheme not in known:  # as TensorFlow looks it up: "GS://" is not "gs://"
        remote = ", ".join(f"{k}://" for k in sorted(known) if k not in ("", "file", "ram"))
        raise ConfigError(f"{field} {path!r}: TensorFlow in the image has no file system for {scheme}:// (it reads "
                          f"{remote} buckets and its own paths), so every component would fail there: use a gs:// bucket")


# Paths every container must reach, the flag that sets each and what a path on the compiling machine's
# disk would do there (the data is only read: "a push would vanish" was wrong for --data).
_SHARED_PATHS = (("data", "data_dir", "--data", "ImportExampleGen would find no data there"),
                 ("runtime", "pipeline_root", "--pipeline-root", "artifacts written there would vanish with their pod"),
                 ("runtime", "serving_dir", "--serving-dir", "a push there would vanish with its pod"))


def for_the_container(config: PipelineConfig) -> tuple[PipelineConfig, list[str]]:
    """The config with paths that only exist on the compiling machine replaced; plus what changed.

    The data, the pipeline root and the serving directory must be URIs (gs://...); an empty or
    local one is an error. The schema comes from the image unless given. A local ``model.weights_dir`` (the ``full``
    preset's offline copies) is left out: inside the container ``auto`` then downloads ImageNet
    weights, which a cluster can usually do; a bucket path is kept (weights are read through
    tf.io.gfile). A local ``model.weights`` file is an error: the container cannot have it and would
    train without it.
    """
    notes: list[str] = []
    if not PIPELINE_NAME.fullmatch(config.runtime.pipeline_name):
        raise ConfigError(f"runtime.pipeline_name {config.runtime.pipeline_name!r} is not a Kubeflow / Vertex pipeline "
                          "name: lowercase letters, digits and '-', starting with a letter or digit")
    for section, name, flag, why in _SHARED_PATHS:
        value = getattr(getattr(config, section), name)
        if not value:  # else compiled: ImportExampleGen, or every writer, would fail only in the cluster
            raise ConfigError(f"{section}.{name} is empty: pass {flag} gs://...")
        if _on_this_machine(value):
            raise ConfigError(f"{section}.{name} {value!r} is a path on this machine, which the containers cannot "
                              f"reach ({why}): pass {flag} gs://...")
    for section, name in [(section, name) for section, name, _, _ in _SHARED_PATHS] + [
            ("data", "schema_file"), ("model", "weights"), ("model", "weights_dir")]:
        _check_scheme(f"{section}.{name}", getattr(getattr(config, section), name))
    schema = config.data.schema_file
    if schema and _on_this_machine(schema) and not schema.removeprefix("file://").startswith("/"):
        raise ConfigError(f"data.schema_file {schema!r} is a relative path, which each container would "
                          "look for in its own working directory: give the absolute path in the image, or gs://...")
    content = fingerprints.file_content(schema) if schema else None  # read once for the three uses below
    readable_here = content is not None
    if readable_here:
        schema_gate.check_schema_file(schema, content)  # the spec pins this content: the pods read the same
    if _on_this_machine(schema):
        checked = ("; the spec holds the hash of this machine's copy, so a different file there stops the run"
                   if readable_here else "")
        notes.append(f"data.schema_file {schema!r} is read inside the container: the image must "
                     f"hold it at that path (or pass --set data.schema_file=gs://...){checked}")
    elif schema and not readable_here:
        notes.append(f"data.schema_file {schema!r} cannot be read from this machine, so the spec "
                     "holds no hash of its content and the cache keys on its path alone: give each schema version "
                     "a new path")
    if config.runtime.mysql_host or config.runtime.metadata_path:
        notes.append("runtime.mysql_* / runtime.metadata_path are not used: Kubeflow and Vertex AI keep ML Metadata themselves")
    runner, staged = beam_runner(config)
    direct = "direct" in runner.lower()
    if "dataflow" in runner.lower() and not {"sdk_container_image", "worker_harness_container_image"} & set(staged):
        # Its workers import covid_cxr (Transform's preprocessing_fn) and load the model with tf_keras
        # (Evaluator). The pipeline's image cannot serve as is: a worker image must start Beam's
        # /opt/apache/beam/boot. A --setup_file cannot install the stack: tfx 1.16 declares
        # Python < 3.11, so the workers' pip refuses it, and the setup file would be a path in the pod.
        raise ConfigError(f"runtime.beam_extra_args runs Beam on {runner}, whose workers need this package and its "
                          "pinned stack: add --sdk_container_image=<this Dockerfile built with --build-arg "
                          f"BASE={BEAM_WORKER_BASE}> (not --setup_file: the workers' pip refuses tfx 1.16 on "
                          "Python 3.11)")  # under 300 characters with the CLI's prefix
    if config.runtime.beam_workers == 0 and direct:
        # Beam's 0 is os.cpu_count(): in a pod, the node's cores, not the pod's share of them. A
        # --direct_num_workers=0 in beam_extra_args (allowed: it agrees with the field) would come after
        # the new count and win, so it goes too.
        extra = without_beam_option(config.runtime.beam_extra_args, "direct_num_workers")
        config = dataclasses.replace(config, runtime=dataclasses.replace(
            config.runtime, beam_workers=CONTAINER_BEAM_WORKERS, beam_extra_args=extra))
        workers = PipelineOptions(beam_args(config)).get_all_options()["direct_num_workers"]  # what the spec runs
        notes.append(f"runtime.beam_workers=0 (one per core) would count the node's cores in a pod, not the pod's: "
                     f"set to {workers}, the cores of Vertex AI's default machine "
                     "(--set runtime.beam_workers=N for yours)")
    if config.training.reproducible and not direct:
        notes.append(f"training.reproducible: runs on {runner} do not repeat exactly (the examples' order follows its "
                     "workers; only the DirectRunner's one worker keeps it)")
    if _on_this_machine(config.model.weights) and config.model.weights.lower() not in models.WEIGHT_KEYWORDS:
        raise ConfigError(f"model.weights {config.model.weights!r} is a file on this machine, which the "
                          "containers cannot read: copy it to a bucket and pass --set model.weights=gs://...")
    if not config.data.schema_file:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, schema_file=IMAGE_SCHEMA_FILE))
    if _on_this_machine(config.model.weights_dir):
        notes.append(f"model.weights_dir {config.model.weights_dir!r} is on this machine, not in the container: left "
                     "out of the spec, so transfer models download ImageNet weights in the cluster (and fall back to "
                     "model.fallback without network). To use your offline copies there, copy them to a bucket and "
                     "pass --set model.weights_dir=gs://...")
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, weights_dir=""))
    onednn = training.ONEDNN_SETTINGS[config.training.onednn]
    if onednn is not None:
        notes.append(f"training.onednn={config.training.onednn}: the image must set {training.ONEDNN_VARIABLE}={onednn} "
                     f"(docker build --build-arg {training.ONEDNN_VARIABLE}={onednn}; the Dockerfile's default is 0); the "
                     "Tuner and Trainer refuse to train without it")
    return config, notes


def is_kfp_package(output_file: str) -> bool:
    """A .yaml / .yml output is a bare KFP pipeline spec for the open-source backend; else Vertex's PipelineJob JSON."""
    return output_file.lower().endswith((".yaml", ".yml"))


def compile_pipeline(config: PipelineConfig, output_file: str, image: str) -> list[str]:
    """Writes the spec of ``config`` as prepared by :func:`for_the_container`; returns its notes."""
    if not output_file.lower().endswith((".json", ".yaml", ".yml")):
        raise ConfigError(f"--output {output_file!r} must end in .json (a Vertex AI PipelineJob) or .yaml (a pipeline "
                          "spec for open-source Kubeflow Pipelines)")
    if is_kfp_package(output_file) and config.gate.compare_to_baseline:
        raise ConfigError("a .yaml spec is for open-source Kubeflow Pipelines, whose backend cannot run the TFX Resolver "
                          "that finds the latest blessed model: add --set gate.compare_to_baseline=false (no AUC "
                          "check against that model; every other bar stays), or write .json for Vertex AI")
    parent = output_file.rsplit("/", 1)[0] if "/" in output_file else ""
    try:  # before the compile, which takes a while
        writer.check_writable("" if "://" in output_file else parent, "--output's folder")
    except writer.OutputError as e:
        raise ConfigError(str(e)) from None
    from_image = not config.data.schema_file
    config, notes = for_the_container(config)
    # The image's schema is this checkout's (Dockerfile): its hash keys the cache, and ImportSchema
    # stops a run whose image was built from a checkout with another schema.
    schema_sha256 = fingerprints.file_fingerprint(SCHEMA_FILE) if from_image else None
    kfp_package = is_kfp_package(output_file)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        # Schema 2.1 for the open-source backend: it resolves only 2.1's constant parameters.
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=kfp_package))
    # Kubeflow/Vertex keep ML Metadata themselves: no connection config here.
    job = runner.run(create_pipeline(config, schema_sha256=schema_sha256), write_out=False)
    if kfp_package:
        # A bare spec has no runtime config, where TFX puts the pipeline root: it travels as the spec's
        # default instead, as KFP's own compiler writes it.
        spec = dict(job["pipelineSpec"], defaultPipelineRoot=config.runtime.pipeline_root)
        text = yaml.safe_dump(spec, sort_keys=True)
    else:
        text = json.dumps(job, sort_keys=True)
    try:
        if parent:
            tf.io.gfile.makedirs(parent)
        with tf.io.gfile.GFile(output_file, "w") as out:  # a bucket URI is a valid output too
            out.write(text)
    except (OSError, tf.errors.OpError) as e:
        raise ConfigError(f"--output {output_file!r} cannot be written: {getattr(e, 'message', None) or e}") from None
    return notes
