"""Cache keys follow what a component runs: its code's imports and the schema file's content."""
import hashlib
import json
import os

from covid_cxr.pipeline import config as cfg
from covid_cxr.pipeline import fingerprints, pipeline

SCHEMA = 'feature { name: "label" type: BYTES }\n'
# code_fingerprint of the small package in the test of what a fingerprint covers.
GOLDEN = "3dab03d73058b726ecb8b323ccc4bb4fed684238787ad2428bd8b4c082ba1c0f"


def test_an_edit_of_the_schema_or_the_code_changes_the_cache_key(tmp_path, monkeypatch):
    path = tmp_path / "schema.pbtxt"
    path.write_text(SCHEMA)
    config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path), "data.schema_file": str(path)})

    def properties():
        nodes = {c.id: c for c in pipeline.create_components(config)}
        return {name: json.dumps(nodes[name].exec_properties, sort_keys=True, default=str)
                for name in ("ImportSchema", "Transform", "Tuner", "Trainer")}

    before = properties()
    assert properties() == before  # nothing edited: the cache may answer
    path.write_text(SCHEMA.replace("BYTES", "INT"))
    edited = properties()
    assert edited["ImportSchema"] != before["ImportSchema"]
    assert {k: v for k, v in edited.items() if k != "ImportSchema"} == {k: v for k, v in before.items() if k != "ImportSchema"}
    # A copy of the package's modules: each component's key follows the code it imports, and only that.
    package = tmp_path / "pkg"
    for dirpath, dirnames, names in os.walk(fingerprints.PACKAGE_ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("tests", "scripts", "docs")]
        for name in names:
            if name.endswith(".py"):
                target = package / os.path.relpath(os.path.join(dirpath, name), fingerprints.PACKAGE_ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(open(os.path.join(dirpath, name), "rb").read())
    monkeypatch.setattr(fingerprints, "PACKAGE_ROOT", str(package))

    def after_editing(*relpaths):
        for relpath in relpaths:
            with open(package / relpath, "a") as f:
                f.write("\n# an edit\n")
        fingerprints.code_fingerprint.cache_clear()
        return properties()

    assert after_editing() == edited  # the same code in another place
    # CLI-only code and editor leftovers beside the modules change nothing.
    (package / "trainer" / ".#task.py").symlink_to("nowhere")  # an Emacs lock file
    (package / "trainer" / ".ipynb_checkpoints").mkdir()
    (package / "trainer" / ".ipynb_checkpoints" / "task-checkpoint.py").write_text("x = 1\n")
    assert after_editing("data/curate.py", "cli.py") == edited
    # The Trainer's code (its metrics in evaluation/ too) re-runs the Tuner and Trainer, not Transform.
    trained = after_editing("evaluation/metrics.py")
    assert trained["Transform"] == edited["Transform"]
    assert trained["Tuner"] != edited["Tuner"] and trained["Trainer"] != edited["Trainer"]
    # The Transform's code re-runs everything that consumes it.
    transformed = after_editing("transform/preprocessing.py")
    assert all(transformed[name] != trained[name] for name in ("Transform", "Tuner", "Trainer"))
    assert transformed["ImportSchema"] == edited["ImportSchema"]
    fingerprints.code_fingerprint.cache_clear()


def test_components_refuse_to_run_other_code_than_the_pipeline_was_built_with():
    import pytest
    from tfx import v1 as tfx

    from covid_cxr.trainer import task
    from covid_cxr.transform import preprocessing

    for module in ("covid_cxr.transform.preprocessing", "covid_cxr.trainer.task"):
        fingerprints.check_code(module, fingerprints.code_fingerprint(module))  # the same code: runs
        fingerprints.check_code(module, "")  # built without a fingerprint (older specs, direct calls): runs
        here = fingerprints.code_fingerprint(module)
        with pytest.raises(fingerprints.CodeChangedError, match=rf"^the code of {module} here \(sha256 {here[:12]}\) is "
                           r"not the code the pipeline was built with \(000000000000\): "):
            fingerprints.check_code(module, "0" * 64)
        # The whole fingerprint is compared, not the 12 characters the message shows.
        with pytest.raises(fingerprints.CodeChangedError):
            fingerprints.check_code(module, here[:12] + ("1" if here[12] == "0" else "0") + here[13:])
    stale = {fingerprints.CODE_KEY: "0" * 64}
    # Each entry point checks before it does anything else.
    with pytest.raises(fingerprints.CodeChangedError):
        preprocessing.preprocessing_fn({}, {preprocessing.IMAGE_SIZE_KEY: 32, **stale})
    for entry in (task.tuner_fn, task.run_fn):
        with pytest.raises(fingerprints.CodeChangedError):
            entry(tfx.components.FnArgs(custom_config=stale))


def test_a_code_fingerprint_covers_what_the_entry_imports_and_the_packages_around_it(tmp_path, monkeypatch):
    files = {
        "__init__.py": "",
        "a/__init__.py": "",
        "a/entry.py": ("from covid_cxr.b import helper\nfrom covid_cxr.n import leaf\n"
                       # Not ours, though _module_file would find a d.py for their names.
                       "import json, tfx.d, covid_cxr_extras.d\nfrom covid_cxr_extras.d import z\n"
                       "\n\ndef f():\n    import covid_cxr.c\n"),
        "b/__init__.py": "",
        "b/helper.py": "from covid_cxr.e import VALUE\nimport covid_cxr.a.entry  # a cycle\n",
        "c.py": "y = 2\n",
        "d.py": "z = 3\n",  # imported by nothing the entry reaches
        "e.py": "VALUE = 1\n",
        "n/leaf.py": "w = 4\n",  # n/ is a namespace package: no __init__.py to hash
    }
    for relpath, text in files.items():
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).write_text(text)
    monkeypatch.setattr(fingerprints, "PACKAGE_ROOT", str(tmp_path))

    def after_editing(relpath):
        with open(tmp_path / relpath, "a") as f:
            f.write("# an edit\n")
        fingerprints.code_fingerprint.cache_clear()
        return fingerprints.code_fingerprint("covid_cxr.a.entry")

    try:
        fingerprints.code_fingerprint.cache_clear()
        before = fingerprints.code_fingerprint("covid_cxr.a.entry")
        # The same in any process on any machine (the compiling checkout and the image must agree), so
        # a fixed value: it changes only with the files here or with how a fingerprint is made.
        assert before == GOLDEN
        assert after_editing("d.py") == before
        # the entry, a from-import of a module and of a name in one, a function-level import, a module in
        # a namespace package, and every package whose __init__ runs
        for relpath in ("a/entry.py", "b/helper.py", "e.py", "c.py", "n/leaf.py", "b/__init__.py", "a/__init__.py",
                        "__init__.py"):
            edited = after_editing(relpath)
            assert edited != before, relpath
            before = edited
    finally:
        fingerprints.code_fingerprint.cache_clear()


def test_a_file_fingerprint_is_its_content_hash_or_empty_where_it_cannot_be_read(tmp_path):
    path = tmp_path / "schema.pbtxt"
    path.write_text(SCHEMA)
    assert fingerprints.file_fingerprint(str(path)) == hashlib.sha256(SCHEMA.encode()).hexdigest()
    path.write_text("")  # readable, empty: still a content to pin, not "nothing to check"
    assert fingerprints.file_fingerprint(str(path)) == hashlib.sha256(b"").hexdigest()
    # Only inside the image, or a directory: nothing to check here, rather than an error.
    for unreadable in (tmp_path / "absent.pbtxt", tmp_path):
        assert fingerprints.file_content(str(unreadable)) is None
        assert fingerprints.file_fingerprint(str(unreadable)) == ""
