import pytest
import tf_keras as keras


@pytest.fixture
def pretrained_mobilenet(tmp_path):
    """A MobileNetV2-0.35 built from a weights FILE (random values), so it counts as pretrained."""
    source = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "mnv2.h5")
    source.save_weights(path)
    return path


@pytest.fixture
def eager_functions():
    """Runs every tf.function eagerly for the test. Tracing MobileNetV2's fit and evaluate functions
    costs ~15 s of CPU each, for fits of a few steps on 32 px films: most of a trial test's time
    (one fine-tuning trial: 85 s of CPU traced, 16 s eager). For tests of which epochs and phases a
    trial runs; the DAG tests train in graph mode."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)
