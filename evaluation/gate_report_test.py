"""Reading an Evaluator output: only the gate's own metrics, at the served decision, reach the report."""
import tensorflow as tf
from tensorflow_model_analysis.proto import metrics_for_slice_pb2

from covid_cxr.evaluation import gate_report


def _write_metrics(directory, values: dict) -> None:
    record = metrics_for_slice_pb2.MetricsForSlice()  # empty slice key: the whole test split
    for name, value in values.items():
        kv = record.metric_keys_and_values.add()
        kv.key.name = name
        kv.value.double_value.value = value
    with tf.io.TFRecordWriter(f"{directory}/metrics-00000-of-00001.tfrecord") as out:
        out.write(record.SerializeToString())


def test_compiled_training_metrics_in_an_older_evaluation_do_not_overwrite_the_served_ones(tmp_path):
    # As TFMA wrote them when the model's compiled metrics were included: binary_accuracy at the
    # served decision, then the model's own "accuracy" at 0.5 on its raw probability, and its loss.
    _write_metrics(tmp_path, {"binary_accuracy": 0.647, "recall": 1.0, "accuracy": 0.529, "loss": 6.53})
    report = gate_report.read_gate_report(str(tmp_path), blessed=False)
    assert report.metrics == {"accuracy": 0.647, "sensitivity": 1.0}
