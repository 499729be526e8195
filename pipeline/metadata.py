"""ML Metadata: where runs are recorded (SQLite by default, MySQL/MariaDB in production), and what
the latest run decided (blessed? pushed where? which threshold failed?)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from typing import Optional

import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from covid_cxr.evaluation import gate_report
from covid_cxr.evaluation.artifacts import DECISION_RECORD
from covid_cxr.pipeline.config import ConfigError, PipelineConfig

MYSQL_PASSWORD_ENV = "COVID_CXR_MYSQL_PASSWORD"  # used when runtime.mysql_password is empty


def connection_config(config: PipelineConfig) -> metadata_store_pb2.ConnectionConfig:
    runtime = config.runtime
    if runtime.mysql_host:
        # The environment keeps the password out of config files and off command lines (`ps`).
        password = runtime.mysql_password or os.environ.get(MYSQL_PASSWORD_ENV, "")
        return tfx.orchestration.metadata.mysql_metadata_connection_config(
            host=runtime.mysql_host, port=runtime.mysql_port, database=runtime.mysql_database,
            username=runtime.mysql_user, password=password)
    path = sqlite_path(config)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return sqlite_connection(path)


def sqlite_path(config: PipelineConfig) -> str:
    """Where the SQLite store is kept: ``runtime.metadata_path``, else in the pipeline root when that
    is local. SQLite cannot open a bucket path, and "gs://b/root" would become a folder "./gs:/b/root"
    of whatever directory the command runs in, each with its own baseline and cache."""
    runtime = config.runtime
    if runtime.metadata_path:
        path = _on_this_machine(runtime.metadata_path)
        if path is None:
            raise ConfigError(f"runtime.metadata_path {runtime.metadata_path!r} is not a local file, which ML "
                              "Metadata's SQLite store must be (or use runtime.mysql_host)")
        return path
    root = _on_this_machine(runtime.pipeline_root)
    if root is None:
        raise ConfigError(f"runtime.pipeline_root {runtime.pipeline_root!r} is a bucket, where ML Metadata's SQLite "
                          "store cannot be kept: pass --set runtime.metadata_path=<a local file, kept between runs> "
                          "(the baseline model and the cache are looked up there) or use runtime.mysql_host")
    return os.path.join(root, "metadata.sqlite")


def _on_this_machine(path: str) -> Optional[str]:
    """``path`` as a path on this machine's disk (``file://`` dropped), or None for a bucket (gs://...)."""
    if "://" in path and not path.startswith("file://"):
        return None
    return path.removeprefix("file://")


@contextlib.contextmanager
def _native_stderr_silenced():
    """MLMD's C++ logs, on any MySQL failure, a hint about MySQL 8 authentication that misleads more
    than it helps; the one-line error below says what to check instead."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_connection(config: PipelineConfig) -> None:
    """Fails early, in one line, when ML Metadata's MySQL / MariaDB cannot be used, or SQLite has no local path
    or a file there that is not an SQLite database (an empty one is: SQLite makes it a store)."""
    runtime = config.runtime
    if not runtime.mysql_host:
        store = sqlite_path(config)
        if os.path.isfile(store) and os.path.getsize(store):
            with open(store, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":  # ML Metadata's error quotes its CREATE TABLE query, minutes in
                    raise ConfigError(f"ML Metadata's store {store!r} is not an SQLite database: name a new file or an "
                                      "earlier run's store (runtime.metadata_path; by default <pipeline_root>/metadata.sqlite)")
        return
    where = f"MySQL/MariaDB at {runtime.mysql_host}:{runtime.mysql_port}"
    try:
        socket.create_connection((runtime.mysql_host, runtime.mysql_port), timeout=10).close()
    except OSError as e:
        raise ConfigError(f"ML Metadata: cannot reach {where} (runtime.mysql_host, runtime.mysql_port): "
                          f"{e.strerror or e}") from None
    try:
        with _native_stderr_silenced():
            metadata_store.MetadataStore(connection_config(config))
    except RuntimeError as e:
        raise ConfigError(
            f"ML Metadata: {where} refused user {runtime.mysql_user!r} with database {runtime.mysql_database!r}: "
            f"check runtime.mysql_user, the password (runtime.mysql_password or {MYSQL_PASSWORD_ENV}) and that "
            f"the user may create that database ({str(e).strip()})") from None


def sqlite_connection(path: str, read_only: bool = False) -> metadata_store_pb2.ConnectionConfig:
    config = tfx.orchestration.metadata.sqlite_metadata_connection_config(path)
    if read_only:  # readers (reports) must never create or change a run's store
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return config


@dataclasses.dataclass
class RunOutcome:
    blessed: bool
    pushed: bool
    destination: str  # the serving version directory holding this model ("" when not pushed)
    reason: str
    model_uri: str
    evaluation_uri: str
    report: gate_report.GateReport
    decision_record: str = ""  # the Pusher's record of the gate's decision ("" when it wrote none: older runs)


UNKNOWN_COMPONENT = "a component"  # how a failure is named when the store names no failed component


def _pipeline_executions(store, pipeline_name: str) -> list:
    """The executions of this pipeline only: a shared (MySQL) store holds other pipelines' runs too."""
    context = store.get_context_by_type_and_name("pipeline", pipeline_name)
    return store.get_executions_by_context(context.id) if context is not None else []


