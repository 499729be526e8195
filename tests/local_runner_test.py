"""The runner's data checks: a directory that cannot feed the configured task fails before any component runs."""
import csv
import json
import shutil
import sys

import pytest
import tensorflow as tf

from covid_cxr import local_runner
from covid_cxr.components.schema_gate import DataValidationError, SchemaFileError
from covid_cxr.data import features, synthetic, writer
from covid_cxr.data.testing import DEALT_SEED
from covid_cxr.pipeline import config as cfg
from covid_cxr.pipeline import metadata
from covid_cxr.pipeline.pipeline import SCHEMA_FILE
from covid_cxr.trainer import training


def _config(data_dir, task="covid-vs-normal"):
    return cfg.load_config("quick", overrides={"data.data_dir": str(data_dir), "model.task": task})


def test_data_of_another_task_or_with_foreign_labels_is_refused(tmp_path):
    summary = synthetic.generate(str(tmp_path), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    assert local_runner.check_data(_config(tmp_path)).summary["accepted"] == summary["accepted"]
    with pytest.raises(cfg.ConfigError, match="curated for task 'covid-vs-normal'"):
        local_runner.check_data(_config(tmp_path, "three-class"))
    # A summary claiming labels the task does not have (e.g. hand-merged directories).
    path = tmp_path / features.SUMMARY
    tampered = json.loads(path.read_text())
    tampered["per_class"]["pneumonia"] = 4
    path.write_text(json.dumps(tampered))
    with pytest.raises(cfg.ConfigError, match=r"labels \['pneumonia'\]"):
        local_runner.check_data(_config(tmp_path))
    # A class with no films at all: nothing to learn it from, no sensitivity or specificity to gate on.
    del tampered["per_class"]["pneumonia"]
    tampered["per_class"]["normal"] = 0
    path.write_text(json.dumps(tampered))
    with pytest.raises(cfg.ConfigError, match=r"holds no normal images: task 'covid-vs-normal' trains on normal, covid"):
        local_runner.check_data(_config(tmp_path))



def test_a_split_that_would_lack_a_class_is_refused_before_the_run(tmp_path):
    summary = synthetic.generate(str(tmp_path), "covid-vs-normal", patients_per_class=3, seed=0)
    with pytest.raises(cfg.ConfigError, match=(
            r"^the eval split would hold no normal films \(eval films per class: normal 0, covid 1; patients are dealt "
            r"by hash\): add patients of that class, or change data.\*_buckets, which deals them anew \(now "
            r"train/eval/test 14/3/3\)$")):
        local_runner.check_data(_config(tmp_path))
    other = {"data.data_dir": str(tmp_path), "data.train_buckets": "3", "data.eval_buckets": "2", "data.test_buckets": "1"}
    with pytest.raises(cfg.ConfigError, match=r"^the test split would hold no normal films \(test films per class: "
                                              r"normal 0, covid 3;.*\(now train/eval/test 3/2/1\)$"):
        local_runner.check_data(cfg.load_config("quick", overrides=other))
    # What ExampleGen will write is said as a note; the counts are split_of's (pinned to TFX's deal).
    assert local_runner.split_notes(_config(tmp_path), local_runner.split_counts(_config(tmp_path), summary)) == [
        "films per split (train/eval/test 14/3/3 buckets): train normal 6, covid 6; eval normal 0, covid 1; "
        "test normal 0, covid 0"]
    # Unknown here, left to the Trainer: data in a bucket (Kubeflow), no manifest, one that is not the records'.
    assert local_runner.split_counts(_config("gs://bucket/curated"), summary) is None
    manifest = tmp_path / features.MANIFEST
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join(rows[:-1]) + "\n")
    assert local_runner.split_counts(_config(tmp_path), summary) is None
    manifest.unlink()
    assert local_runner.split_counts(_config(tmp_path), summary) is None and local_runner.split_notes(_config(tmp_path), None) == []

def test_an_unreadable_schema_file_is_refused_before_the_run(tmp_path):
    synthetic.generate(str(tmp_path), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path),
                                                 "data.schema_file": str(tmp_path / "missing.pbtxt")})
    with pytest.raises(cfg.ConfigError, match=r"data.schema_file '.*missing.pbtxt' cannot be read"):
        local_runner.check_inputs(config)


