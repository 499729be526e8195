"""`covid-cxr compile`: a KFP v2 spec that a container can actually run."""
import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from covid_cxr import cli, kubeflow_runner
from covid_cxr.pipeline import config as cfg
from covid_cxr.pipeline import pipeline
from covid_cxr.trainer import training

EXPECTED_TASKS = {"ImportExampleGen", "StatisticsGen", "ImportSchema", "ExampleValidator", "SchemaGate",
                  "Transform", "Tuner", "Trainer", "latest_blessed_model_resolver", "Evaluator", "VersionedPusher"}
BUCKETS = ("--data", "gs://bucket/curated", "--pipeline-root", "gs://bucket/root", "--serving-dir", "gs://bucket/serving")


def _compile(tmp_path, *extra):
    out = tmp_path / "spec.json"
    result = CliRunner().invoke(cli.main, [
        "compile", "--image", "registry.example/covid-cxr:1", "--output", str(out), *BUCKETS, *extra])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), out.read_text()


def test_compiled_spec_has_the_whole_dag_on_the_given_image(tmp_path):
    spec, text = _compile(tmp_path)
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert EXPECTED_TASKS <= {name.split("-")[0] for name in tasks} | set(tasks), sorted(tasks)
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    images = {name: e["container"]["image"] for name, e in executors.items() if "container" in e}
    assert len(images) >= 10 and set(images.values()) == {"registry.example/covid-cxr:1"}, images
    assert "gs://bucket/curated" in text and "gs://bucket/serving" in text


def test_an_image_named_by_tag_gets_a_note_to_name_it_by_digest(tmp_path, monkeypatch):
    monkeypatch.setattr(kubeflow_runner, "compile_pipeline", lambda config, output, image: ["from the compile"])
    digest = "registry.example/covid-cxr@sha256:" + "0" * 64
    printed = {}
    for image in ("registry.example/covid-cxr:1", digest):
        result = CliRunner().invoke(cli.main, ["compile", "--image", image, "--output", str(tmp_path / "s.json"), *BUCKETS])
        assert result.exit_code == 0, result.output
        printed[image] = [line for line in result.output.splitlines() if line.startswith("note: ")]
    assert printed["registry.example/covid-cxr:1"] == [
        "note: --image registry.example/covid-cxr:1 is named by tag: if the tag is pushed again, every step stops as not "
        "the code the pipeline was built with; name it by digest (REGISTRY/NAME@sha256:..., which docker push prints)",
        "note: from the compile"]
    assert printed[digest] == ["note: from the compile"]


@pytest.mark.parametrize("flag, field, why", [
    ("--data", "data.data_dir", "ImportExampleGen would find no data there"),
    ("--pipeline-root", "runtime.pipeline_root", "artifacts written there would vanish with their pod"),
    ("--serving-dir", "runtime.serving_dir", "a push there would vanish with its pod")])
@pytest.mark.parametrize("path", ["out/local", "file:///tmp/local", "FILE://localhost/tmp/local", "gs://",
                                  "gs:///no-bucket"])
