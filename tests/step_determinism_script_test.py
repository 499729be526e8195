"""scripts/step_determinism.py: restoring every state makes a short replay repeat to the bit."""
import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _default_random_layers_after():
    """main() backs random layers with tf.random.Generator for the rest of its process; a test
    after this one gets the default back (under it, dropout ignored training.fit's seed)."""
    import tf_keras as keras

    before = keras.backend.experimental.is_tf_random_generator_enabled()
    yield
    if not before:
        keras.backend.experimental.disable_tf_random_generator()


def _films(root, per_class=8, size=40):
    rng = np.random.default_rng(1)
    for label in ("COVID", "Normal"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / label / f"{i}.png")
    return str(root / "*" / "*.png")


def _small_replay(tmp_path):
    """Arguments for three replays of two tiny batches on a scratch CNN (no weights needed)."""
    return ["--images", _films(tmp_path), "--family", "cnn3", "--size", "32",
            "--batch-size", "4", "--batches", "2", "--reps", "3", "--weights-dir", str(tmp_path)]


def test_replays_from_a_restored_state_repeat(load_script, tmp_path, capsys):
    # Augmentation and dropout on: if their generator states were not restored, each repetition
    # would draw new transforms and masks and the weights would differ. Far below the ~90
    # executions after which TensorFlow's schedule changes (docs/results.md, stop 18).
    script = load_script("step_determinism")
    outcomes = script.main(_small_replay(tmp_path))
    out = capsys.readouterr().out
    assert outcomes == 1
    assert "distinct outcomes: 1 of 3 [3]" in out
    assert len([line for line in out.splitlines() if line.startswith("rep ")]) == 3


def test_without_restoring_the_generators_the_replays_differ(load_script, tmp_path, monkeypatch):
    script = load_script("step_determinism")
    monkeypatch.setattr(script, "generator_states", lambda model: [])
    outcomes = script.main(_small_replay(tmp_path))
    assert outcomes > 1
