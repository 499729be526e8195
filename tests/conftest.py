import os

import pytest


def _script_path(name: str) -> str:
    return os.path.join(os.path.dirname(__file__), "..", "scripts", f"{name}.py")


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, _script_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_script():
    """``load_script("compare_models")``: scripts/compare_models.py imported fresh as a module
    (scripts/ is not a package), so tests can call and patch its functions."""
    return _load_script


@pytest.fixture(scope="session")
def run_script():
    """``run_script("leak_check", arg, ...)``: scripts/leak_check.py run as a user runs it, in a new Python
    with this one's import path and no PYTHONWARNINGS of the caller's; its CompletedProcess (text)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)

    def run(name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, _script_path(name), *args], env=env, capture_output=True, text=True,
                              timeout=120)
    return run


@pytest.fixture
def gfile_reads(monkeypatch):
    """``reads = gfile_reads(path)``: every later opening of ``path`` through tf.io.gfile.GFile (how
    fingerprints and ImportSchema, via tfx's fileio, read a file) is appended to ``reads``."""
    import tensorflow as tf

    gfile = tf.io.gfile.GFile

    def watch(path) -> list:
        reads = []

        def counting(name, *args, **kwargs):
            if str(name) == str(path):
                reads.append(name)
            return gfile(name, *args, **kwargs)

        monkeypatch.setattr(tf.io.gfile, "GFile", counting)
        return reads

    return watch