def test_where_the_run_writes_is_checked_before_the_run(tmp_path):
    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for field, value, message in (
            ("runtime.serving_dir", a_file / "cvn", r"runtime.serving_dir \(--serving-dir\) '.*a-file/cvn' cannot be a "
                                                     r"directory: '.*a-file' is a file$"),
            ("runtime.pipeline_root", a_file, r"runtime.pipeline_root \(--pipeline-root\) '.*a-file' cannot be a directory"),
            ("runtime.metadata_path", a_file / "m.sqlite", r"the folder of runtime.metadata_path '.*a-file' cannot be"),
            ("runtime.metadata_path", tmp_path, r"runtime.metadata_path '.*' is a directory: name the SQLite file")):
        config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path / "data"), field: str(value)})
        with pytest.raises(cfg.ConfigError, match=message):
            local_runner.check_inputs(config)
    # ML Metadata's SQLite store cannot live in a bucket root; it must be named, and it is checked then.
    bucket = {"data.data_dir": str(tmp_path / "data"), "runtime.pipeline_root": "gs://b/root"}
    with pytest.raises(cfg.ConfigError, match=r"^runtime.pipeline_root 'gs://b/root' is a bucket, where ML Metadata's "
                                              r"SQLite store cannot be kept: pass --set runtime.metadata_path="):
        local_runner.check_inputs(cfg.load_config("quick", overrides=bucket))
    local_runner.check_inputs(cfg.load_config("quick", overrides={**bucket, "runtime.metadata_path": str(tmp_path / "m")}))
    with pytest.raises(cfg.ConfigError, match=r"^runtime.metadata_path 'gs://b/m.sqlite' is not a local file"):
        local_runner.check_inputs(cfg.load_config("quick", overrides={**bucket, "runtime.metadata_path": "gs://b/m.sqlite"}))
    # Folders that do not exist yet, under one that does, are fine.
    local_runner.check_inputs(cfg.load_config("quick", overrides={
        "data.data_dir": str(tmp_path / "data"), "runtime.pipeline_root": str(tmp_path / "new" / "root"),
        "runtime.serving_dir": str(tmp_path / "new" / "serving")}))
    with pytest.raises(cfg.ConfigError, match=r"data directory '.*a-file' is a file, not a directory"):
        local_runner.check_data(_config(a_file))
    # Tried, not asked: os.access tells root that /proc is writable.
    config = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path / "data"),
                                                 "runtime.serving_dir": "/proc/covid-cxr-test/serving"})
    with pytest.raises(cfg.ConfigError, match=r"runtime.serving_dir \(--serving-dir\) '/proc/covid-cxr-test/serving' "
                                              r"cannot be created: no folder can be made in '/proc' "):
        local_runner.check_inputs(config)
    assert not list(tmp_path.glob("tmp*"))  # the try leaves nothing behind


def test_a_serving_directory_that_serves_another_task_is_refused_before_the_run(tmp_path):
    """`demo --task three-class` into the demo's --out (or one --serving-dir for two tasks) would push a
    three-class model over the covid-vs-normal one its clients call; a damaged or task-less version blocks nothing."""
    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    serving = tmp_path / "serving"
    (serving / "7" / "assets").mkdir(parents=True)
    overrides = {"data.data_dir": str(tmp_path / "data"), "runtime.serving_dir": str(serving),
                 "runtime.pipeline_root": str(tmp_path / "root")}
    (serving / "7" / "assets" / "covid_cxr.json").write_text(json.dumps({"task": "three-class"}))
    with pytest.raises(cfg.ConfigError, match=r"serving_dir \(--serving-dir\) '.*serving' serves a three-class model "
                                              r"\(version 7\); this run's covid-vs-normal model would replace it"):
        local_runner.check_inputs(cfg.load_config("quick", overrides=overrides))
    (serving / "7" / "assets" / "covid_cxr.json").write_text(json.dumps({"task": "covid-vs-normal"}))
    local_runner.check_inputs(cfg.load_config("quick", overrides=overrides))
    (serving / "7" / "assets" / "covid_cxr.json").write_text("{not json")
    local_runner.check_inputs(cfg.load_config("quick", overrides=overrides))


def test_a_weights_file_that_is_not_there_is_refused_before_the_run(tmp_path):
    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    overrides = {"data.data_dir": str(tmp_path / "data"), "runtime.pipeline_root": str(tmp_path / "root")}
    with pytest.raises(cfg.ConfigError, match=r"^model.weights '.*typo.h5' is not a file \(or: auto, imagenet, none\)$"):
        local_runner.check_inputs(cfg.load_config("quick", overrides={**overrides, "model.weights": str(tmp_path / "typo.h5")}))
    (tmp_path / "folder.h5").mkdir()  # the Trainer would fall back on it too
    with pytest.raises(cfg.ConfigError, match=r"^model.weights '.*folder.h5' is not a file"):
        local_runner.check_inputs(cfg.load_config("quick", overrides={**overrides, "model.weights": str(tmp_path / "folder.h5")}))
    (tmp_path / "there.h5").write_bytes(b"")
    local_runner.check_inputs(cfg.load_config("quick", overrides={**overrides, "model.weights": str(tmp_path / "there.h5")}))


