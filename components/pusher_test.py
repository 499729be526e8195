import json
import os

import pytest
import tensorflow as tf

from covid_cxr.components import pusher
from covid_cxr.evaluation import artifacts


def _fake_model(path, content=b"graph"):
    os.makedirs(os.path.join(path, "variables"), exist_ok=True)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(content)
    with open(os.path.join(path, "variables", "variables.index"), "wb") as f:
        f.write(b"vars")
    return path


def test_push_creates_numeric_versions_and_never_pushes_the_same_model_twice(tmp_path):
    serving = str(tmp_path / "serving")
    model_a = _fake_model(str(tmp_path / "a"))
    pushed, first, _ = pusher.push(model_a, serving, "card", {"k": 1})
    assert pushed and pusher.versions(serving) == [int(os.path.basename(first))]
    assert open(os.path.join(first, "model_card.md")).read() == "card"
    record = json.load(open(os.path.join(first, pusher.PUSH_RECORD)))
    assert record == {"k": 1, "fingerprint": pusher.fingerprint(model_a), "version": int(os.path.basename(first))}

    again, where, why = pusher.push(model_a, serving, "card", {})
    assert not again and where == first and "already" in why
    assert len(pusher.versions(serving)) == 1

    model_b = _fake_model(str(tmp_path / "b"), b"other graph")
    pushed_b, second, _ = pusher.push(model_b, serving, "card", {})
    assert pushed_b and pusher.versions(serving)[-1] == int(os.path.basename(second)) > int(os.path.basename(first))
    assert not [n for n in os.listdir(serving) if n.startswith(".staging")]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError("No space left on device")])
def test_a_local_push_cut_short_leaves_no_staged_copy(tmp_path, monkeypatch, error):
    serving = tmp_path / "serving"
    model = _fake_model(str(tmp_path / "a"))

    def cut_short(version_dir, name, text):
        raise error

    monkeypatch.setattr(pusher, "_write", cut_short)
    with pytest.raises(type(error)):
        pusher.push(model, str(serving), "card", {})
    assert os.listdir(serving) == []  # the re-run stages under a new version number: nothing would remove it


def test_fingerprint_ignores_location_but_not_content(tmp_path):
    a = _fake_model(str(tmp_path / "x"))
    b = _fake_model(str(tmp_path / "y"))
    assert pusher.fingerprint(a) == pusher.fingerprint(b)
    with open(os.path.join(b, "variables", "variables.index"), "wb") as f:
        f.write(b"changed")
    assert pusher.fingerprint(a) != pusher.fingerprint(b)


def test_push_to_a_bucket_copies_in_place_with_the_graph_last(tmp_path, monkeypatch):
    # TensorFlow's in-memory file system stands in for a bucket: like GCS it keeps "/./" in object
    # names and has no atomic directory rename.
    serving = f"ram://serving-{os.getpid()}"
    model = _fake_model(str(tmp_path / "a"))
    copied = []
    real_copy = tf.io.gfile.copy
    monkeypatch.setattr(tf.io.gfile, "copy", lambda src, dst, overwrite=False: (copied.append(dst), real_copy(src, dst, overwrite)))
    pushed, final, _ = pusher.push(model, serving, "card", {"k": 1})
    assert pushed and final == f"{serving}/{pusher.versions(serving)[0]}"
    for name, content in (("saved_model.pb", b"graph"), ("variables/variables.index", b"vars"), ("model_card.md", b"card")):
        with tf.io.gfile.GFile(f"{final}/{name}", "rb") as f:
            assert f.read() == content, name
    assert copied[-1] == f"{final}/saved_model.pb" and not any("/./" in c for c in copied)  # graph last
    assert tf.io.gfile.listdir(serving) == [os.path.basename(final)]  # no staging directory left
    again, where, _ = pusher.push(model, serving, "card", {})
    assert not again and where == final


