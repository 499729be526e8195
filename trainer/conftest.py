import pytest
import tf_keras as keras


@pytest.fixture
def pretrained_mobilenet(tmp_path):
    """A MobileNetV2-0.35 built from a weights FILE (random values), so it counts as pretrained."""
    source = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "mnv2.h5")
    source.save_weights(path)
    return path
