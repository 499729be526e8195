"""The near-copy check's rule, on hashes made to measure (evaluate_test runs it on films)."""
import numpy as np

from covid_cxr.serving import near_copies


def _hash(bits_set: int) -> bytes:
    """A 256-bit hash with its first ``bits_set`` bits 1."""
    return np.packbits(np.arange(256) < bits_set).tobytes()


def test_a_film_within_the_threshold_of_a_training_film_is_flagged_and_one_beyond_it_is_not(monkeypatch):
    metadata = {near_copies.KEY: {"hashes": [_hash(0).hex()], "image_size": 32, "border_crop": 0.0, "threshold": 40}}
    evaluated = {b"at": _hash(40), b"beyond": _hash(41), b"same": _hash(0)}
    monkeypatch.setattr(near_copies, "hash_encoded", lambda encoded, size, crop: [evaluated[e] for e in encoded])
    result = near_copies.check(metadata, [b"at", b"beyond", b"same"], ["film-a", "film-b", "film-c"])
    assert (result["copies"], result["films"], result["n"]) == (2, ["film-a", "film-c"], 3)
    assert near_copies.summary_line(result).startswith("WARNING: 2 of 3 films are near copies")


def test_a_model_without_fingerprints_gets_a_note_not_a_warning():
    result = near_copies.check({"family": "cnn3"}, [b"x"], ["film-a"])
    assert result["checked"] is False and near_copies.warning_text(result) is None
    assert near_copies.summary_line(result).startswith("near-copy check: the model carries no fingerprints")
    assert near_copies.summary_line({"checked": True, "copies": 0, "n": 3}) is None
