"""The reviewed schema's way into the DAG, and the gate that stops the run on data anomalies.

ImportSchema: ImportSchemaGen records only the schema file's path, so an edit of the file in place
was answered from TFX's cache with the old schema. This one also takes the content's SHA-256 (taken
when the DAG is built), which keys the cache and is checked when it runs.

SchemaGate: TFX's ExampleValidator only *records* anomalies. This component passes the reviewed
schema on to Transform only when every split is anomaly-free, so bad data can never train or reach
the gate.
"""

import hashlib
import os

import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import standard_artifact_utils
from tfx.utils import io_utils
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from covid_cxr.messages import first_line

ANOMALIES_FILE = "SchemaDiff.pb"
SCHEMA_FILE_NAME = "schema.pbtxt"  # where ImportSchemaGen, and so Transform, expect it in a Schema artifact


class DataValidationError(RuntimeError):
    """Raised with a one-line, human-readable list of the anomalies found."""


class SchemaChangedError(RuntimeError):
    """The schema file's content is not the content the DAG was built with."""


class SchemaFileError(ValueError):
    """The schema file is not a tensorflow_metadata Schema in text format, or declares no feature."""


def parse_schema(content: bytes, path: str) -> schema_pb2.Schema:
    """The Schema in ``content``, or a SchemaFileError naming ``path`` (protobuf's own error names no file)."""
    try:
        schema = text_format.Parse(content.decode("utf-8"), schema_pb2.Schema())
    except UnicodeDecodeError:
        raise SchemaFileError(f"{path} is not a schema: not UTF-8 text") from None
    except text_format.ParseError as e:
        raise SchemaFileError(f"{path} is not a schema (a tensorflow_metadata Schema in text format): "
                              f"{first_line(e)}") from None
    if not schema.feature:  # validation would then report every feature of the data as unexpected
        raise SchemaFileError(f"{path} is an empty schema: it declares no feature")
    return schema


def check_schema_file(path: str, content: bytes | None = None) -> None:
    """ImportSchema's check of ``data.schema_file`` (``path``, readable here; its ``content`` when read
    already), made before a run (`run`, `demo`, `compile`): the component makes it after ImportExampleGen
    and StatisticsGen have read the data."""
    try:
        parse_schema(io_utils.read_bytes_file(path) if content is None else content, path)
    except SchemaFileError as e:
        raise SchemaFileError(f"data.schema_file: {e}") from None


@tfx.dsl.components.component
def ImportSchema(
    schema_file: tfx.dsl.components.Parameter[str],
    content_sha256: tfx.dsl.components.Parameter[str],
    schema: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Schema],
) -> None:
    content = io_utils.read_bytes_file(schema_file)
    found = hashlib.sha256(content).hexdigest()
    if content_sha256 and found != content_sha256:
        raise SchemaChangedError(f"{schema_file} changed after the pipeline was built (sha256 {found[:12]}, "
                                 f"built with {content_sha256[:12]}); build or compile the pipeline again")
    parse_schema(content, schema_file)  # a broken schema fails here, by name
    io_utils.write_bytes_file(os.path.join(schema.uri, SCHEMA_FILE_NAME), content)


def read_split_anomalies(split_dir: str) -> list:
    """['feature label: Unexpected string values (...)', ...] from one split of an anomalies artifact."""
    path = os.path.join(split_dir, ANOMALIES_FILE)
    if not tf.io.gfile.exists(path):  # ExampleValidator writes one per split, empty or not
        return [f"no {ANOMALIES_FILE}: this split was not validated"]
    found = anomalies_pb2.Anomalies()
    found.ParseFromString(io_utils.read_bytes_file(path))
    problems = [f"feature {name}: {info.short_description or info.description}"
                for name, info in sorted(found.anomaly_info.items())]
    if found.HasField("dataset_anomaly_info"):
        info = found.dataset_anomaly_info
        problems.append(f"dataset: {info.short_description or info.description}")
    return problems


def describe_anomalies(artifact) -> list:
    """['split test: feature label: Unexpected string values (...)', ...] for every anomaly found
    (an artifact that names no split at all validated nothing: that is a problem too)."""
    splits = standard_artifact_utils.decode_split_names(artifact.split_names)
    if not splits:
        return ["no split was validated"]
    return [
        f"split {split}: {problem}"
        for split in splits
        for problem in read_split_anomalies(standard_artifact_utils.get_split_uri([artifact], split))
    ]


@tfx.dsl.components.component
def SchemaGate(
    schema: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Schema],
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    validated_schema: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Schema],
) -> None:
    problems = describe_anomalies(anomalies)
    if problems:
        raise DataValidationError(
            f"data validation failed, {len(problems)} anomal{'y' if len(problems) == 1 else 'ies'}: "
            + "; ".join(problems)
        )
    source = os.path.join(schema.uri, SCHEMA_FILE_NAME)
    io_utils.copy_file(source, os.path.join(validated_schema.uri, SCHEMA_FILE_NAME), overwrite=True)