def test_a_path_on_this_machine_for_data_root_or_serving_is_refused(tmp_path, flag, field, why, path):
    args = list(BUCKETS)
    args[args.index(flag) + 1] = path
    result = CliRunner().invoke(cli.main, ["compile", "--image", "registry.example/covid-cxr:1",
                                           "--output", str(tmp_path / "spec.json"), *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"covid-cxr: error: {field} {path!r} is a path on this machine, which the "
                                     f"containers cannot reach ({why}): pass {flag} gs://...")
    assert not (tmp_path / "spec.json").exists()


def test_an_output_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = CliRunner().invoke(cli.main, ["compile", "--image", "registry.example/covid-cxr:1",
                                           "--output", str(tmp_path / "a-file" / "spec.json"), *BUCKETS])
    assert result.exit_code == 2, result.output
    assert re.fullmatch(r"covid-cxr: error: --output's folder '.*a-file' cannot be a directory: '.*a-file' is a file",
                        result.output.strip()), result.output


def test_settings_the_cluster_ignores_or_must_provide_are_noted(tmp_path):
    result = CliRunner().invoke(cli.main, [
        "compile", "--image", "registry.example/covid-cxr:1", "--output", str(tmp_path / "spec.json"), *BUCKETS,
        "--set", "runtime.mysql_host=db.local", "--set", "data.schema_file=/opt/schema.pbtxt"])
    assert result.exit_code == 0, result.output
    assert "note: runtime.mysql_* / runtime.metadata_path are not used" in result.output
    assert "note: data.schema_file '/opt/schema.pbtxt' is read inside the container" in result.output
    assert "db.local" not in (tmp_path / "spec.json").read_text()
    assert "a different file there stops the run" not in result.output  # /opt/schema.pbtxt is not on this machine
    local = tmp_path / "schema.pbtxt"
    local.write_bytes(Path(pipeline.SCHEMA_FILE).read_bytes())
    result = CliRunner().invoke(cli.main, [
        "compile", "--image", "registry.example/covid-cxr:1", "--output", str(tmp_path / "spec.json"), *BUCKETS,
        "--set", f"data.schema_file={local}"])
    assert result.exit_code == 0, result.output
    assert (f"note: data.schema_file {str(local)!r} is read inside the container: the image must hold it at that "
            "path (or pass --set data.schema_file=gs://...); the spec holds the hash of this machine's copy, so a "
            "different file there stops the run") in result.output


def test_a_schema_file_this_machine_reads_that_is_not_a_schema_is_refused(tmp_path):
    """The spec pins this copy's hash, so the image must hold the same file: ImportSchema would refuse it in the
    cluster after ImportExampleGen and StatisticsGen had read the data."""
    local = tmp_path / "schema.pbtxt"
    local.write_text('feature { name: "label" type: BYTES\n')
    result = CliRunner().invoke(cli.main, [
        "compile", "--image", "registry.example/covid-cxr:1", "--output", str(tmp_path / "spec.json"), *BUCKETS,
        "--set", f"data.schema_file={local}"])
    assert result.exit_code == 2, result.output
    assert re.fullmatch(rf'covid-cxr: error: data.schema_file: {re.escape(str(local))} is not a schema \(.*\): 1:31 : Expected "}}"\.',
                        result.output.strip()), result.output
    assert not (tmp_path / "spec.json").exists()


def test_compile_reads_a_local_schema_file_once_for_its_checks(tmp_path, gfile_reads):
    """Readable here, a Schema, and noted with the hash the spec pins: one read (it was two, then parsed)."""
    local = tmp_path / "schema.pbtxt"
    local.write_bytes(Path(pipeline.SCHEMA_FILE).read_bytes())
    config = cfg.load_config("quick", overrides={
        "data.data_dir": "gs://bucket/curated", "runtime.pipeline_root": "gs://bucket/root",
        "runtime.serving_dir": "gs://bucket/serving", "data.schema_file": str(local)})
    reads = gfile_reads(local)
    _, notes = kubeflow_runner.for_the_container(config)
    assert len(reads) == 1, reads
    assert any("the spec holds the hash of this machine's copy" in note for note in notes), notes


def test_dataflow_without_a_way_to_ship_the_package_to_its_workers_is_refused(tmp_path):
    dataflow = "runtime.beam_extra_args=[--runner=DataflowRunner,--project=p,--region=us-central1"
    result = CliRunner().invoke(cli.main, ["compile", "--image", "registry.example/covid-cxr:1", "--output",
                                           str(tmp_path / "spec.json"), *BUCKETS, "--set", dataflow + "]"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("covid-cxr: error: runtime.beam_extra_args runs Beam on DataflowRunner, whose "
                                    "workers need this package and its pinned stack: add --sdk_container_image=")
    assert f"--build-arg BASE={kubeflow_runner.BEAM_WORKER_BASE}" in result.output
    assert not (tmp_path / "spec.json").exists()
    # A setup file cannot install tfx 1.16 on Python 3.11 workers (and names a file the pod lacks).
    result = CliRunner().invoke(cli.main, ["compile", "--image", "registry.example/covid-cxr:1", "--output",
                                           str(tmp_path / "spec.json"), *BUCKETS, "--set",
                                           "runtime.beam_extra_args=[--runner, DataflowRunner, --setup_file=./setup.py]"])
    assert result.exit_code == 2 and "the workers' pip refuses tfx 1.16" in result.output, result.output
    # The user's worker image is kept as it is; its runs cannot repeat exactly, which is said.
    result = CliRunner().invoke(cli.main, ["compile", "--image", "registry.example/covid-cxr:1", "--output",
                                           str(tmp_path / "spec.json"), *BUCKETS, "--set",
                                           dataflow + ",--sdk_container_image=registry.example/beam-worker:1]"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "spec.json").read_text()
    assert "--sdk_container_image=registry.example/beam-worker:1" in text and pipeline.DIRECT_RUNNER_IMAGE not in text
    assert "note: training.reproducible: runs on DataflowRunner do not repeat exactly" in result.output


def test_the_worker_image_base_is_beams_sdk_image_of_the_pinned_beam_and_python():
    root = Path(__file__).parent.parent
    beam = re.search(r"^apache-beam==(\S+)$", (root / "constraints.txt").read_text(), re.M).group(1)
    assert kubeflow_runner.BEAM_WORKER_BASE == f"apache/beam_python3.11_sdk:{beam}"
    dockerfile = (root / "Dockerfile").read_text()
    assert f"--build-arg BASE={kubeflow_runner.BEAM_WORKER_BASE}" in dockerfile
    assert re.search(r"^ARG BASE=\S+\nFROM \$\{BASE\}$", dockerfile, re.M)


def test_the_direct_runners_one_worker_per_core_becomes_a_fixed_count_in_the_pods(tmp_path):
    result = CliRunner().invoke(cli.main, ["compile", "--preset", "quick", "--image", "registry.example/covid-cxr:1",
                                           "--output", str(tmp_path / "spec.json"), *BUCKETS])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "spec.json").read_text()
    assert "--direct_num_workers=0" not in text
    assert f"--direct_num_workers={kubeflow_runner.CONTAINER_BEAM_WORKERS}" in text
    assert "note: runtime.beam_workers=0 (one per core) would count the node's cores in a pod" in result.output
    _, text = _compile(tmp_path, "--preset", "quick", "--set", "runtime.beam_workers=3")
    assert "--direct_num_workers=3" in text


def test_a_worker_count_repeated_in_the_extra_args_does_not_undo_the_pods_fixed_count(tmp_path):
    """runtime.beam_extra_args may repeat runtime.beam_workers=0 (it agrees with the field); the extras come
    after the field's option, so that 0 won in the spec while the note said 4."""
    extra = "[--direct_num_w=0, --direct_runner_bundle_repeat=0, --direct_num_workers, '0']"  # every form Beam reads
    result = CliRunner().invoke(cli.main, ["compile", "--preset", "quick", "--image", "registry.example/covid-cxr:1",
                                           "--output", str(tmp_path / "spec.json"), *BUCKETS,
                                           "--set", f"runtime.beam_extra_args={extra}"])
    assert result.exit_code == 0, result.output
    executors = json.loads((tmp_path / "spec.json").read_text())["pipelineSpec"]["deploymentSpec"]["executors"]
    beam_steps = [e["container"]["args"] for e in executors.values()
                  if "--direct_runner_bundle_repeat=0" in e.get("container", {}).get("args", [])]
    assert len(beam_steps) >= 5  # ExampleGen, StatisticsGen, Transform, Evaluator...: each with the extras
    for args in beam_steps:
        assert [a for a in args if a.startswith("--direct_num") or a == "0"] == [
            f"--direct_num_workers={kubeflow_runner.CONTAINER_BEAM_WORKERS}"]
    assert (f"note: runtime.beam_workers=0 (one per core) would count the node's cores in a pod, not the pod's: set to "
            f"{kubeflow_runner.CONTAINER_BEAM_WORKERS}, ") in result.output


def _import_schema_parameters(spec: dict) -> dict:
    inputs = spec["pipelineSpec"]["root"]["dag"]["tasks"]["ImportSchema"]["inputs"]["parameters"]
    return {name: value["runtimeValue"]["constantValue"]["stringValue"] for name, value in inputs.items()}


def test_schema_is_read_from_the_image_and_keyed_on_this_checkouts_copy(tmp_path):
    spec, text = _compile(tmp_path)
    # The Dockerfile copies this checkout's schema to the image's path: its hash goes in the spec,
    # so the cache sees a schema edit and ImportSchema stops an image built with another schema.
    assert _import_schema_parameters(spec) == {
        "schema_file": kubeflow_runner.IMAGE_SCHEMA_FILE,
        "content_sha256": hashlib.sha256(Path(pipeline.SCHEMA_FILE).read_bytes()).hexdigest()}
    assert "COPY pipeline/schema/schema.pbtxt /pipeline/schema/schema.pbtxt" in (
        Path(__file__).parent.parent / "Dockerfile").read_text()

    out = tmp_path / "bucket-schema.json"
    result = CliRunner().invoke(cli.main, ["compile", "--image", "registry.example/covid-cxr:1", "--output", str(out),
                                           *BUCKETS, "--set", "data.schema_file=gs://bucket/schema.pbtxt"])
    assert result.exit_code == 0, result.output
    # This machine cannot read the bucket: no hash, and the user is told what keys the cache instead.
    assert _import_schema_parameters(json.loads(out.read_text())) == {
        "schema_file": "gs://bucket/schema.pbtxt", "content_sha256": ""}
    assert ("note: data.schema_file 'gs://bucket/schema.pbtxt' cannot be read from this machine, so the spec holds no "
            "hash of its content and the cache keys on its path alone") in result.output
    assert kubeflow_runner.IMAGE_SCHEMA_FILE not in out.read_text()


def test_a_yaml_output_is_a_pipeline_spec_the_open_source_backend_reads(tmp_path):
    out = tmp_path / "spec" / "covid-cxr.yaml"  # a folder that does not exist yet
    result = CliRunner().invoke(cli.main, ["compile", "--image", "registry.example/covid-cxr:1", "--output", str(out),
                                           *BUCKETS, "--set", "gate.compare_to_baseline=false"])
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(out.read_text())
    # What kfp.Client().create_run_from_pipeline_package parses; a PipelineJob JSON fails here.
    spec = json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())
    assert spec.schema_version == "2.1.0"  # the backend resolves 2.1's `constant` values, not 2.0's
    assert "constantValue" not in out.read_text()
    assert spec.default_pipeline_root == "gs://bucket/root"  # no runtime config: the root travels in the spec
    assert EXPECTED_TASKS - {"latest_blessed_model_resolver"} == set(spec.root.dag.tasks)
    with pytest.raises(json_format.ParseError, match="displayName"):
        json_format.ParseDict(_compile(tmp_path)[0], pipeline_spec_pb2.PipelineSpec())


def test_offline_weights_on_this_machine_are_left_out_of_the_spec_with_a_note(tmp_path):
    local = str(tmp_path / "weights")
    result = CliRunner().invoke(cli.main, [
        "compile", "--image", "registry.example/covid-cxr:1", "--output", str(tmp_path / "spec.json"), *BUCKETS, "--set", f"model.weights_dir={local}"])
    assert result.exit_code == 0, result.output
    assert f"note: model.weights_dir {local!r} is on this machine" in result.output
    assert local not in (tmp_path / "spec.json").read_text()
    _, text = _compile(tmp_path, "--set", "model.weights_dir=gs://bucket/weights")
    assert "gs://bucket/weights" in text  # a bucket the containers can read is kept


def test_a_weights_file_on_this_machine_is_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(cli.main, [
        "compile", "--image", "registry.example/covid-cxr:1", "--output", str(tmp_path / "spec.json"), *BUCKETS, "--set", "model.weights=/home/me/mobilenet.h5"])
    assert result.exit_code == 2, result.output
    assert "model.weights '/home/me/mobilenet.h5' is a file on this machine" in result.output
    assert not (tmp_path / "spec.json").exists()


def test_a_pinned_onednn_setting_tells_which_variable_the_image_must_set(tmp_path):
    for setting, value in (("on", "1"), ("off", "0")):
        result = CliRunner().invoke(cli.main, [
            "compile", "--image", "registry.example/covid-cxr:1", "--output", str(tmp_path / "spec.json"), *BUCKETS, "--set", f"training.onednn={setting}"])
        assert result.exit_code == 0, result.output
        assert f"note: training.onednn={setting}: the image must set TF_ENABLE_ONEDNN_OPTS={value} " in result.output
    result = CliRunner().invoke(cli.main, [
        "compile", "--image", "registry.example/covid-cxr:1", "--output", str(tmp_path / "spec.json"), *BUCKETS, "--set", "training.onednn=auto"])
    assert result.exit_code == 0 and "note: training.onednn" not in result.output, result.output


def _dockerfile_env() -> dict:
    """ENV values the Dockerfile sets (an ARG's default stands in for ${ARG})."""
    args, env = {}, {}
    text = (Path(__file__).parent.parent / "Dockerfile").read_text()
    for line in text.splitlines():
        keyword, _, rest = line.partition(" ")
        for pair in rest.split() if keyword in ("ARG", "ENV") else []:
            name, _, value = pair.partition("=")
            value = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
            (args if keyword == "ARG" else env)[name] = value
    return env


def test_the_image_starts_tensorflow_as_the_full_preset_requires():
    env = _dockerfile_env()
    train = cfg.load_config("full").training
    wanted = training.process_env(train.reproducible, train.onednn)
    assert env["TF_USE_LEGACY_KERAS"] == "1"
    assert env["TF_NUM_INTRAOP_THREADS"] == env["OMP_NUM_THREADS"]  # the count is the pods' cores, not this machine's
    for name, value in wanted.items():
        assert env[name] == (env["TF_NUM_INTRAOP_THREADS"] if name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")
                             else value), name


def _ignored(patterns: list, path: str) -> bool:
    """Docker's rule for one path: the last pattern matching the path or one of its parent folders
    decides; "!" re-includes."""
    prefixes = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 2)]
    ignored = False
    for pattern in patterns:
        include = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not include
    return ignored


