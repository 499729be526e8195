"""What TFX's cache cannot see by itself: the package's code and the reviewed schema's content.

TFX reuses a cached execution when the component, its inputs and its execution properties match.
Transform, Tuner and Trainer name their functions by dotted path (no ``module_file``, so TFX packages
and hashes no code), and ImportSchemaGen would record the schema's path, not its content: edit either
in place and a cached run would serve the old model, or validate against the old schema. These
fingerprints go into those components' properties so that an edit re-runs what it affects, and
only that: each component's code fingerprint covers the covid_cxr modules its entry point imports,
directly or through others, and the component checks it where it runs (check_code). On Kubeflow /
Vertex the image carries the code and the default schema, both hashed from the compiling checkout.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import os

import tensorflow as tf

PACKAGE = "covid_cxr"
# The key of the code fingerprint in Transform's custom_config and in the Tuner's / Trainer's.
CODE_KEY = "code_sha256"
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module_file(module: str) -> str | None:
    """The source file of a covid_cxr module (package or plain module), None if there is none."""
    parts = module.split(".")[1:]
    base = os.path.join(PACKAGE_ROOT, *parts)
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def _imported_modules(path: str) -> set[str]:
    """covid_cxr modules a file imports anywhere in it (function-level imports too); for
    ``from covid_cxr.x import y`` both covid_cxr.x and covid_cxr.x.y, whichever is a module."""
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == PACKAGE:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if _module_file(m)}


@functools.lru_cache(maxsize=None)
def code_fingerprint(entry_module: str) -> str:
    """SHA-256 over the source of ``entry_module`` and every covid_cxr module it reaches by import
    (with the packages around each, whose ``__init__`` runs on the way)."""
    seen: set[str] = set()
    todo = [entry_module]
    while todo:
        module = todo.pop()
        if module not in seen and _module_file(module):
            seen.add(module)
            todo.extend(_imported_modules(_module_file(module)))
            todo.extend(module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1))
    digest = hashlib.sha256()
    for module in sorted(seen):
        with open(_module_file(module), "rb") as f:
            digest.update(module.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


class CodeChangedError(RuntimeError):
    """The code a component runs is not the code the pipeline was built with."""


def check_code(entry_module: str, built_with: str | None) -> None:
    """Raises CodeChangedError unless the covid_cxr code ``entry_module`` reaches here is the code
    whose fingerprint the pipeline was built with (``built_with``; None or "": nothing to check).
    On Kubeflow / Vertex that catches an image built from another checkout than the compiled spec,
    which would otherwise run old code and cache its result under the new code's key."""
    if built_with and code_fingerprint(entry_module) != built_with:
        raise CodeChangedError(
            f"the code of {entry_module} here (sha256 {code_fingerprint(entry_module)[:12]}) is not the code the "
            f"pipeline was built with ({built_with[:12]}): on Kubeflow / Vertex, build the image from the checkout "
            "that compiled the spec, or compile again; locally, the code changed after the run started")


def file_content(path: str) -> bytes | None:
    """A file's content, or None when it cannot be read here (e.g. a path that exists only inside the
    container image)."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except (tf.errors.OpError, OSError):
        return None


def file_fingerprint(path: str) -> str:
    """SHA-256 of a file's content, or "" when it cannot be read here (:func:`file_content`); the
    component then checks nothing and the path alone keys the cache."""
    content = file_content(path)
    return "" if content is None else hashlib.sha256(content).hexdigest()