def test_a_weights_folder_that_is_not_there_is_said_before_the_run(tmp_path):
    overrides = {"model.weights": "auto", "model.weights_dir": str(tmp_path / "wieghts")}
    [note] = local_runner.settings_notes(cfg.load_config("full", overrides=overrides))
    assert note == (f"model.weights_dir {str(tmp_path / 'wieghts')!r} is not a folder here: `auto` downloads ImageNet "
                    "weights instead; without network access bn_double_conv trains instead (model.fallback)")
    [note] = local_runner.settings_notes(cfg.load_config("full", overrides={**overrides, "model.fallback": "error"}))
    assert note.endswith("without network access the run stops (model.fallback)")
    # Scratch families read no weights: nothing to say.
    assert local_runner.settings_notes(cfg.load_config("quick", overrides=overrides)) == []
    (tmp_path / "wieghts").mkdir()
    assert local_runner.settings_notes(cfg.load_config("full", overrides=overrides)) == []
    assert local_runner.settings_notes(cfg.load_config("full", overrides={**overrides, "model.weights": "none"})) == []


def test_a_failing_component_is_named_in_one_line(tmp_path, monkeypatch):
    # `covid-cxr -v run ...`'s command line: TFX's Beam executors parse sys.argv as absl flags, where
    # -v is --verbosity, so ImportExampleGen (the first component) failed on it before the fix.
    monkeypatch.setattr(sys, "argv", ["covid-cxr", "-v", "run", "--data", str(tmp_path / "data")])
    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    schema = tmp_path / "schema.pbtxt"
    shutil.copy(SCHEMA_FILE, schema)
    config = cfg.load_config("quick", overrides={
        "data.data_dir": str(tmp_path / "data"), "data.schema_file": str(schema),
        "runtime.pipeline_root": str(tmp_path / "root"), "runtime.serving_dir": str(tmp_path / "serving")})
    build = local_runner.create_pipeline

    def edited_once_built(config, connection):  # the file changes after the DAG holds its hash: ImportSchema stops
        pipeline = build(config, connection)
        with open(schema, "a") as f:
            f.write("# edited\n")
        return pipeline

    monkeypatch.setattr(local_runner, "create_pipeline", edited_once_built)
    with pytest.raises(local_runner.PipelineRunError, match=rf"^ImportSchema failed: SchemaChangedError: {schema} changed ") as info:
        local_runner.run(config)
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is not None  # the traceback --verbose shows
    assert sys.argv[1] == "-v"  # the command line is back once the DAG is done


def _rewrite_records(shard, change) -> None:
    records = [change(i, raw) for i, raw in enumerate(writer.read_records([str(shard)]))]
    with tf.io.TFRecordWriter(str(shard), options="GZIP") as w:
        for raw in records:
            w.write(raw)


def _image_replaced(i, raw):
    if i != 2:
        return raw
    example = tf.train.Example.FromString(raw)
    example.features.feature[features.IMAGE].bytes_list.value[0] = b"not a png"
    return example.SerializeToString()


@pytest.mark.parametrize("damage, failed_in, message", [
    (lambda shard: shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2]), "ImportExampleGen",
     r"not a readable gzip TFRecord file \(DataLossError: "),
    (lambda shard: _rewrite_records(shard, lambda i, raw: b"hello world" if i == 2 else raw), "ImportExampleGen",
     r"record 2 is not a tf.Example: not a curated covid-cxr dataset$"),
    (lambda shard: _rewrite_records(shard, _image_replaced), "Transform",
     r"record 2 has an image that is not PNG or JPEG data: not a curated covid-cxr dataset$")],
    ids=["cut-short", "not-an-example", "image-not-decodable"])