def _in_build_context(patterns: list, path: str) -> bool:
    """Whether ``docker build`` sends ``path``. The legacy builder also skips a whole folder the
    patterns leave out unless an exception names a path inside it (BuildKit only needs the rule)."""
    parts = path.split("/")
    for n in range(1, len(parts)):
        folder = "/".join(parts[:n])
        if _ignored(patterns, folder) and not any(p.startswith(f"!{folder}/") for p in patterns):
            return False
    return not _ignored(patterns, path)


def test_only_the_package_goes_into_the_image():
    root = Path(__file__).parent.parent
    lines = (line.strip() for line in (root / ".dockerignore").read_text().splitlines())
    patterns = [line for line in lines if line and not line.startswith("#")]
    packages = [d for d in root.iterdir() if (d / "__init__.py").is_file() and d.name not in ("tests", "scripts")]
    code = [p.name for p in root.glob("*.py")] + [str(p.relative_to(root)) for d in packages for p in d.rglob("*.py")]
    needed = code + ["requirements.txt", "constraints.txt", "pipeline/presets/full.yaml", "pipeline/schema/schema.pbtxt"]
    assert "setup.py" in needed and "data/sources/cohen.py" in needed and "trainer/task.py" in needed
    assert [p for p in needed if not _in_build_context(patterns, p)] == []
    # What README's workflow and the test runs leave in the checkout: films, models, reports, caches.
    local = ["curated/cvn/train-00000-of-00001.gz", "curated/cvn/summary.json", "curated/cohen/manifest.csv",
             "serving/cvn/1796524851/saved_model.pb", "serving/cvn/1796524851/model_card.md", "report/errors.png",
             "report-cohen/report.json", "out/covid-vs-normal/root/metadata.sqlite", "runs/q/rejected.csv",
             ".venv/lib/python3.11/site-packages/tfx/__init__.py", ".git/HEAD", "data/sources/__pycache__/cohen.cpython-311.pyc",
             "covid_cxr.egg-info/PKG-INFO", "README.md", "docs/results.md", "tests/cli_test.py", "scripts/threshold_check.py"]
    assert [p for p in local if _in_build_context(patterns, p)] == []


