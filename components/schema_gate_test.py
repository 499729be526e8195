"""ImportSchema keys TFX's cache on the schema's content and refuses a file edited after the DAG was built."""
import os
import re

import pytest
from tfx import v1 as tfx

from covid_cxr.components.schema_gate import SCHEMA_FILE_NAME, ImportSchema, SchemaChangedError, SchemaFileError
from covid_cxr.pipeline import fingerprints

SCHEMA = 'feature { name: "label" type: BYTES }\n'


def _schema_artifact(tmp_path):
    artifact = tfx.types.standard_artifacts.Schema()
    artifact.uri = str(tmp_path / "out")
    os.makedirs(artifact.uri)
    return artifact


def test_the_schema_is_imported_as_written(tmp_path):
    path = tmp_path / "schema.pbtxt"
    path.write_text(SCHEMA)
    out = _schema_artifact(tmp_path)
    ImportSchema.test_call(schema_file=str(path), content_sha256=fingerprints.file_fingerprint(str(path)), schema=out)
    assert (tmp_path / "out" / SCHEMA_FILE_NAME).read_text() == SCHEMA


def test_a_schema_the_compiling_machine_could_not_read_is_imported_unchecked(tmp_path):
    """kubeflow_runner: a schema only the container image holds has no hash in the spec ("")."""
    path = tmp_path / "schema.pbtxt"
    path.write_text(SCHEMA)
    ImportSchema.test_call(schema_file=str(path), content_sha256="", schema=_schema_artifact(tmp_path))
    assert (tmp_path / "out" / SCHEMA_FILE_NAME).read_text() == SCHEMA


def test_a_schema_edited_after_the_dag_was_built_is_refused(tmp_path):
    path = tmp_path / "schema.pbtxt"
    path.write_text(SCHEMA)
    built_with = fingerprints.file_fingerprint(str(path))
    path.write_text(SCHEMA + 'feature { name: "age" type: INT }\n')
    with pytest.raises(SchemaChangedError, match="changed after the pipeline was built"):
        ImportSchema.test_call(schema_file=str(path), content_sha256=built_with, schema=_schema_artifact(tmp_path))
    assert not (tmp_path / "out" / SCHEMA_FILE_NAME).exists()


def _anomalies(tmp_path, per_split):
    """An ExampleAnomalies artifact; per_split maps a split to its Anomalies proto, or None for no file."""
    from tfx.types import standard_artifact_utils

    artifact = tfx.types.standard_artifacts.ExampleAnomalies()
    artifact.uri = str(tmp_path / "anomalies")
    artifact.split_names = standard_artifact_utils.encode_split_names(list(per_split))
    for split, found in per_split.items():
        os.makedirs(os.path.join(artifact.uri, f"Split-{split}"))
        if found is not None:
            with open(os.path.join(artifact.uri, f"Split-{split}", "SchemaDiff.pb"), "wb") as f:
                f.write(found.SerializeToString())
    return artifact


def _gate_artifacts(tmp_path):
    """The reviewed schema SchemaGate reads, and the artifact it copies it to when the data passes."""
    schema = _schema_artifact(tmp_path)
    (tmp_path / "out" / SCHEMA_FILE_NAME).write_text(SCHEMA)
    validated = tfx.types.standard_artifacts.Schema()
    validated.uri = str(tmp_path / "validated")
    return schema, validated


