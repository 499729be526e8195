"""Compiles the pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines (thin entry point).

    covid-cxr compile --config prod.yaml --image REGISTRY/covid-cxr:TAG --output covid-cxr.json

The JSON is a KFP v2 pipeline spec: upload it to Kubeflow Pipelines (2.x) or submit it to Vertex AI
(`google.cloud.aiplatform.PipelineJob(template_path=...)`). The container image must have this
package installed (see Dockerfile); pipeline_root, data_dir and serving_dir should be gs:// paths.
"""
from __future__ import annotations

import os

from tfx import v1 as tfx

from covid_cxr.pipeline.config import PipelineConfig
from covid_cxr.pipeline.pipeline import create_pipeline


def compile_pipeline(config: PipelineConfig, output_file: str, image: str) -> str:
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_file)),
        output_filename=os.path.basename(output_file),
    )
    # Kubeflow/Vertex keep ML Metadata themselves: no connection config here.
    runner.run(create_pipeline(config), write_out=True)
    return output_file