def test_a_damaged_record_is_named_when_a_component_fails_on_it(tmp_path, damage, failed_in, message):
    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    shard = sorted((tmp_path / "data").glob(features.TFRECORD_PATTERN))[0]
    damage(shard)
    config = cfg.load_config("quick", overrides={
        "data.data_dir": str(tmp_path / "data"), "runtime.pipeline_root": str(tmp_path / "root"),
        "runtime.serving_dir": str(tmp_path / "serving")})
    # The component's own error names no file (ImportExampleGen's is the damaged record's bytes).
    with pytest.raises(writer.UnreadableDataError, match=rf"^{shard}: {message}") as info:
        local_runner.run(config)
    assert "\n" not in str(info.value)
    assert metadata.failed_component(metadata.connection_config(config), config.runtime.pipeline_name) == failed_in
    assert not (tmp_path / "serving").exists()


def _dag_raising(monkeypatch, error: Exception) -> None:
    """The DAG fails at once with ``error``, as a component's failure reaches LocalDagRunner's caller."""
    class FailingRunner:
        def run(self, pipeline):
            raise error

    monkeypatch.setattr(local_runner, "create_pipeline", lambda config, connection: None)
    monkeypatch.setattr(local_runner.tfx.orchestration, "LocalDagRunner", FailingRunner)


def test_a_store_that_cannot_say_what_failed_does_not_hide_the_runs_error(tmp_path, monkeypatch):
    config = _checked_config(tmp_path)

    def store_down(connection, pipeline_name):
        raise RuntimeError("metadata store unavailable")

    _dag_raising(monkeypatch, RuntimeError("the component's own error"))
    monkeypatch.setattr(metadata, "failed_component", store_down)
    with pytest.raises(local_runner.PipelineRunError) as info:
        local_runner.run(config)
    assert str(info.value) == "a component failed: RuntimeError: the component's own error"
    assert str(info.value.__cause__) == "the component's own error"


def test_the_failed_component_is_this_pipelines_in_a_shared_store(tmp_path):
    """A MySQL store may hold other pipelines' runs: their newer failure is not this run's."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    connection = metadata.sqlite_connection(str(tmp_path / "m.sqlite"))
    store = metadata_store.MetadataStore(connection)
    context_type = store.put_context_type(metadata_store_pb2.ContextType(name="pipeline"))
    failed = metadata_store_pb2.Execution.FAILED
    for pipeline, component in (("covid-cxr-covid-vs-normal", "Trainer"), ("covid-cxr-three-class", "Transform")):
        type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name=f"tfx.components.{component}"))
        [execution] = store.put_executions([metadata_store_pb2.Execution(type_id=type_id, last_known_state=failed)])
        [context] = store.put_contexts([metadata_store_pb2.Context(type_id=context_type, name=pipeline)])
        store.put_attributions_and_associations(
            [], [metadata_store_pb2.Association(execution_id=execution, context_id=context)])
    assert metadata.failed_component(connection, "covid-cxr-covid-vs-normal") == "Trainer"
    assert metadata.failed_component(connection, "covid-cxr-three-class") == "Transform"
    assert metadata.failed_component(connection, "another-pipeline") == metadata.UNKNOWN_COMPONENT


def test_an_error_building_the_pipeline_is_not_blamed_on_an_earlier_runs_failed_component(tmp_path, monkeypatch):
    config = _checked_config(tmp_path)

    def bad_pipeline(config, connection):
        raise ValueError("Value out of range: 100000000000")

    monkeypatch.setattr(local_runner, "create_pipeline", bad_pipeline)
    # The store's newest failure is an earlier run's: it was reported as "ImportSchema failed: ...".
    monkeypatch.setattr(metadata, "failed_component", lambda connection, pipeline_name: "ImportSchema")
    with pytest.raises(ValueError, match="^Value out of range: 100000000000$") as info:
        local_runner.run(config)
    assert not isinstance(info.value, local_runner.PipelineRunError)


def test_a_metadata_file_that_is_not_sqlite_is_refused_before_the_run(tmp_path):
    """It failed as "a component failed: RuntimeError: Failed to establish connection to Metadata storage with
    error: ... file is not a database query: CREATE TABLE IF NOT EXISTS `Type` ..." (exit 1)."""
    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n")
    overrides = {"data.data_dir": str(tmp_path / "data"), "runtime.pipeline_root": str(tmp_path / "root"),
                 "runtime.serving_dir": str(tmp_path / "serving")}
    config = cfg.load_config("quick", overrides={**overrides, "runtime.metadata_path": str(notes)})
    with pytest.raises(cfg.ConfigError, match=rf"^ML Metadata's store '{notes}' is not an SQLite database: "):
        local_runner.check_inputs(config)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "metadata.sqlite").write_bytes(b"\x00" * 100)  # the default place, damaged
    with pytest.raises(cfg.ConfigError, match="metadata.sqlite' is not an SQLite database"):
        local_runner.check_inputs(cfg.load_config("quick", overrides=overrides))
    (tmp_path / "root" / "metadata.sqlite").write_bytes(b"")  # an empty file: SQLite makes it a store
    local_runner.check_inputs(cfg.load_config("quick", overrides=overrides))