def test_open_source_kubeflow_gets_a_spec_without_resolver_nodes(tmp_path):
    # Vertex AI runs TFX Resolver nodes; the open-source KFP 2.x backend does not.
    def resolvers(spec):
        return [name for name, e in spec["pipelineSpec"]["deploymentSpec"]["executors"].items() if "resolver" in e]

    spec, _ = _compile(tmp_path)
    assert len(resolvers(spec)) == 2
    spec, _ = _compile(tmp_path, "--set", "gate.compare_to_baseline=false")
    assert resolvers(spec) == [] and "latest_blessed_model_resolver" not in json.dumps(spec)
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert EXPECTED_TASKS - {"latest_blessed_model_resolver"} <= {name.split("-")[0] for name in tasks} | set(tasks)


@pytest.mark.parametrize("image", ["", "  ", " registry.example/covid-cxr:1", "reg/covid cxr:1", "REG/COVID-CXR:Latest",
                                   "reg/x:1:2:3", "/home/me/image.tar", "reg/x@sha256:abc",
                                   "localhost:/team/x:1", "reg/x:" + "a" * 129, "reg/covid-:1", "reg/covid_/x"])
def test_a_blank_or_malformed_image_is_refused_rather_than_failing_every_pod(tmp_path, image):
    result = CliRunner().invoke(cli.main, ["compile", "--image", image, "--output", str(tmp_path / "spec.json"), *BUCKETS])
    assert result.exit_code == 2 and "is not an image reference" in result.output, result.output
    assert not (tmp_path / "spec.json").exists()