def test_a_push_to_a_bucket_cut_short_is_pushed_again(tmp_path, monkeypatch):
    serving = f"ram://cut-short-{os.getpid()}"
    model = _fake_model(str(tmp_path / "a"))
    real_copy = pusher._copy_files

    def preempted(src, dst, files):
        if pusher.GRAPH_FILE in files:
            raise SystemExit("pod preempted before the graph was copied")
        real_copy(src, dst, files)

    monkeypatch.setattr(pusher, "_copy_files", preempted)
    try:
        pusher.push(model, serving, "card", {})
    except SystemExit:
        pass
    broken = f"{serving}/{pusher.versions(serving)[-1]}"
    assert not tf.io.gfile.exists(f"{broken}/{pusher.PUSH_RECORD}")  # no record without the graph
    monkeypatch.setattr(pusher, "_copy_files", real_copy)
    pushed, final, why = pusher.push(model, serving, "card", {})
    assert pushed and final != broken and why == "pushed" and tf.io.gfile.exists(f"{final}/{pusher.GRAPH_FILE}")
    # A record left without its graph (an older push order) is not taken as the model being served.
    tf.io.gfile.remove(f"{final}/{pusher.GRAPH_FILE}")
    assert pusher.push(model, serving, "card", {})[0]


def test_a_model_served_before_is_pushed_again_when_another_one_is_newest(tmp_path):
    # Rolling back: A, then B, then A again. Only the NEWEST version counts as "already serving".
    serving = str(tmp_path / "serving")
    model_a, model_b = _fake_model(str(tmp_path / "a")), _fake_model(str(tmp_path / "b"), b"other graph")
    assert pusher.push(model_a, serving, "card", {})[0]
    assert pusher.push(model_b, serving, "card", {})[0]
    pushed, final, why = pusher.push(model_a, serving, "card", {})
    assert pushed and why == "pushed" and int(os.path.basename(final)) == pusher.versions(serving)[-1]
    assert len(pusher.versions(serving)) == 3


def test_fingerprint_sees_a_renamed_file(tmp_path):
    a = _fake_model(str(tmp_path / "x"))
    b = _fake_model(str(tmp_path / "y"))
    os.rename(os.path.join(b, "variables", "variables.index"), os.path.join(b, "variables", "other.index"))
    assert pusher.fingerprint(a) != pusher.fingerprint(b)


GATE = {"min_sensitivity": 0.9, "min_specificity": 0.85}


def _executor(tmp_path, monkeypatch, task=None):
    """(run, model, cards): run(blessed, pushed_uri, serving_dir) runs the VersionedPusher's executor on a
    fake Trainer model (of `task`, when given) and returns its PushedModel and decision record."""
    from tfx import v1 as tfx

    from covid_cxr.evaluation import gate_report

    monkeypatch.setattr(pusher.gate_report, "read_gate_report", lambda uri, blessed, classes: gate_report.GateReport(
        blessed, {"sensitivity": 0.5}, [] if blessed else ["sensitivity 0.500 is below the required minimum 0.900"], {}))
    cards = []
    monkeypatch.setattr(pusher.model_card, "render", lambda metadata, report: cards.append(metadata) or "card")
    model = tfx.types.standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    model_dir = _fake_model(os.path.join(model.uri, "Format-Serving"))
    if task:
        _write_task(model_dir, task)

    def run(blessed, pushed_uri, serving):
        blessing = tfx.types.standard_artifacts.ModelBlessing()
        blessing.set_int_custom_property("blessed", blessed)
        evaluation = tfx.types.standard_artifacts.ModelEvaluation()
        evaluation.uri = str(tmp_path / "evaluation")
        pushed = tfx.types.standard_artifacts.PushedModel()
        pushed.uri = pushed_uri
        pusher.VersionedPusher.test_call(model=model, model_blessing=blessing, evaluation=evaluation,
                                         pushed_model=pushed, serving_dir=serving, gate=json.dumps(GATE))
        with tf.io.gfile.GFile(f"{pushed_uri}/{artifacts.DECISION_RECORD}") as f:
            return pushed, json.load(f)
    return run, model, cards


def _write_task(model_dir, task, **metadata):
    os.makedirs(os.path.join(model_dir, "assets"), exist_ok=True)
    with open(os.path.join(model_dir, "assets", "covid_cxr.json"), "w") as f:
        json.dump(dict(metadata, task=task), f)


