import dataclasses
import json
import os
import re

import pytest
import tensorflow as tf

from covid_cxr.data import features, synthetic, writer


def test_read_summary_reads_through_tensorflow_file_systems(tmp_path):
    # Kubeflow / Vertex read curated data from gs://; ram:// is a non-local file system TF ships.
    summary = synthetic.generate(str(tmp_path / "local"), "covid-vs-normal", patients_per_class=2, seed=0)
    remote = "ram://curated-for-read-summary"
    tf.io.gfile.makedirs(remote)
    for name in os.listdir(tmp_path / "local"):
        tf.io.gfile.copy(str(tmp_path / "local" / name), f"{remote}/{name}", overwrite=True)
    assert writer.read_summary(remote) == summary
    tf.io.gfile.remove(f"{remote}/{features.SUMMARY}")
    with pytest.raises(FileNotFoundError, match="was not written by covid-cxr curate"):
        writer.read_summary(remote)


def test_a_data_directory_that_cannot_be_read_is_a_user_error(monkeypatch):
    def denied(path):
        raise tf.errors.PermissionDeniedError(None, None, "Permission denied; no credentials for bucket b")

    monkeypatch.setattr(tf.io.gfile, "isdir", denied)
    with pytest.raises(writer.UnreadableDataError,
                       match=r"^cannot read the data directory 'gs://b/c': Permission denied; no cred"):
        writer.read_summary("gs://b/c")
    assert issubclass(writer.UnreadableDataError, ValueError)  # the CLI's user errors: one line, exit code 2


def test_a_damaged_record_file_is_named_with_tensorflows_reason_cleaned(tmp_path):
    synthetic.generate(str(tmp_path / "data"), "covid-vs-normal", patients_per_class=2, seed=0)
    shard = sorted((tmp_path / "data").glob(features.TFRECORD_PATTERN))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(writer.UnreadableDataError) as info:
        list(writer.read_records([str(shard)]))
    # TensorFlow says "truncated record at 1234' failed with EOF reached [Op:IteratorGetNext]"
    assert re.fullmatch(rf"{re.escape(str(shard))}: not a readable gzip TFRecord file "
                        r"\(DataLossError: truncated record at \d+ failed with EOF reached\)", str(info.value)), info.value


def test_records_that_are_not_curated_examples_are_named_by_file_and_position(tmp_path):
    synthetic.generate(str(tmp_path / "d"), "covid-vs-normal", patients_per_class=2, seed=0)
    shards = writer.record_files(str(tmp_path / "d"))
    good = tf.train.Example.FromString(next(writer.read_records(shards)))

    def with_feature(name, feature):
        example = tf.train.Example()
        example.CopyFrom(good)
        example.features.feature[name].CopyFrom(feature)
        return example.SerializeToString()

    path = str(tmp_path / "bad.tfrecord.gz")
    for record, what in (
            (b"hello world", "is not a tf.Example"),
            (with_feature(features.IMAGE, tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))),
             "has no single image (bytes) and label_index (int64)"),
            (with_feature(features.LABEL_INDEX, tf.train.Feature(int64_list=tf.train.Int64List(value=[]))),
             "has no single image (bytes) and label_index (int64)"),
            (with_feature(features.IMAGE, tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"not a png"]))),
             "has an image that is not PNG or JPEG data")):
        with tf.io.TFRecordWriter(path, options="GZIP") as w:
            w.write(good.SerializeToString())
            w.write(record)
        with pytest.raises(writer.UnreadableDataError) as info:
            list(writer.read_examples([path]))
        assert str(info.value) == f"{path}: record 1 {what}: not a curated covid-cxr dataset"
    assert [e for _, e in writer.read_examples(shards)][0] == good  # curated records pass


def _record(i: int, label: str = "covid") -> features.Record:
    return features.Record(png=b"\x89PNG fake %d" % i, label=label, label_index=features.get_task("covid-vs-normal")
                           .classes.index(label), patient_id=f"p{i}", group=f"g{i}", source="s", view="PA", sex="F", age=40)


