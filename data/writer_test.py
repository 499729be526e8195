import os

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