def test_only_a_blessed_model_is_pushed(tmp_path, monkeypatch):
    run_pusher, model, cards = _executor(tmp_path, monkeypatch)
    serving = str(tmp_path / "serving")
    gate = GATE

    def run(blessed, pushed_uri):
        return run_pusher(blessed, pushed_uri, serving)

    # The Pusher's own artifact holds the decision, written through tf.io.gfile: a URI (TF's in-memory
    # file system here, as gs:// on Vertex) as well as a local folder.
    refused, decision = run(0, "ram://root/VersionedPusher/pushed_model/7")
    assert refused.get_int_custom_property("pushed") == 0 and pusher.versions(serving) == []
    assert refused.get_string_custom_property("reason") == "NOT BLESSED: sensitivity 0.500 is below the required minimum 0.900"
    assert decision == {
        "blessed": False, "failures": ["sensitivity 0.500 is below the required minimum 0.900"], "gate": gate,
        "metrics": {"sensitivity": 0.5}, "intervals": {}, "model_uri": model.uri,
        "evaluation_uri": str(tmp_path / "evaluation"), "pushed": False, "pushed_destination": "",
        "reason": "NOT BLESSED: sensitivity 0.500 is below the required minimum 0.900"}
    assert not os.path.exists(serving)  # nothing of a refused model in the serving directory
    blessed, decision = run(1, str(tmp_path / "root" / "VersionedPusher" / "pushed_model" / "8"))
    assert blessed.get_int_custom_property("pushed") == 1 and len(pusher.versions(serving)) == 1
    assert decision["blessed"] and decision["failures"] == [] and decision["pushed"]
    assert decision["pushed_destination"] == blessed.get_string_custom_property("pushed_destination")
    assert os.listdir(serving) == [str(pusher.versions(serving)[0])]  # TF Serving's layout: version folders only
    assert [card["gate"] for card in cards] == [gate]  # the card states the gate the model passed
    # The same model blessed again (a cached re-run): nothing copied, and the record says so.
    again, decision = run(1, str(tmp_path / "root" / "VersionedPusher" / "pushed_model" / "9"))
    assert again.get_int_custom_property("pushed") == 0 and len(pusher.versions(serving)) == 1
    assert decision["blessed"] and not decision["pushed"] and decision["reason"] == "this model is already the newest served version"
    assert decision["pushed_destination"] == blessed.get_string_custom_property("pushed_destination")


def test_a_blessed_model_is_not_pushed_over_another_tasks_model(tmp_path, monkeypatch):
    """One serving directory set for two tasks' pipelines (on Kubeflow / Vertex, where `run`'s check does
    not run): a three-class model pushed over the covid-vs-normal one would change what its clients get."""
    run, _, _ = _executor(tmp_path, monkeypatch, task="three-class")
    serving = tmp_path / "serving"
    _write_task(_fake_model(str(serving / "7")), "covid-vs-normal")
    before = sorted(str(p) for p in serving.rglob("*"))
    with pytest.raises(pusher.ServingDirError) as refused:
        run(1, str(tmp_path / "root" / "VersionedPusher" / "pushed_model" / "8"), str(serving))
    assert str(refused.value) == (
        f"runtime.serving_dir {str(serving)!r} serves a covid-vs-normal model (version 7); this three-class "
        "model was not pushed over it: use a per-task serving directory")
    assert sorted(str(p) for p in serving.rglob("*")) == before and pusher.versions(str(serving)) == [7]
    assert not (tmp_path / "root").exists()  # a misconfiguration, not a gate decision: no decision record


def _spy_served_task(monkeypatch):
    """What the executor found served before it pushed: (serving_dir, (task, version)) for each look."""
    looks, real = [], pusher.served_task
    monkeypatch.setattr(pusher, "served_task", lambda serving_dir: looks.append((serving_dir, real(serving_dir))) or looks[-1][1])
    return looks