def test_the_gate_passes_clean_splits_and_stops_on_anomalies_or_unvalidated_splits(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from covid_cxr.components.schema_gate import DataValidationError, SchemaGate

    schema, validated = _gate_artifacts(tmp_path)
    clean = anomalies_pb2.Anomalies()
    artifact = _anomalies(tmp_path / "a", {"train": clean, "test": clean})
    SchemaGate.test_call(schema=schema, anomalies=artifact, validated_schema=validated)
    assert (tmp_path / "validated" / SCHEMA_FILE_NAME).read_text() == SCHEMA

    bad = anomalies_pb2.Anomalies()
    bad.anomaly_info["label"].short_description = "Unexpected string values"
    artifact = _anomalies(tmp_path / "b", {"train": clean, "test": bad})
    with pytest.raises(DataValidationError, match=r"1 anomaly: split test: feature label: Unexpected string values$"):
        SchemaGate.test_call(schema=schema, anomalies=artifact, validated_schema=validated)
    # Every anomaly of every split is listed, not just the first.
    artifact = _anomalies(tmp_path / "f", {"train": bad, "test": bad})
    with pytest.raises(DataValidationError, match=r"^data validation failed, 2 anomalies: split train: feature label: "
                                                  r"Unexpected string values; split test: feature label: Unexpected"):
        SchemaGate.test_call(schema=schema, anomalies=artifact, validated_schema=validated)
    # A split without its anomalies file was never validated: the gate fails closed.
    artifact = _anomalies(tmp_path / "c", {"train": clean, "test": None})
    with pytest.raises(DataValidationError, match="split test: no SchemaDiff.pb: this split was not validated"):
        SchemaGate.test_call(schema=schema, anomalies=artifact, validated_schema=validated)


def test_the_gate_stops_on_dataset_level_anomalies_and_on_an_artifact_that_validated_no_split(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from covid_cxr.components.schema_gate import DataValidationError, SchemaGate

    schema, validated = _gate_artifacts(tmp_path)
    # e.g. a split with far fewer examples than the schema expects: no feature is at fault
    few = anomalies_pb2.Anomalies()
    few.dataset_anomaly_info.short_description = "Low num examples in dataset"
    with pytest.raises(DataValidationError, match="^data validation failed, 1 anomaly: split eval: dataset: Low num examples in dataset$"):
        SchemaGate.test_call(schema=schema, anomalies=_anomalies(tmp_path / "d", {"train": anomalies_pb2.Anomalies(), "eval": few}),
                             validated_schema=validated)
    with pytest.raises(DataValidationError, match="no split was validated"):
        SchemaGate.test_call(schema=schema, anomalies=_anomalies(tmp_path / "e", {}), validated_schema=validated)
    assert not (tmp_path / "validated" / SCHEMA_FILE_NAME).exists()


@pytest.mark.parametrize("content, message", [
    (b'feature { name: "label" type: BYTES\n', r"is not a schema \(a tensorflow_metadata Schema in text format\): "
                                              r"1:31 : Expected \"}\"\.$"),  # the closing brace lost in an edit
    (b"root:x:0:0:root:/root:/bin/bash\n", r"is not a schema \(.*\): 1:1 : Message type .* has no field named \"root\"\.$"),
    (b"\xff\xfe\x00", "is not a schema: not UTF-8 text$"),
    (b"", "is an empty schema: it declares no feature$"),
    (b"# reviewed\n", "is an empty schema: it declares no feature$")],
    ids=["unbalanced", "another-file", "binary", "empty", "comment-only"])
def test_a_schema_that_does_not_parse_is_refused_by_name_and_not_imported(tmp_path, content, message):
    path = tmp_path / "schema.pbtxt"
    path.write_bytes(content)
    with pytest.raises(SchemaFileError, match=f"^{re.escape(str(path))} {message}") as info:
        ImportSchema.test_call(schema_file=str(path), content_sha256=fingerprints.file_fingerprint(str(path)),
                               schema=_schema_artifact(tmp_path))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / SCHEMA_FILE_NAME).exists()


def test_an_anomaly_without_a_short_description_is_named_by_its_description(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from covid_cxr.components.schema_gate import read_split_anomalies

    found = anomalies_pb2.Anomalies()
    found.anomaly_info["label"].short_description = "Unexpected string values"
    found.anomaly_info["age"].description = "The feature was present in fewer examples than expected."
    found.dataset_anomaly_info.description = "The dataset has 3 examples, fewer than 10."
    artifact = _anomalies(tmp_path, {"test": found})
    assert read_split_anomalies(os.path.join(artifact.uri, "Split-test")) == [
        "feature age: The feature was present in fewer examples than expected.",
        "feature label: Unexpected string values", "dataset: The dataset has 3 examples, fewer than 10."]  # by name


def test_the_pre_run_check_reads_the_content_it_is_given_and_names_the_setting(tmp_path):
    """`run` / `compile` hand over the content they fingerprinted: that, not the file read again, is checked."""
    from covid_cxr.components.schema_gate import check_schema_file

    missing = str(tmp_path / "only-in-the-image.pbtxt")
    check_schema_file(missing, SCHEMA.encode())  # never read: it need not exist here
    path = tmp_path / "schema.pbtxt"
    path.write_text(SCHEMA)
    with pytest.raises(SchemaFileError, match=f"^data.schema_file: {re.escape(str(path))} is an empty schema"):
        check_schema_file(str(path), b"# reviewed\n")
    check_schema_file(str(path))  # read from the file when no content is given
    path.write_text("")
    with pytest.raises(SchemaFileError, match=f"^data.schema_file: {re.escape(str(path))} is an empty schema"):
        check_schema_file(str(path))


def test_a_schema_edited_after_the_build_is_named_with_both_hashes_in_order(tmp_path):
    path = tmp_path / "schema.pbtxt"
    path.write_text(SCHEMA)
    built_with = fingerprints.file_fingerprint(str(path))
    path.write_text(SCHEMA + "# reviewed again\n")
    found = fingerprints.file_fingerprint(str(path))
    with pytest.raises(SchemaChangedError, match=re.escape(f"(sha256 {found[:12]}, built with {built_with[:12]});")):
        ImportSchema.test_call(schema_file=str(path), content_sha256=built_with, schema=_schema_artifact(tmp_path))


def test_an_anomaly_with_both_descriptions_is_named_by_its_short_one(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from covid_cxr.components.schema_gate import read_split_anomalies

    found = anomalies_pb2.Anomalies()
    for info in (found.anomaly_info["label"], found.dataset_anomaly_info):
        info.short_description, info.description = "Short", "The long description of the anomaly."
    artifact = _anomalies(tmp_path, {"test": found})
    assert read_split_anomalies(os.path.join(artifact.uri, "Split-test")) == ["feature label: Short", "dataset: Short"]


def test_a_gate_run_again_replaces_the_schema_it_passed_before(tmp_path):
    """A retried SchemaGate writes to the same output: the reviewed schema replaces what lies there."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from covid_cxr.components.schema_gate import SchemaGate

    schema, validated = _gate_artifacts(tmp_path)
    os.makedirs(validated.uri)
    (tmp_path / "validated" / SCHEMA_FILE_NAME).write_text("# an earlier attempt's\n")
    SchemaGate.test_call(schema=schema, anomalies=_anomalies(tmp_path / "a", {"train": anomalies_pb2.Anomalies()}),
                         validated_schema=validated)
    assert (tmp_path / "validated" / SCHEMA_FILE_NAME).read_text() == SCHEMA


def test_anomalies_are_listed_by_feature_name_whatever_order_the_file_holds_them_in(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from covid_cxr.components.schema_gate import read_split_anomalies

    found = anomalies_pb2.Anomalies()
    names = ["zeta", "label", "age", "mid", "b", "yy"]  # a protobuf map's own order is its hash's
    for name in names:
        found.anomaly_info[name].short_description = "Unexpected"
    artifact = _anomalies(tmp_path, {"test": found})
    assert read_split_anomalies(os.path.join(artifact.uri, "Split-test")) == [
        f"feature {name}: Unexpected" for name in sorted(names)]
