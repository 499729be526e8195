"""What a run's ML Metadata says, read from a small store written here as TFX's runner writes one."""
import os
import socket

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from covid_cxr.evaluation import gate_report
from covid_cxr.evaluation.artifacts import DECISION_RECORD
from covid_cxr.pipeline import config as cfg
from covid_cxr.pipeline import metadata

INPUT, OUTPUT = metadata_store_pb2.Event.INPUT, metadata_store_pb2.Event.OUTPUT


class Store:
    """An ML Metadata store with executions of TFX components and their input / output artifacts."""

    def __init__(self, connection):
        self.store = metadata_store.MetadataStore(connection)
        self.context_type = self.store.put_context_type(metadata_store_pb2.ContextType(name="pipeline"))
        self.contexts = {}

    def artifact(self, type_name, uri, **properties):
        type_id = self.store.put_artifact_type(metadata_store_pb2.ArtifactType(name=type_name))
        artifact = metadata_store_pb2.Artifact(type_id=type_id, uri=uri)
        for name, value in properties.items():
            field = "int_value" if isinstance(value, int) else "string_value"
            setattr(artifact.custom_properties[name], field, value)
        return self.store.put_artifacts([artifact])[0]

    def execution(self, component, pipeline, events, state=metadata_store_pb2.Execution.COMPLETE):
        """events: [(artifact id, INPUT or OUTPUT, key)]; returns the execution id."""
        type_id = self.store.put_execution_type(metadata_store_pb2.ExecutionType(name=f"tfx.components.{component}"))
        [execution] = self.store.put_executions([metadata_store_pb2.Execution(type_id=type_id, last_known_state=state)])
        for artifact, kind, key in events:
            event = metadata_store_pb2.Event(artifact_id=artifact, execution_id=execution, type=kind)
            event.path.steps.add(key=key)
            self.store.put_events([event])
        if pipeline not in self.contexts:
            [self.contexts[pipeline]] = self.store.put_contexts(
                [metadata_store_pb2.Context(type_id=self.context_type, name=pipeline)])
        self.store.put_attributions_and_associations(
            [], [metadata_store_pb2.Association(execution_id=execution, context_id=self.contexts[pipeline])])
        return execution


def test_the_evaluation_of_a_model_is_the_newest_that_judged_it_as_the_candidate(tmp_path):
    connection = metadata.sqlite_connection(str(tmp_path / "m.sqlite"))
    store = Store(connection)
    model, other = store.artifact("Model", "/r/Trainer/model/3"), store.artifact("Model", "/r/Trainer/model/8")
    for evaluation, candidate, baseline in (("/r/Evaluator/evaluation/4", model, None),
                                            ("/r/Evaluator/evaluation/6", model, None),
                                            ("/r/Evaluator/evaluation/9", other, model)):  # model as the baseline
        events = [(candidate, INPUT, "model"), (store.artifact("ModelEvaluation", evaluation), OUTPUT, "evaluation"),
                  (store.artifact("ModelBlessing", evaluation + "-blessing"), OUTPUT, "blessing")]
        if baseline is not None:
            events.append((baseline, INPUT, "baseline_model"))
        store.execution("Evaluator", "p", events)
    store.execution("Trainer", "p", [(model, OUTPUT, "model")])
    read_only = metadata.sqlite_connection(str(tmp_path / "m.sqlite"), read_only=True)
    assert metadata.evaluation_of_model(read_only, "/r/Trainer/model/3/") == "/r/Evaluator/evaluation/6"
    assert metadata.evaluation_of_model(read_only, "/r/Trainer/model/8") == "/r/Evaluator/evaluation/9"
    assert metadata.evaluation_of_model(read_only, "/r/Trainer/model/5") is None


def test_the_failed_component_is_the_newest_failure(tmp_path):
    connection = metadata.sqlite_connection(str(tmp_path / "m.sqlite"))
    store = Store(connection)
    assert metadata.failed_component(connection, "p") == metadata.UNKNOWN_COMPONENT
    failed = metadata_store_pb2.Execution.FAILED
    store.execution("Transform", "p", [], state=failed)  # an earlier run's failure
    store.execution("Trainer", "p", [], state=failed)
    store.execution("Evaluator", "p", [])  # newer, but it did not fail
    store.execution("Pusher", "p", [], state=metadata_store_pb2.Execution.RUNNING)  # nor has this one, yet
    store.execution("Transform", "another-pipeline", [], state=failed)  # a shared store's other pipeline
    assert metadata.failed_component(connection, "p") == "Trainer"


def test_a_report_never_creates_a_store(tmp_path):
    with pytest.raises(RuntimeError, match="unable to open database file"):
        metadata_store.MetadataStore(metadata.sqlite_connection(str(tmp_path / "none.sqlite"), read_only=True))
    assert not os.path.exists(tmp_path / "none.sqlite")