@pytest.mark.parametrize("content", ["this is { not a schema\n", "# reviewed\n"], ids=["broken", "no-feature"])
def test_a_schema_file_that_is_not_a_schema_is_refused_before_the_run(tmp_path, content):
    """It failed as "ImportSchema failed: SchemaFileError: ..." (exit 1) after ImportExampleGen and StatisticsGen had
    read the whole dataset; `demo` found it after generating its data."""
    schema = tmp_path / "schema.pbtxt"
    schema.write_text(content)
    config = _checked_config(tmp_path, **{"data.schema_file": str(schema)})
    with pytest.raises(SchemaFileError, match=rf"^data.schema_file: {schema} is (not a|an empty) schema") as info:
        local_runner.check_settings(config)
    assert "\n" not in str(info.value)


def test_check_settings_reads_the_schema_file_once(tmp_path, gfile_reads):
    """It was read twice: once for file_fingerprint (is it readable here?), once more to parse it."""
    schema = tmp_path / "schema.pbtxt"
    shutil.copy(SCHEMA_FILE, schema)
    config = _checked_config(tmp_path, **{"data.schema_file": str(schema)})
    reads = gfile_reads(schema)
    local_runner.check_settings(config)
    assert len(reads) == 1, reads
    schema.write_text("# reviewed\n")  # still parsed: the one read is the checked one
    with pytest.raises(SchemaFileError, match=rf"^data.schema_file: {schema} is an empty schema"):
        local_runner.check_settings(config)


def _checked_config(tmp_path, **overrides):
    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    return cfg.load_config("quick", overrides={
        "data.data_dir": str(tmp_path / "data"), "runtime.pipeline_root": str(tmp_path / "root"),
        "runtime.serving_dir": str(tmp_path / "serving"), **overrides})


def test_a_data_validation_failure_is_the_schema_gates_own_error_and_the_process_env_is_checked_first(
        tmp_path, monkeypatch):
    config = _checked_config(tmp_path)
    refusal = DataValidationError("the data does not match the schema")
    _dag_raising(monkeypatch, refusal)
    with pytest.raises(DataValidationError) as info:  # not a PipelineRunError: the CLI says it as a data error
        local_runner.run(config)
    assert info.value is refusal
    # training.reproducible in a process started without its threads: refused before the DAG starts.
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "4")
    _dag_raising(monkeypatch, AssertionError("the DAG ran"))
    with pytest.raises(training.ProcessEnvError, match="TF_NUM_INTEROP_THREADS=1"):
        local_runner.run(_checked_config(tmp_path, **{"training.reproducible": True}))


def test_no_data_directory_is_refused_and_weight_keywords_are_taken_in_any_case(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"^no data directory: pass --data DIR \(a directory written by "):
        local_runner.check_inputs(cfg.load_config("quick", overrides={"data.data_dir": ""}))
    for keyword in ("ImageNet", "NONE", "Auto"):  # keywords, not file names
        local_runner.check_inputs(_checked_config(tmp_path, **{"model.weights": keyword}))


def test_the_weights_folder_note_for_any_transfer_family_any_case_of_auto_and_only_a_named_folder(tmp_path, monkeypatch):
    missing = str(tmp_path / "wieghts")
    isdir = tf.io.gfile.isdir

    def bucket_denied(path):  # a bucket this machine has no access to
        if path.startswith("gs://"):
            raise tf.errors.PermissionDeniedError(None, None, "no credentials")
        return isdir(path)

    monkeypatch.setattr(tf.io.gfile, "isdir", bucket_denied)
    notes = {
        "auto in capitals": {"model.weights": "AUTO", "model.weights_dir": missing},
        "a transfer family in the ensemble only": {"model.weights_dir": missing, "model.ensemble_with": ["mobilenet_v2_035"]},
        "a folder this TensorFlow cannot ask about": {"model.weights_dir": "gs://bucket/weights"},
        "no folder named": {"model.weights_dir": ""},
    }
    said = {why: local_runner.settings_notes(cfg.load_config(
        "quick" if "ensemble" in why else "full", overrides={"model.weights": "auto", **overrides}))
        for why, overrides in notes.items()}
    assert {why: len(lines) for why, lines in said.items()} == {
        "auto in capitals": 1, "a transfer family in the ensemble only": 1,
        "a folder this TensorFlow cannot ask about": 1, "no folder named": 0}
    assert said["a folder this TensorFlow cannot ask about"][0].startswith(
        "model.weights_dir 'gs://bucket/weights' is not a folder here: ")


