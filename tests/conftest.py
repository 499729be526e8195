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


# The files that take minutes, longest first. `make test` runs `--dist loadfile --no-loadscope-reorder`, so
# xdist hands files out in collection order: these start at once on both workers while the short files fill
# in around them. xdist's default order (most tests first) put these few-test files last and left one
# worker running a DAG alone for minutes at the end of the suite.
_LONGEST_FILES_FIRST = ("tests/pretrained_pipeline_test.py", "tests/pipeline_e2e_test.py",
                        "tests/mysql_metadata_test.py", "trainer/task_test.py")


def pytest_collection_modifyitems(items):
    rank = {path: position for position, path in enumerate(_LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: files stay whole