def _read_shards(directory) -> list:
    paths = sorted(tf.io.gfile.glob(os.path.join(str(directory), features.TFRECORD_PATTERN)))
    return [os.path.basename(p) for p in paths], [
        tf.train.Example.FromString(raw.numpy()).features.feature[features.IMAGE].bytes_list.value[0]
        for p in paths for raw in tf.data.TFRecordDataset(p, compression_type="GZIP")]


def test_records_stream_to_shards_named_on_close(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "records-00000-of-00009.tfrecord.gz").write_bytes(b"stale")  # a larger earlier run's shards
    (out / ".records-00007.partial").write_bytes(b"stale")  # a killed run's partial shard
    w = writer.DatasetWriter(str(out), "covid-vs-normal", records_per_shard=2)
    for i in range(5):
        w.add(_record(i), f"ref{i}")
    # Written as they come (the writer keeps the manifest rows, not the images) ...
    assert len([n for n in os.listdir(out) if n.endswith(".partial")]) == 4
    assert not any(hasattr(row, "png") or "png" in row for row in w._accepted)
    summary = w.close()
    # ... and named by their count once it is known; nothing stale is left for ExampleGen.
    names, pngs = _read_shards(out)
    assert names == [f"records-{i:05d}-of-00003.tfrecord.gz" for i in range(3)]
    assert pngs == [b"\x89PNG fake %d" % i for i in range(5)]
    assert sorted(os.listdir(out)) == sorted(names + [features.MANIFEST, features.REJECTED, features.SUMMARY])
    assert summary["accepted"] == 5 and summary["patients"] == 5