# A Pusher that failed, is still running (another run in a shared store) or was stopped (Ctrl-C, SIGTERM: TFX
# leaves its execution RUNNING) has no outputs to read.
_FINISHED = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)


def _latest_pusher_execution(store, pipeline_name: str):
    executions = [e for e in _pipeline_executions(store, pipeline_name)
                  if e.last_known_state in _FINISHED
                  and store.get_execution_types_by_id([e.type_id])[0].name.endswith("VersionedPusher")]
    return max(executions, key=lambda e: e.id) if executions else None


def failed_component(connection: metadata_store_pb2.ConnectionConfig, pipeline_name: str) -> str:
    """The component type of this pipeline's newest FAILED execution (UNKNOWN_COMPONENT if none is recorded)."""
    store = metadata_store.MetadataStore(connection)
    failed = [e for e in _pipeline_executions(store, pipeline_name)
              if e.last_known_state == metadata_store_pb2.Execution.FAILED]
    if not failed:
        return UNKNOWN_COMPONENT
    newest = max(failed, key=lambda e: e.id)
    return store.get_execution_types_by_id([newest.type_id])[0].name.rsplit(".", 1)[-1]


def evaluation_of_model(connection: metadata_store_pb2.ConnectionConfig, model_uri: str) -> Optional[str]:
    """URI of the newest Evaluator output that judged `model_uri` as its candidate, or None.

    Newer runs (a refused candidate, say) have newer evaluations: a report on a model must show its own.
    """
    store = metadata_store.MetadataStore(connection)
    models = [a.id for a in store.get_artifacts_by_uri(model_uri.rstrip("/"))]
    # As the candidate ("model"), not as another candidate's baseline ("baseline_model").
    executions = {e.execution_id for e in store.get_events_by_artifact_ids(models)
                  if e.type == metadata_store_pb2.Event.INPUT and e.path.steps and e.path.steps[0].key == "model"}
    evaluations = [a for e in store.get_events_by_execution_ids(sorted(executions))
                   if e.type == metadata_store_pb2.Event.OUTPUT
                   for a in store.get_artifacts_by_id([e.artifact_id])
                   if store.get_artifact_types_by_id([a.type_id])[0].name == "ModelEvaluation"]
    return max(evaluations, key=lambda a: a.id).uri if evaluations else None


def latest_outcome(config: PipelineConfig) -> Optional[RunOutcome]:
    """What the newest Pusher execution of this pipeline that completed saw and did; None if none did."""
    store = metadata_store.MetadataStore(connection_config(config))
    execution = _latest_pusher_execution(store, config.runtime.pipeline_name)
    if execution is None:
        return None
    events = store.get_events_by_execution_ids([execution.id])
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    by_type = {}
    for event in events:
        artifact = artifacts[event.artifact_id]
        by_type[store.get_artifact_types_by_id([artifact.type_id])[0].name] = artifact
    blessing, evaluation = by_type["ModelBlessing"], by_type["ModelEvaluation"]
    pushed = by_type["PushedModel"]

    def prop(artifact, name):
        value = artifact.custom_properties.get(name)
        if value is None:
            return None
        return value.int_value if value.HasField("int_value") else value.string_value

    blessed = bool(prop(blessing, "blessed"))
    decision_record = f"{pushed.uri.rstrip('/')}/{DECISION_RECORD}"
    return RunOutcome(
        blessed=blessed,
        pushed=bool(prop(pushed, "pushed")),
        destination=prop(pushed, "pushed_destination") or "",
        reason=prop(pushed, "reason") or "",
        model_uri=by_type["Model"].uri,
        evaluation_uri=evaluation.uri,
        report=gate_report.read_gate_report(evaluation.uri, blessed, config.task.classes),
        decision_record=decision_record if tf.io.gfile.exists(decision_record) else "",
    )
