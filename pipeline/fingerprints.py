"""What TFX's cache cannot see by itself: the package's code and the reviewed schema's content.

TFX reuses a cached execution when the component, its inputs and its execution properties match.
Transform, Tuner and Trainer name their functions by dotted path (no ``module_file``, so TFX packages
and hashes no code), and ImportSchemaGen would record the schema's path, not its content: edit either
in place and a cached run would serve the old model, or validate against the old schema. These
fingerprints go into those components' properties so that an edit re-runs what it affects.
On Kubeflow / Vertex the container image carries the code: tag images by digest.
"""
from __future__ import annotations

import functools
import hashlib
import os

import tensorflow as tf

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The packages whose code runs inside the components (curation writes the data, which ExampleGen
# fingerprints itself; evaluation/ and the CLI run outside the DAG).
COMPONENT_CODE = ("components", "data", "serving", "trainer", "transform")


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """SHA-256 over the path and content of every non-test module in COMPONENT_CODE."""
    digest = hashlib.sha256()
    for package in COMPONENT_CODE:
        for dirpath, dirnames, filenames in os.walk(os.path.join(PACKAGE_ROOT, package)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py") and not name.endswith("_test.py") and name != "testing.py":  # tests' helpers
                    path = os.path.join(dirpath, name)
                    digest.update(os.path.relpath(path, PACKAGE_ROOT).encode() + b"\0")
                    with open(path, "rb") as f:
                        digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def file_fingerprint(path: str) -> str:
    """SHA-256 of a file's content, or "" when it cannot be read here (e.g. a path that exists only
    inside the container image); the component then checks nothing and the path alone keys the cache."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (tf.errors.OpError, OSError):
        return ""
