"""Compiles the pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines (thin entry point).

    covid-cxr compile --config prod.yaml --image REGISTRY/covid-cxr:TAG --output covid-cxr.json

The JSON is a KFP v2 pipeline spec: upload it to Kubeflow Pipelines (2.x) or submit it to Vertex AI
(`google.cloud.aiplatform.PipelineJob(template_path=...)`). The container image must have this
package installed (see Dockerfile); pipeline_root, data_dir and serving_dir should be gs:// paths.
"""
from __future__ import annotations

import os

import dataclasses

from tfx import v1 as tfx

from covid_cxr.pipeline.config import PipelineConfig
from covid_cxr.pipeline.pipeline import create_pipeline


# Where the Dockerfile puts the reviewed schema. The spec names files by path, and the path of this
# checkout on the compiling machine does not exist inside the container.
IMAGE_SCHEMA_FILE = "/pipeline/schema/schema.pbtxt"


def compile_pipeline(config: PipelineConfig, output_file: str, image: str) -> str:
    if not config.data.schema_file:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, schema_file=IMAGE_SCHEMA_FILE))
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_file)),
        output_filename=os.path.basename(output_file),
    )
    # Kubeflow/Vertex keep ML Metadata themselves: no connection config here.
    runner.run(create_pipeline(config), write_out=True)
    return output_file
