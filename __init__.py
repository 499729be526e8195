"""covid-cxr: a TFX pipeline that turns public chest X-ray collections into a gated COVID-19 classifier.

The repository root is the ``covid_cxr`` package (see setup.py's ``package_dir``), so the
top-level folders ``pipeline/``, ``data/``, ... install as ``covid_cxr.pipeline``,
``covid_cxr.data``, ... and never as generic top-level names.
"""
import os

# TFX 1.16, TF Transform and keras-tuner 1.3.5 all need Keras 2 (tf_keras) behind tf.keras.
# It must be set before TensorFlow first resolves tf.keras, so it lives in the package root
# that every entry point imports first.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ logging (CUDA plugin registration noise on CPU machines, INFO chatter) buries
# the pipeline's own messages; Python-level errors still surface as exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"  # the only copy: setup.py reads it from here


def quiet_import_warnings(caller: str = "__main__") -> None:
    """Hides Python warnings from here on: Google client libraries, TFX and Beam warn at import time
    (Python versions, deprecations), ~40 lines a user needs none of before a command's output or its
    one-line error. The CLI calls it unless -v, each script under scripts/ with its ``__name__``, both
    before their heavy imports. Only a module run as a program (``caller == "__main__"``) is quieted:
    a library user, or a test runner importing a script, keeps its own filters."""
    if caller != "__main__":
        return
    import warnings

    warnings.filterwarnings("ignore")