@pytest.mark.parametrize("image", ["registry.example/covid-cxr:1", "REGISTRY/covid-cxr:0.1", "localhost:5000/team/covid_cxr",
                                   "europe-docker.pkg.dev/proj/repo/covid-cxr@sha256:" + "0" * 64, "covid-cxr",
                                   "reg/x:" + "a" * 128, "reg/a__b/c--d:v1.0-rc_2"])
def test_image_references_docker_accepts_pass(image):
    kubeflow_runner.check_image(image)


@pytest.mark.parametrize("args, message", [
    (("--data", "s3://bucket/curated"), "^data.data_dir 's3://bucket/curated': TensorFlow in the image has no file "
                                        r"system for s3:// \(it reads gs:// buckets and its own paths\)"),
    (("--serving-dir", "GS://bucket/serving"), "^runtime.serving_dir 'GS://bucket/serving': TensorFlow in the image has "
                                               "no file system for GS://"),
    (("--set", "model.weights_dir=hdfs://nn/weights"), "^model.weights_dir 'hdfs://nn/weights': TensorFlow in the image"),
    (("--set", "data.schema_file=schema/schema.pbtxt"), "^data.schema_file 'schema/schema.pbtxt' is a relative path"),
    (("--set", "data.schema_file=s3://bucket/schema.pbtxt"), "^data.schema_file 's3://bucket/schema.pbtxt': TensorFlow "
                                                             "in the image has no file system for s3://"),
    (("--set", "runtime.pipeline_name=covid_cxr"), "^runtime.pipeline_name 'covid_cxr' is not a Kubeflow"),
    (("--set", "runtime.pipeline_name=-covid-cxr"), "^runtime.pipeline_name '-covid-cxr' is not a Kubeflow"),
    (("--set", "runtime.pipeline_name=My Pipeline_1"), "^runtime.pipeline_name 'My Pipeline_1' is not a Kubeflow"),
    (("--set", f"runtime.pipeline_name={'a' * 64}"), "^runtime.pipeline_name 'a{64}' is 64 characters: TFX takes at most 63$"),
    (("--output", "spec.yaml"), "^a .yaml spec is for open-source Kubeflow Pipelines, whose backend cannot run the TFX "
                                r"Resolver .*: add --set gate.compare_to_baseline=false"),
    (("--output", " "), r"^--output ' ' must end in .json \(a Vertex AI PipelineJob\) or .yaml \(a pipeline spec for "),
    (("--output", "spec.txt"), r"^--output 'spec.txt' must end in .json"),
])
def test_specs_no_cluster_could_run_are_refused_in_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, ["compile", "--image", "registry.example/covid-cxr:1", "--output", "spec.json",
                                           *BUCKETS, *args])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert re.search(message, line.removeprefix("Error: ").removeprefix("covid-cxr: error: ")), line
    assert list(tmp_path.iterdir()) == []  # no spec written


