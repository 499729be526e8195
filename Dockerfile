# Container image for Kubeflow Pipelines / Vertex AI: every component runs this image.
# Same pinned stack as the local .venv (constraints.txt), on Python 3.11.
FROM python:3.11-slim-bookworm
ENV TF_USE_LEGACY_KERAS=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# training.reproducible (on in the `full` preset): TensorFlow must start with one inter-op thread
# and a fixed intra-op count (trainer.training.reproducible_thread_env). Set the count to the
# cores the Tuner and Trainer pods get; runs repeat for one count.
ENV TF_NUM_INTEROP_THREADS=1 TF_NUM_INTRAOP_THREADS=4 OMP_NUM_THREADS=4
# training.onednn (off in `full`): TensorFlow would otherwise pick its oneDNN kernels by CPU.
ENV TF_ENABLE_ONEDNN_OPTS=0
WORKDIR /pipeline
COPY requirements.txt constraints.txt setup.py ./
RUN pip install --no-cache-dir --ignore-requires-python -c constraints.txt -r requirements.txt
COPY . /pipeline/src/covid_cxr
RUN pip install --no-cache-dir --no-deps --ignore-requires-python /pipeline/src/covid_cxr
# kubeflow_runner.IMAGE_SCHEMA_FILE: the compiled spec imports the reviewed schema from here.
COPY pipeline/schema/schema.pbtxt /pipeline/schema/schema.pbtxt