def test_a_split_lacking_every_class_names_them_all_and_the_counts_are_returned_for_the_run(tmp_path):
    synthetic.generate(str(tmp_path), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    config = _config(tmp_path)
    checked = local_runner.check_data(config)
    assert checked.split_counts == local_runner.split_counts(config, checked.summary) is not None  # not counted again
    sparse = cfg.load_config("quick", overrides={"data.data_dir": str(tmp_path), "data.train_buckets": "50",
                                                 "data.eval_buckets": "1", "data.test_buckets": "1"})
    with pytest.raises(cfg.ConfigError, match=r"^the eval split would hold no normal and no covid films \(eval films "
                                              r"per class: normal 0, covid 0; "):
        local_runner.check_data(sparse)


def _manifest_edited(path, change) -> None:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(change(rows))


def _patients_renamed(rows):
    column = rows[0].index("patient_id")
    return [rows[0]] + [[*r[:column], "one patient", *r[column + 1:]] for r in rows[1:]]


def test_films_are_counted_by_the_group_example_gen_deals_and_an_unusable_manifest_is_left_to_the_trainer(
        tmp_path, monkeypatch):
    summary = synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=3, seed=DEALT_SEED)
    config = _config(tmp_path / "data")
    counts = local_runner.split_counts(config, summary)
    shutil.copytree(tmp_path / "data", tmp_path / "gs:" / "bucket" / "curated")
    manifest = tmp_path / "data" / features.MANIFEST
    _manifest_edited(manifest, _patients_renamed)  # the group, not the patient id, decides the split
    assert local_runner.split_counts(config, summary) == counts
    _manifest_edited(manifest, lambda rows: [["grp" if c == "group" else c for c in rows[0]]] + rows[1:])
    assert local_runner.split_counts(config, summary) is None
    # A bucket URI is never read as a local path, even where one of that name exists.
    monkeypatch.chdir(tmp_path)
    assert local_runner.split_counts(_config("gs:/bucket/curated"), summary) == counts  # that local path
    assert local_runner.split_counts(_config("gs://bucket/curated"), summary) is None


def test_weights_in_a_file_system_this_tensorflow_cannot_read_are_refused_in_one_line(tmp_path):
    config = _checked_config(tmp_path, **{"model.weights": "s3://bucket/mobilenet.h5"})
    with pytest.raises(cfg.ConfigError, match=r"^model.weights 's3://bucket/mobilenet.h5' cannot be read: ") as info:
        local_runner.check_settings(config)
    assert "\n" not in str(info.value)


def test_a_run_given_no_checks_checks_its_inputs_before_the_dag(tmp_path, monkeypatch):
    _dag_raising(monkeypatch, AssertionError("the DAG ran"))
    with pytest.raises(cfg.ConfigError, match=r"^data directory '.*missing' does not exist"):
        local_runner.run(_config(tmp_path / "missing"))
    serving = _checked_config(tmp_path, **{"runtime.serving_dir": str(tmp_path / "a-file" / "serving")})
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(cfg.ConfigError, match=r"runtime.serving_dir \(--serving-dir\) '.*' cannot be a directory"):
        local_runner.run(serving)


def test_a_run_given_its_checks_does_not_repeat_them_and_returns_the_runs_outcome(tmp_path, monkeypatch):
    config = _checked_config(tmp_path)
    checked = local_runner.check_inputs(config)

    def checked_again(config):
        raise AssertionError("checked again")

    ran = []

    class Runner:
        def run(self, pipeline):
            ran.append(pipeline)

    for check in ("check_inputs", "check_data", "check_settings"):
        monkeypatch.setattr(local_runner, check, checked_again)
    monkeypatch.setattr(local_runner, "create_pipeline", lambda config, connection: "the DAG")
    monkeypatch.setattr(local_runner.tfx.orchestration, "LocalDagRunner", Runner)
    monkeypatch.setattr(metadata, "latest_outcome", lambda c: ("the outcome of", c))
    assert local_runner.run(config, checked) == ("the outcome of", config)
    assert ran == ["the DAG"]