def test_the_image_installs_with_the_same_pip_setuptools_and_wheel_as_the_makefile():
    root = Path(__file__).parent.parent
    pins = re.compile(r"pip==[\w.]+ setuptools==[\w.]+ wheel==[\w.]+")
    assert pins.findall((root / "Dockerfile").read_text()) == pins.findall((root / "Makefile").read_text()) != []


@pytest.mark.parametrize("schema", ["/pipeline/schema/schema.pbtxt", "file:///pipeline/schema/schema.pbtxt"])
def test_an_absolute_schema_path_in_the_image_compiles(tmp_path, schema):
    _compile(tmp_path, "--set", f"data.schema_file={schema}")


def _invoke(tmp_path, *extra, output="spec.json"):
    return CliRunner().invoke(cli.main, ["compile", "--image", "registry.example/covid-cxr:1", "--output",
                                         str(tmp_path / output), *BUCKETS, *extra])


def test_what_the_containers_can_run_compiles_with_notes_only_for_what_applies(tmp_path):
    # Weight keywords in any case, an upper-case extension and the longest pipeline name are accepted.
    result = _invoke(tmp_path, "--set", "model.weights=ImageNet", "--set", f"runtime.pipeline_name={'a' * 63}",
                     output="spec.JSON")
    assert result.exit_code == 0 and (tmp_path / "spec.JSON").is_file(), result.output
    # The DirectRunner repeats a reproducible run; no weights folder named, none to leave out.
    result = _invoke(tmp_path, "--preset", "quick", "--set", "training.reproducible=true")
    assert result.exit_code == 0, result.output
    assert "do not repeat exactly" not in result.output and "model.weights_dir" not in result.output
    # Dataflow's older worker-image flag ships the package too; its workers are Dataflow's, not the pod's cores.
    result = _invoke(tmp_path, "--preset", "quick", "--set", "runtime.beam_extra_args=[--runner=DataflowRunner,"
                     "--project=p,--region=us-central1,--worker_harness_container_image=registry.example/beam-worker:1]")
    assert result.exit_code == 0, result.output
    assert "runtime.beam_workers=0" not in result.output
    assert f"--direct_num_workers={kubeflow_runner.CONTAINER_BEAM_WORKERS}" not in (tmp_path / "spec.json").read_text()
    result = _invoke(tmp_path, "--set", "runtime.metadata_path=/var/mlmd/metadata.sqlite")
    assert result.exit_code == 0, result.output
    assert "note: runtime.mysql_* / runtime.metadata_path are not used" in result.output