def test_a_failed_curation_leaves_no_partial_shards(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        with writer.DatasetWriter(str(out), "covid-vs-normal", records_per_shard=2) as w:
            for i in range(3):
                w.add(_record(i), f"ref{i}")
            raise RuntimeError("disk full")
    assert os.listdir(out) == []


def test_nothing_accepted_still_writes_one_empty_shard(tmp_path):
    summary = writer.DatasetWriter(str(tmp_path / "out"), "covid-vs-normal").close()
    assert _read_shards(tmp_path / "out") == (["records-00000-of-00001.tfrecord.gz"], [])
    assert summary["accepted"] == 0


def test_an_interrupted_close_leaves_no_summary_over_new_shards(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = writer.DatasetWriter(str(out), "covid-vs-normal")
    first.add(_record(0), "ref0")
    first.close()
    assert (out / features.SUMMARY).exists()
    second = writer.DatasetWriter(str(out), "covid-vs-normal")
    second.add(_record(1), "ref1")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_write_csv", interrupted)  # after the new shards are in place
    with pytest.raises(KeyboardInterrupt):
        second.close()
    # The old summary would describe shards that are gone: without one, `run` refuses the directory.
    assert not (out / features.SUMMARY).exists()
    with pytest.raises(FileNotFoundError, match="summary.json' is missing"):
        writer.read_summary(str(out))


def test_the_summary_counts_patients_groups_and_rejections_by_kind(tmp_path):
    w = writer.DatasetWriter(str(tmp_path / "out"), "covid-vs-normal")
    w.add(_record(0), "ref0")
    w.add(features.Record(png=b"\x89PNG x", label="normal", label_index=0, patient_id="p0", group="g0", source="s"), "a")
    w.add(dataclasses.replace(_record(1), group="g0"), "ref1")  # p1's film duplicates p0's: two patients, one group
    for reason in ("unreadable image: truncated file", "unreadable image: not an image",
                   "near-duplicate of cohen:images/a.png", "near-duplicate of rsna:x:y.dcm"):
        w.reject("s", "r", reason)
    summary = w.close({"settings": {"max_side": 512}})  # curation's own entries join the counts
    assert summary["settings"] == {"max_side": 512}
    assert json.loads((tmp_path / "out" / features.SUMMARY).read_text()) == summary
    assert (summary["accepted"], summary["rejected"], summary["patients"], summary["groups"]) == (3, 4, 2, 1)
    assert summary["rejections"] == {"unreadable image": 2, "near-duplicate": 2}
    assert summary["per_source_class"] == {"s": {"covid": 2, "normal": 1}}
    # A label that is not its index's class would train the wrong class: refused, not written.
    with pytest.raises(ValueError, match="label 'covid' is not class 0 of covid-vs-normal"):
        writer.DatasetWriter(str(tmp_path / "other"), "covid-vs-normal").add(
            features.Record(png=b"\x89PNG", label="covid", label_index=0, patient_id="p", group="g", source="s"), "r")


@pytest.mark.parametrize("summary, message", [
    ({"task": "covid-vs-pneumonia", "accepted": 4, "per_class": {"covid": 2, "pneumonia": 2}},
     "curated for task 'covid-vs-pneumonia' but the config asks for 'covid-vs-normal'"),
    ({"task": "covid-vs-normal", "accepted": 0, "per_class": {}}, "holds no accepted images"),
    ({"task": "covid-vs-normal", "accepted": 5, "per_class": {"covid": 2, "normal": 2, "pneumonia": 1}},
     "holds labels ['pneumonia'] that task 'covid-vs-normal' does not know"),
    ({"task": "covid-vs-normal", "accepted": 2, "per_class": {"covid": 2, "normal": 0}}, "holds no normal images"),
    ({"task": "covid-vs-normal", "accepted": 2, "per_class": {"covid": 2}}, "holds no normal images"),
    # Hand-edited: a string's letters were read as labels ("holds labels ['o', 'p', 's']").
    ({"task": "covid-vs-normal", "accepted": 2, "per_class": "oops"},
     "'d': its summary.json's per_class is 'oops', not a count per class; curate again"),
])
def test_a_curated_directory_must_fit_the_task(summary, message):
    with pytest.raises(writer.CurationMismatch, match=re.escape(message)):
        writer.check_fits_task(summary, "d", features.get_task("covid-vs-normal"))
    writer.check_fits_task({"task": "covid-vs-normal", "accepted": 4, "per_class": {"covid": 2, "normal": 2}}, "d",
                           features.get_task("covid-vs-normal"))


def test_an_output_path_is_tried_before_the_work_and_a_bucket_is_left_to_the_run(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(writer.OutputError, match=r"^--out '.*file/sub' cannot be a directory: '.*file' is a file$"):
        writer.check_writable(str(tmp_path / "file" / "sub"), "--out")
    writer.check_writable(str(tmp_path / "new" / "dir"), "--out")
    assert not (tmp_path / "new").exists()  # tried, not made

    def unwritable(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(writer.tempfile, "TemporaryFile", unwritable)
    with pytest.raises(writer.OutputError, match=r"cannot be created: .*\(the system says: Permission denied\)$"):
        writer.check_writable(str(tmp_path / "new"), "--out")
    writer.check_writable("gs://bucket/out", "--out")  # not this machine's to try


def test_the_manifest_lists_each_record_once_in_shard_order_and_every_rejection_keeps_its_reason(tmp_path):
    import csv

    out = tmp_path / "out"
    w = writer.DatasetWriter(str(out), "covid-vs-normal", records_per_shard=2)
    for i in range(5):
        w.add(_record(i, "covid" if i % 2 else "normal"), f"ref{i}", image_hash=f"h{i}", note=f"n{i}" if i == 3 else "")
    reasons = ["unreadable image: truncated", "near-duplicate of cohen:a:b.png", "lateral view: DICOM ViewPosition"]
    for i, reason in enumerate(reasons):
        w.reject(f"src{i}", f"bad{i}", reason)
    summary = w.close()
    with open(out / features.MANIFEST, newline="", encoding="utf-8") as f:
        manifest = list(csv.DictReader(f))
    with open(out / features.REJECTED, newline="", encoding="utf-8") as f:
        rejected = list(csv.DictReader(f))
    _, pngs = _read_shards(out)
    # One manifest row per written record, in the same order: nothing lost, nothing twice.
    assert [row["source_ref"] for row in manifest] == [f"ref{i}" for i in range(5)]
    assert pngs == [b"\x89PNG fake %d" % i for i in range(5)]
    assert [(row["label"], row["label_index"], row["patient_id"], row["group"], row["hash"], row["note"])
            for row in manifest] == [("covid" if i % 2 else "normal", str(i % 2), f"p{i}", f"g{i}", f"h{i}",
                                      "n3" if i == 3 else "") for i in range(5)]
    assert (manifest[0]["source"], manifest[0]["view"], manifest[0]["sex"], manifest[0]["age"]) == ("s", "PA", "F", "40")
    assert rejected == [{"source": f"src{i}", "source_ref": f"bad{i}", "reason": r} for i, r in enumerate(reasons)]
    assert (summary["accepted"], summary["rejected"]) == (len(manifest), len(rejected))
    assert summary["per_class"] == {"normal": 3, "covid": 2}
    assert summary["rejections"] == {"unreadable image": 1, "near-duplicate": 1, "lateral view": 1}


def test_close_removes_old_shards_only(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "records-notes.txt").write_text("mine")  # named like a shard, but not one
    (out / "records-00003-of-00004.tfrecord.gz").write_bytes(b"stale")
    w = writer.DatasetWriter(str(out), "covid-vs-normal")
    w.add(_record(0), "ref0")
    w.close()
    assert (out / "records-notes.txt").read_text() == "mine"
    assert _read_shards(out)[0] == ["records-00000-of-00001.tfrecord.gz"]


def test_record_files_are_in_shard_order_whatever_the_directory_lists(tmp_path):
    import random

    names = [f"records-{i:05d}-of-00040.tfrecord.gz" for i in range(40)]
    random.Random(0).shuffle(names)
    for name in names:  # created out of order: a directory lists them in its own order
        (tmp_path / name).write_bytes(b"")
    assert writer.record_files(str(tmp_path)) == [str(tmp_path / n) for n in sorted(names)]


def test_an_image_is_judged_by_the_whole_png_signature(tmp_path):
    out = tmp_path / "out"
    w = writer.DatasetWriter(str(out), "covid-vs-normal")
    w.add(_record(0), "ref0")  # b"\x89PNG fake 0": the signature's first four bytes only
    w.close()
    with pytest.raises(writer.UnreadableDataError, match="record 0 has an image that is not PNG or JPEG data"):
        list(writer.read_examples(writer.record_files(str(out))))


@pytest.mark.parametrize("reason, kind", [
    ("unreadable image: truncated file", "unreadable image"),
    ("unreadable image: DICOM: no pixel data", "unreadable image"),  # the detail may hold ':' too
    ("near-duplicate of rsna:x:y.dcm", "near-duplicate"),
    ("lateral view", "lateral view"),
])
def test_a_rejection_is_counted_by_the_kind_before_its_detail(reason, kind):
    assert writer.reason_kind(reason) == kind


def test_the_summary_names_the_task_and_counts_every_rejection(tmp_path):
    w = writer.DatasetWriter(str(tmp_path / "out"), "three-class")
    for ref in ("a", "b", "c"):  # the same reason thrice: three rejections, one kind
        w.reject("s", ref, "unreadable image: truncated file")
    summary = w.close()
    assert (summary["task"], summary["classes"]) == ("three-class", list(features.get_task("three-class").classes))
    assert (summary["rejected"], summary["rejections"]) == (3, {"unreadable image": 3})


@pytest.mark.parametrize("make, message", [
    (lambda d: d.write_text("x"), "data directory '{d}' is a file, not a directory"),
    (lambda d: None, "data directory '{d}' does not exist"),
    (lambda d: (d.mkdir(), (d / features.SUMMARY).write_text("{}")),
     "no curated TFRecords (" + features.TFRECORD_PATTERN + ") in '{d}'; run `covid-cxr curate`"),
])
def test_a_data_directory_that_is_not_a_curated_one_is_named_with_why(tmp_path, make, message):
    make(tmp_path / "d")
    with pytest.raises(FileNotFoundError) as info:
        writer.read_summary(str(tmp_path / "d"))
    assert str(info.value).startswith(message.format(d=tmp_path / "d")), info.value


@pytest.mark.parametrize("error", [tf.errors.PermissionDeniedError, tf.errors.UnauthenticatedError,
                                   tf.errors.FailedPreconditionError, tf.errors.UnimplementedError])
def test_every_kind_of_unreadable_data_directory_is_a_user_error(monkeypatch, error):
    def failing(path):
        raise error(None, None, "File system scheme 'xyz' not implemented")

    monkeypatch.setattr(tf.io.gfile, "isdir", failing)
    with pytest.raises(writer.UnreadableDataError, match="^cannot read the data directory 'xyz://b/c': File system"):
        writer.read_summary("xyz://b/c")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_folder_under_proc_is_refused_as_one_that_cannot_be_made_not_as_a_missing_proc():
    """/proc exists, but making a file in it fails with "No such file or directory": the message said
    `'/proc': No such file or directory`, as if /proc were missing."""
    for path in ("/proc/covid-cxr-test", "/proc/covid-cxr-test/explain"):
        with pytest.raises(writer.OutputError) as info:
            writer.check_writable(path, "--explain")
        assert str(info.value).startswith(f"--explain {path!r} cannot be created: no folder can be made in '/proc' "
                                          "(the system says: ")


def test_an_unwritable_output_is_named_with_the_systems_reason_and_a_bucket_is_never_tried(tmp_path, monkeypatch):
    def unwritable(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(writer.tempfile, "TemporaryFile", unwritable)
    with pytest.raises(writer.OutputError) as info:
        writer.check_writable(str(tmp_path / "new"), "--out")
    assert str(info.value) == (f"--out '{tmp_path / 'new'}' cannot be created: no folder can be made in '{tmp_path}' "
                               "(the system says: Permission denied)")
    with pytest.raises(writer.OutputError) as info:
        writer.check_writable(str(tmp_path), "--out")
    assert str(info.value) == f"--out '{tmp_path}' cannot be written: no file can be made in it (the system says: Permission denied)"
    writer.check_writable("gs://bucket/out", "--out")  # not a folder "gs:" here, whatever this machine allows


def test_a_jpeg_image_is_a_curated_example(tmp_path):
    w = writer.DatasetWriter(str(tmp_path / "out"), "covid-vs-normal")
    w.add(dataclasses.replace(_record(0), png=tf.io.encode_jpeg(tf.zeros((8, 8, 1), tf.uint8)).numpy()), "ref0")
    w.close()
    [(_, example)] = writer.read_examples(writer.record_files(str(tmp_path / "out")))
    assert example.features.feature[features.IMAGE].bytes_list.value[0].startswith(b"\xff\xd8\xff")


@pytest.mark.parametrize("label_index", [-1, 2])
def test_a_label_index_that_is_no_class_of_the_task_is_refused(tmp_path, label_index):
    # -1 would pass as the last class ("covid") and be written as label -1; 2 would be an IndexError.
    w = writer.DatasetWriter(str(tmp_path / "out"), "covid-vs-normal")
    with pytest.raises(ValueError, match=f"^label 'covid' is not class {label_index} of covid-vs-normal "
                                         r"\(normal, covid\)$"):
        w.add(dataclasses.replace(_record(0), label_index=label_index), "ref0")
    assert w.close()["accepted"] == 0