def _outcome_store(tmp_path, monkeypatch):
    """(config, store, pusher_run(pipeline, n, blessed, **PushedModel properties), the Pusher's output folder)
    for latest_outcome, with a gate report that names its evaluation."""
    monkeypatch.setattr(gate_report, "read_gate_report", lambda uri, blessed, classes: gate_report.GateReport(
        blessed, {"uri": uri}, [] if blessed else ["too few"], {}))
    config = cfg.load_config("quick", overrides={"runtime.pipeline_root": str(tmp_path / "root")})
    assert metadata.latest_outcome(config) is None
    store = Store(metadata.connection_config(config))
    pushed_dir = tmp_path / "root" / "VersionedPusher" / "pushed_model"

    def pusher_run(pipeline, n, blessed, state=metadata_store_pb2.Execution.COMPLETE, **pushed):
        events = [(store.artifact("Model", f"/r/Trainer/model/{n}"), INPUT, "model"),
                  (store.artifact("ModelBlessing", f"/r/blessing/{n}", blessed=blessed), INPUT, "model_blessing"),
                  (store.artifact("ModelEvaluation", f"/r/evaluation/{n}"), INPUT, "evaluation"),
                  (store.artifact("PushedModel", str(pushed_dir / str(n)), **pushed), OUTPUT, "pushed_model")]
        store.execution("VersionedPusher", pipeline, events, state)

    return config, store, pusher_run, pushed_dir


def test_the_latest_outcome_is_this_pipelines_newest_pushers(tmp_path, monkeypatch):
    config, _, pusher_run, pushed_dir = _outcome_store(tmp_path, monkeypatch)
    pusher_run(config.runtime.pipeline_name, 1, 0, pushed=0, reason="NOT BLESSED: too few")
    pusher_run(config.runtime.pipeline_name, 2, 1, pushed=1, pushed_destination="/srv/5", reason="pushed")
    pusher_run("another-pipeline", 3, 0, pushed=0, reason="NOT BLESSED")
    outcome = metadata.latest_outcome(config)
    assert (outcome.blessed, outcome.pushed, outcome.destination, outcome.reason) == (True, True, "/srv/5", "pushed")
    assert (outcome.model_uri, outcome.evaluation_uri) == ("/r/Trainer/model/2", "/r/evaluation/2")
    assert outcome.report.metrics == {"uri": "/r/evaluation/2"}
    assert outcome.decision_record == ""  # a run from before decision records
    os.makedirs(pushed_dir / "4")
    (pushed_dir / "4" / DECISION_RECORD).write_text("{}")
    pusher_run(config.runtime.pipeline_name, 4, 0, pushed=0, reason="NOT BLESSED: too few")
    outcome = metadata.latest_outcome(config)
    assert (outcome.blessed, outcome.pushed, outcome.destination) == (False, False, "")
    assert (outcome.report.blessed, outcome.report.failures) == (False, ["too few"])  # read as the run judged it
    assert outcome.decision_record == f"{pushed_dir / '4'}/{DECISION_RECORD}"


def test_a_pusher_that_failed_or_still_runs_is_not_the_latest_outcome(tmp_path, monkeypatch):
    """Such a Pusher has its inputs but no PushedModel (a KeyError): the newest that completed is the outcome."""
    config, store, pusher_run, _ = _outcome_store(tmp_path, monkeypatch)
    name = config.runtime.pipeline_name
    for n, state in ((3, metadata_store_pb2.Execution.FAILED), (4, metadata_store_pb2.Execution.RUNNING)):
        store.execution("VersionedPusher", name, [(store.artifact("Model", f"/r/Trainer/model/{n}"), INPUT, "model")],
                        state=state)
    assert metadata.latest_outcome(config) is None  # none completed
    pusher_run(name, 5, 1, pushed=1, pushed_destination="/srv/6", reason="pushed")
    store.execution("VersionedPusher", name, [(store.artifact("Model", "/r/Trainer/model/7"), INPUT, "model")],
                    state=metadata_store_pb2.Execution.FAILED)
    store.execution("Trainer", name, [(store.artifact("Model", "/r/Trainer/model/9"), OUTPUT, "model")])  # not a Pusher
    outcome = metadata.latest_outcome(config)
    assert (outcome.model_uri, outcome.destination) == ("/r/Trainer/model/5", "/srv/6")
    # A re-run whose Pusher TFX took from its cache completed too: its outcome is the newest.
    pusher_run(name, 8, 1, metadata_store_pb2.Execution.CACHED, pushed=1, pushed_destination="/srv/8", reason="pushed")
    assert metadata.latest_outcome(config).model_uri == "/r/Trainer/model/8"


def test_the_sqlite_store_is_a_local_file(tmp_path):
    def path(**runtime):
        return metadata.sqlite_path(cfg.load_config("quick", overrides={f"runtime.{k}": v for k, v in runtime.items()}))

    assert path(pipeline_root=str(tmp_path)) == str(tmp_path / "metadata.sqlite")
    assert path(pipeline_root=f"file://{tmp_path}") == str(tmp_path / "metadata.sqlite")
    assert path(pipeline_root="gs://b/root", metadata_path=f"file://{tmp_path}/m.sqlite") == f"{tmp_path}/m.sqlite"
    assert path(pipeline_root=str(tmp_path), metadata_path="kept/m.sqlite") == "kept/m.sqlite"


