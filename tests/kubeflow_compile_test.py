"""`covid-cxr compile`: a KFP v2 spec that a container can actually run."""
import json

from click.testing import CliRunner

from covid_cxr import cli, kubeflow_runner

EXPECTED_TASKS = {"ImportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "SchemaGate",
                  "Transform", "Tuner", "Trainer", "latest_blessed_model_resolver", "Evaluator", "VersionedPusher"}


def _compile(tmp_path, *extra):
    out = tmp_path / "spec.json"
    result = CliRunner().invoke(cli.main, [
        "compile", "--image", "registry.example/covid-cxr:1", "--output", str(out),
        "--data", "gs://bucket/curated", "--pipeline-root", "gs://bucket/root", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), out.read_text()


def test_compiled_spec_has_the_whole_dag_on_the_given_image(tmp_path):
    spec, text = _compile(tmp_path)
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert EXPECTED_TASKS <= {name.split("-")[0] for name in tasks} | set(tasks), sorted(tasks)
    assert "registry.example/covid-cxr:1" in text
    assert "gs://bucket/curated" in text


def test_schema_is_read_from_the_image_not_from_this_checkout(tmp_path):
    _, text = _compile(tmp_path)
    assert kubeflow_runner.IMAGE_SCHEMA_FILE in text
    assert "/pipeline/schema/schema.pbtxt" in text
    _, text = _compile(tmp_path, "--set", "data.schema_file=gs://bucket/schema.pbtxt")
    assert "gs://bucket/schema.pbtxt" in text and kubeflow_runner.IMAGE_SCHEMA_FILE not in text


def test_offline_weights_on_this_machine_are_left_out_of_the_spec_with_a_note(tmp_path):
    local = str(tmp_path / "weights")
    result = CliRunner().invoke(cli.main, [
        "compile", "--image", "registry.example/covid-cxr:1", "--output", str(tmp_path / "spec.json"),
        "--data", "gs://bucket/curated", "--set", f"model.weights_dir={local}"])
    assert result.exit_code == 0, result.output
    assert f"note: model.weights_dir {local!r} is on this machine" in result.output
    assert local not in (tmp_path / "spec.json").read_text()
    _, text = _compile(tmp_path, "--set", "model.weights_dir=gs://bucket/weights")
    assert "gs://bucket/weights" in text  # a bucket the containers can read is kept


def test_a_weights_file_on_this_machine_is_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(cli.main, [
        "compile", "--image", "registry.example/covid-cxr:1", "--output", str(tmp_path / "spec.json"),
        "--data", "gs://bucket/curated", "--set", "model.weights=/home/me/mobilenet.h5"])
    assert result.exit_code == 2, result.output
    assert "model.weights '/home/me/mobilenet.h5' is a file on this machine" in result.output
    assert not (tmp_path / "spec.json").exists()


def test_a_pinned_onednn_setting_tells_which_variable_the_image_must_set(tmp_path):
    for setting, value in (("on", "1"), ("off", "0")):
        result = CliRunner().invoke(cli.main, [
            "compile", "--image", "registry.example/covid-cxr:1", "--output", str(tmp_path / "spec.json"),
            "--data", "gs://bucket/curated", "--set", f"training.onednn={setting}"])
        assert result.exit_code == 0, result.output
        assert f"note: training.onednn={setting}: the image must set TF_ENABLE_ONEDNN_OPTS={value} " in result.output
    result = CliRunner().invoke(cli.main, [
        "compile", "--image", "registry.example/covid-cxr:1", "--output", str(tmp_path / "spec.json"),
        "--data", "gs://bucket/curated", "--set", "training.onednn=auto"])
    assert result.exit_code == 0 and "note: training.onednn" not in result.output, result.output