def test_a_blessed_model_is_pushed_over_its_own_tasks_model(tmp_path, monkeypatch):
    run, _, _ = _executor(tmp_path, monkeypatch, task="three-class")
    looks = _spy_served_task(monkeypatch)
    serving = tmp_path / "serving"
    _write_task(_fake_model(str(serving / "7"), b"an older three-class graph"), "three-class")
    pushed, decision = run(1, str(tmp_path / "root" / "VersionedPusher" / "pushed_model" / "2"), str(serving))
    assert looks == [(str(serving), ("three-class", 7))]  # the served task was checked, and it is this one
    assert pushed.get_int_custom_property("pushed") == 1 and decision["reason"] == "pushed"
    assert len(pusher.versions(str(serving))) == 2


def test_a_blessed_model_is_pushed_into_an_empty_serving_directory(tmp_path, monkeypatch):
    run, _, _ = _executor(tmp_path, monkeypatch, task="three-class")
    looks = _spy_served_task(monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    pushed, decision = run(1, str(tmp_path / "root" / "VersionedPusher" / "pushed_model" / "1"), str(empty))
    assert looks == [(str(empty), (None, None))]  # checked: nothing served, so nothing to conflict with
    assert pushed.get_int_custom_property("pushed") == 1 and decision["reason"] == "pushed"
    assert len(pusher.versions(str(empty))) == 1


def test_fingerprint_does_not_depend_on_the_order_the_file_system_lists(tmp_path, monkeypatch):
    # Another file system (a bucket, another disk) may list the same model's folders and files in
    # another order: the same model must keep its fingerprint, or it is pushed twice.
    model = _fake_model(str(tmp_path / "a"))
    os.makedirs(os.path.join(model, "assets"))
    for name, content in (("assets/covid_cxr.json", b"{}"), ("variables/variables.data-00000-of-00001", b"w")):
        with open(os.path.join(model, name), "wb") as f:
            f.write(content)
    listed_in_order = pusher.fingerprint(model)
    real_walk = tf.io.gfile.walk
    monkeypatch.setattr(tf.io.gfile, "walk", lambda top: [(root, dirs[::-1], names[::-1])
                                                          for root, dirs, names in list(real_walk(top))[::-1]])
    assert pusher.fingerprint(model) == listed_in_order


def test_a_buckets_version_folders_listed_with_a_trailing_slash_are_versions(tmp_path, monkeypatch):
    serving = tmp_path / "serving"
    for name in ("12", "7", ".staging-13"):
        os.makedirs(serving / name)
    (serving / "notes.txt").write_text("not a version")
    real_listdir = tf.io.gfile.listdir
    # GCS lists a "folder" as "7/".
    monkeypatch.setattr(tf.io.gfile, "listdir", lambda path: [n + "/" if os.path.isdir(os.path.join(path, n)) else n
                                                              for n in real_listdir(path)])
    assert pusher.versions(str(serving)) == [7, 12]


def test_a_version_is_the_time_of_the_push_and_never_below_the_newest(tmp_path, monkeypatch):
    serving = str(tmp_path / "serving")
    monkeypatch.setattr(pusher.time, "time", lambda: 1_700_000_000.7)
    first = pusher.push(_fake_model(str(tmp_path / "a")), serving, "card", {})[1]
    assert first == f"{serving}/1700000000"  # TF Serving's newest is the latest push
    # A newest version from a clock ahead of this one (another machine), or a push in the same second.
    second = pusher.push(_fake_model(str(tmp_path / "b"), b"other graph"), serving, "card", {})[1]
    assert second == f"{serving}/1700000001" and pusher.versions(serving) == [1700000000, 1700000001]


def test_only_the_newest_versions_task_decides_and_a_task_less_model_blocks_nothing(tmp_path):
    serving = tmp_path / "serving"
    _write_task(_fake_model(str(serving / "3")), "three-class")
    _write_task(_fake_model(str(serving / "11")), "covid-vs-normal")
    assert pusher.served_task(str(serving)) == ("covid-vs-normal", 11)  # what TF Serving serves: the newest
    assert pusher.other_task_served(str(serving), "covid-vs-normal") is None
    assert pusher.other_task_served(str(serving), "three-class") == ("covid-vs-normal", 11)
    assert pusher.other_task_served(str(serving), None) is None  # a model that names no task: nothing to compare


def test_a_local_push_is_staged_under_a_name_tf_serving_skips(tmp_path, monkeypatch):
    staged = []
    real_copy = pusher._copy_files
    monkeypatch.setattr(pusher, "_copy_files", lambda src, dst, files: (staged.append(dst), real_copy(src, dst, files)))
    serving = str(tmp_path / "serving")
    final = pusher.push(_fake_model(str(tmp_path / "a")), serving, "card", {})[1]
    # A numeric name would be a version TF Serving loads while it is half copied.
    assert [os.path.basename(d) for d in staged] == [f".staging-{os.path.basename(final)}"]


def test_a_local_push_that_fails_before_staging_anything_raises_its_own_error(tmp_path, monkeypatch):
    def full_disk(src, dst, files):
        raise OSError("No space left on device")

    monkeypatch.setattr(pusher, "_copy_files", full_disk)
    serving = tmp_path / "serving"
    with pytest.raises(OSError, match="No space left on device"):  # not a NotFoundError from the cleanup
        pusher.push(_fake_model(str(tmp_path / "a")), str(serving), "card", {})
    assert not serving.exists() or os.listdir(serving) == []


def test_a_refusal_names_every_failure_or_where_to_look(tmp_path, monkeypatch):
    from covid_cxr.evaluation import gate_report

    run, _, _ = _executor(tmp_path, monkeypatch)
    failures = ["sensitivity 0.500 is below the required minimum 0.900",
                "specificity 0.400 is below the required minimum 0.850"]
    monkeypatch.setattr(pusher.gate_report, "read_gate_report",
                        lambda uri, blessed, classes: gate_report.GateReport(False, {}, list(failures), {}))
    refused, decision = run(0, str(tmp_path / "pushed" / "1"), str(tmp_path / "serving"))
    assert decision["reason"] == refused.get_string_custom_property("reason") == "NOT BLESSED: " + "; ".join(failures)
    failures.clear()  # refused without a failure the report could name (e.g. no metrics could be read)
    refused, decision = run(0, str(tmp_path / "pushed" / "2"), str(tmp_path / "serving"))
    assert decision["reason"] == "NOT BLESSED: see the evaluation" and decision["failures"] == []


def test_the_pushed_versions_record_carries_the_evaluation_it_was_blessed_on(tmp_path, monkeypatch):
    from covid_cxr.evaluation import gate_report

    run, model, _ = _executor(tmp_path, monkeypatch)
    _write_task(os.path.join(model.uri, "Format-Serving"), "covid-vs-normal", classes=["normal", "covid"])
    asked = []
    metrics = {"sensitivity": 0.9, "specificity": 0.8, "true positives": 9, "false negatives": 1,
               "true negatives": 8, "false positives": 2}
    monkeypatch.setattr(pusher.gate_report, "read_gate_report", lambda uri, blessed, classes: asked.append(
        (uri, blessed, classes)) or gate_report.GateReport(blessed, metrics, [], {}))
    pushed, decision = run(1, str(tmp_path / "pushed" / "1"), str(tmp_path / "serving"))
    assert asked == [(str(tmp_path / "evaluation"), True, ["normal", "covid"])]  # the model's own class names
    intervals = gate_report.GateReport(True, metrics, [], {}).intervals()
    assert set(intervals) == {"sensitivity", "specificity"} and decision["intervals"] == intervals
    with open(os.path.join(decision["pushed_destination"], pusher.PUSH_RECORD)) as f:
        record = json.load(f)
    # What predict and evaluate read beside the served version: the gate's figures, not only its version.
    assert {k: record[k] for k in ("model_uri", "evaluation_uri", "metrics", "intervals", "gate")} == {
        "model_uri": model.uri, "evaluation_uri": str(tmp_path / "evaluation"), "metrics": metrics,
        "intervals": intervals, "gate": GATE}
    assert record["version"] == int(os.path.basename(decision["pushed_destination"]))