def test_the_mysql_password_is_the_configs_else_the_environments(monkeypatch):
    monkeypatch.setenv(metadata.MYSQL_PASSWORD_ENV, "from-env")

    def connection(**runtime):
        overrides = {"runtime.mysql_host": "db.internal", "runtime.mysql_user": "cxr"}
        return metadata.connection_config(cfg.load_config("quick", overrides={
            **overrides, **{f"runtime.{k}": v for k, v in runtime.items()}})).mysql

    mysql = connection(mysql_password="from-config", mysql_port=3307, mysql_database="cxr_runs")
    assert (mysql.host, mysql.port, mysql.database, mysql.user, mysql.password) == (
        "db.internal", 3307, "cxr_runs", "cxr", "from-config")
    assert connection().password == "from-env"


@pytest.mark.parametrize("runtime, message", [
    ({"pipeline_root": "/r", "metadata_path": "gs://b/m.sqlite"},
     "^runtime.metadata_path 'gs://b/m.sqlite' is not a local file, which ML Metadata's SQLite store must be"),
    ({"pipeline_root": "s3://b/root"}, "^runtime.pipeline_root 's3://b/root' is a bucket, where ML Metadata's SQLite"),
])
def test_a_bucket_is_no_place_for_the_sqlite_store(runtime, message):
    config = cfg.load_config("quick", overrides={f"runtime.{k}": v for k, v in runtime.items()})
    for check in (metadata.sqlite_path, metadata.check_connection, metadata.connection_config):
        with pytest.raises(cfg.ConfigError, match=message):
            check(config)


def _sqlite_config(tmp_path, content=None):
    store = tmp_path / "kept" / "m.sqlite"
    if content is not None:
        store.parent.mkdir()
        store.write_bytes(content)
    return cfg.load_config("quick", overrides={"runtime.pipeline_root": str(tmp_path / "root"),
                                                "runtime.metadata_path": str(store)}), store


@pytest.mark.parametrize("content", [b"notes, not a store", b"SQLite format 3 notes", b"SQLite format"])
def test_a_file_that_is_not_an_sqlite_database_is_refused_before_the_run(tmp_path, content):
    config, store = _sqlite_config(tmp_path, content)
    with pytest.raises(cfg.ConfigError, match=f"^ML Metadata's store '{store}' is not an SQLite database: name a new"):
        metadata.check_connection(config)
    assert store.read_bytes() == content


def test_a_new_empty_or_earlier_sqlite_store_is_used(tmp_path):
    config, store = _sqlite_config(tmp_path)
    metadata.check_connection(config)  # none yet: ML Metadata makes it
    metadata_store.MetadataStore(metadata.connection_config(config))  # its folder is made for it
    metadata.check_connection(config)  # an earlier run's store
    store.write_bytes(b"")
    metadata.check_connection(config)  # empty: SQLite makes it a store


def _mysql_config(port):
    return cfg.load_config("quick", overrides={"runtime.mysql_host": "127.0.0.1", "runtime.mysql_port": str(port),
                                               "runtime.mysql_user": "cxr", "runtime.mysql_database": "cxr_runs"})


def test_an_unreachable_mysql_is_one_line_with_the_systems_reason():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(cfg.ConfigError, match=rf"^ML Metadata: cannot reach MySQL/MariaDB at 127\.0\.0\.1:{port} "
                                              r"\(runtime.mysql_host, runtime.mysql_port\): Connection refused$"):
        metadata.check_connection(_mysql_config(port))


def test_a_refused_mysql_login_is_one_line_and_the_stores_native_hint_is_silenced(monkeypatch, capfd):
    class Reached:
        def close(self):
            pass

    tried = []

    def refusing(connection):
        tried.append(connection.mysql)
        os.write(2, b"MySQL 8 authentication hint\n")  # what MLMD's C++ prints on any failure
        raise RuntimeError("mysql_real_connect failed: errno: 1045, error: Access denied\n")

    monkeypatch.setattr(metadata.socket, "create_connection", lambda address, timeout: Reached())
    monkeypatch.setattr(metadata.metadata_store, "MetadataStore", refusing)
    with pytest.raises(cfg.ConfigError) as info:
        metadata.check_connection(_mysql_config(3306))
    assert str(info.value) == (
        "ML Metadata: MySQL/MariaDB at 127.0.0.1:3306 refused user 'cxr' with database 'cxr_runs': check "
        "runtime.mysql_user, the password (runtime.mysql_password or COVID_CXR_MYSQL_PASSWORD) and that the user "
        "may create that database (mysql_real_connect failed: errno: 1045, error: Access denied)")
    assert [(c.host, c.port, c.database) for c in tried] == [("127.0.0.1", 3306, "cxr_runs")]
    assert "hint" not in capfd.readouterr().err
    os.write(2, b"after\n")  # and stderr is back
    assert capfd.readouterr().err == "after\n"