def test_a_yml_output_is_a_pipeline_spec_too_and_a_failed_write_is_one_line(tmp_path, monkeypatch):
    result = _invoke(tmp_path, "--set", "gate.compare_to_baseline=false", output="spec.YML")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "spec.YML").read_text())["schemaVersion"] == "2.1.0"

    def denied(path):
        raise tf.errors.PermissionDeniedError(None, None, "no access to the folder")

    monkeypatch.setattr(tf.io.gfile, "makedirs", denied)
    result = _invoke(tmp_path, output="new/spec.json")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"covid-cxr: error: --output {str(tmp_path / 'new/spec.json')!r} cannot be "
                                     "written: no access to the folder")


def test_no_note_for_one_worker_the_images_own_schema_or_a_dataflow_run_not_asked_to_repeat(tmp_path):
    # The image's own schema, one Beam worker kept as it is, a DataflowRunner run that need not repeat exactly,
    # and a local folder whose name holds "://" (no scheme): it is left out like any local folder.
    result = _invoke(tmp_path, "--set", "runtime.beam_workers=1", "--set", "model.weights_dir=/home/me/odd://weights")
    assert result.exit_code == 0, result.output
    assert "data.schema_file" not in result.output and "runtime.beam_workers" not in result.output
    assert "--direct_num_workers=1" in (tmp_path / "spec.json").read_text()
    assert "note: model.weights_dir '/home/me/odd://weights' is on this machine" in result.output
    result = _invoke(tmp_path, "--set", "training.reproducible=false", "--set", "runtime.beam_extra_args=[--runner="
                     "DataflowRunner,--project=p,--region=us-central1,--sdk_container_image=registry.example/w:1]")
    assert result.exit_code == 0, result.output
    assert "do not repeat exactly" not in result.output


def test_an_empty_data_root_or_serving_directory_is_refused_in_one_line(tmp_path):
    """An empty --data compiled to a spec whose ImportExampleGen had no input_base: found only in the cluster."""
    result = _invoke(tmp_path, "--data", "")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "covid-cxr: error: data.data_dir is empty: pass --data gs://..."
    assert not (tmp_path / "spec.json").exists()
    config = cfg.load_config("full", overrides={"data.data_dir": "gs://bucket/curated", "runtime.pipeline_root": "gs://b/r",
                                                "runtime.serving_dir": "gs://b/s"})
    for section, name, flag in (("runtime", "pipeline_root", "--pipeline-root"), ("runtime", "serving_dir", "--serving-dir")):
        emptied = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, **{name: ""}))
        with pytest.raises(cfg.ConfigError, match=rf"^{section}.{name} is empty: pass {flag} gs://\.\.\.$"):
            kubeflow_runner.for_the_container(emptied)
