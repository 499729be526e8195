# Container image for Kubeflow Pipelines / Vertex AI: every component runs this image.
# Same pinned stack as the local .venv (constraints.txt), on Python 3.11.
# Dataflow's worker image is this file built on Beam's SDK image, which keeps Beam's entry point:
#   docker build --build-arg BASE=apache/beam_python3.11_sdk:2.61.0 -t <worker image> .
# (kubeflow_runner.BEAM_WORKER_BASE), passed as --sdk_container_image in runtime.beam_extra_args.
# The base is named by tag: this repository was built where no container registry could be reached
# to read its digest. For a build that repeats, pin it: --build-arg BASE=python:3.11-slim-bookworm@sha256:<digest>
# (`docker buildx imagetools inspect python:3.11-slim-bookworm` prints the digest).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ENV TF_USE_LEGACY_KERAS=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# training.reproducible (on in the `full` preset): TensorFlow must start with one inter-op thread
# and a fixed intra-op count, OpenMP's the same (trainer.training.reproducible_thread_env). Build
# with --build-arg THREADS=<the cores the Tuner and Trainer pods get>; runs repeat for one count.
ARG THREADS=4
ENV TF_NUM_INTEROP_THREADS=1 TF_NUM_INTRAOP_THREADS=${THREADS} OMP_NUM_THREADS=${THREADS}
# training.onednn: `off` (the `full` preset) needs 0; for `on`, build with --build-arg TF_ENABLE_ONEDNN_OPTS=1.
ARG TF_ENABLE_ONEDNN_OPTS=0
ENV TF_ENABLE_ONEDNN_OPTS=${TF_ENABLE_ONEDNN_OPTS}
WORKDIR /pipeline
COPY requirements.txt constraints.txt setup.py ./
# pyfarmhash 0.3.2 (pinned for tensorflow-data-validation) is a C++ source package on PyPI: compile
# it, then drop the compiler in the same layer.
# The same pip, setuptools and wheel as the Makefile's local install.
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && pip install --no-cache-dir pip==26.3 setuptools==84.2.1 wheel==0.48.0 \
    && pip install --no-cache-dir --ignore-requires-python -c constraints.txt -r requirements.txt \
    && apt-get purge -y --auto-remove g++ && rm -rf /var/lib/apt/lists/*
COPY . /pipeline/src/covid_cxr
RUN pip install --no-cache-dir --no-deps --ignore-requires-python /pipeline/src/covid_cxr
# kubeflow_runner.IMAGE_SCHEMA_FILE: the compiled spec imports the reviewed schema from here.
COPY pipeline/schema/schema.pbtxt /pipeline/schema/schema.pbtxt
