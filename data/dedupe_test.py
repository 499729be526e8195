import numpy as np
import pytest

from covid_cxr.data import dedupe
from covid_cxr.data.testing import hamming


def random_hashes(n, seed=0, nbytes=32):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes() for _ in range(n)]


def flip(h: bytes, bits) -> bytes:
    a = np.unpackbits(np.frombuffer(h, np.uint8))
    a[list(bits)] ^= 1
    return np.packbits(a).tobytes()


def test_hamming():
    h = random_hashes(1)[0]
    assert hamming(h, h) == 0
    assert hamming(h, flip(h, range(0, 37))) == 37


def test_near_pairs_equals_brute_force():
    hashes = random_hashes(300, seed=1)
    hashes += [flip(hashes[i], range(i % 50)) for i in range(0, 300, 7)]  # planted near copies
    expected = sorted(
        (i, j, hamming(hashes[i], hashes[j]))
        for i in range(len(hashes)) for j in range(i + 1, len(hashes))
        if hamming(hashes[i], hashes[j]) <= 40
    )
    assert len(expected) >= 30
    assert dedupe.near_pairs(hashes, 40) == expected


def test_near_pairs_across_blocks(monkeypatch):
    monkeypatch.setattr(dedupe, "_BLOCK", 16)
    hashes = random_hashes(50, seed=2)
    hashes.append(flip(hashes[3], [1, 2]))
    assert dedupe.near_pairs(hashes, 10) == [(3, 50, 2)]


def test_union_find_root_is_smallest_member():
    uf = dedupe.UnionFind(6)
    uf.union(4, 5)
    uf.union(5, 2)
    uf.union(1, 0)
    assert uf.find(5) == uf.find(4) == 2
    assert [uf.find(i) for i in range(6)] == [0, 0, 2, 3, 2, 2]


def test_find_duplicates_keeps_first_copy_and_reports_all_pairs():
    base = random_hashes(3, seed=3)
    a = base[0]
    b = flip(a, range(0, 30))  # near a (30)
    c = flip(b, range(30, 60))  # near b (30) but 60 from a
    hashes = [a, base[1], b, c, base[2], a]
    d = dedupe.find_duplicates(hashes, 40)
    # b is a copy of a (kept); c is only near the rejected b, so c is kept; the last a is a copy of a.
    assert d.kept_of == {2: 0, 5: 0}
    assert (2, 3, 30) in d.pairs and (0, 5, 0) in d.pairs


def test_find_duplicates_names_the_earliest_kept_copy_and_filters_given_pairs_at_the_threshold():
    a, other = random_hashes(2, seed=4)
    assert dedupe.near_pairs([a, flip(a, [0])], 1) == [(0, 1, 1)]  # two images are enough for a pair
    b = flip(a, range(0, 50))  # 50 from a: kept at 40
    c = flip(a, range(0, 25))  # 25 from both a and b
    hashes = [a, b, other, c]
    assert dedupe.find_duplicates(hashes, 40).kept_of == {3: 0}  # the earliest kept image it is near, not the last
    grouping = dedupe.near_pairs(hashes, 56)
    assert (0, 1, 50) in grouping
    d = dedupe.find_duplicates(hashes, 40, pairs=grouping)
    assert d.kept_of == {3: 0} and d.pairs == [(0, 3, 25), (1, 3, 25)]
    assert dedupe.find_duplicates(hashes, 25, pairs=grouping).pairs == [(0, 3, 25), (1, 3, 25)]  # <=, inclusive


def test_no_hashes_have_no_pairs_and_no_duplicates():
    assert dedupe.hash_bits([]).shape == (0, 0)
    assert dedupe.near_pairs([], 40) == []
    assert dedupe.find_duplicates([]) == dedupe.Duplicates({}, [])


def test_union_returns_the_new_root_and_is_a_no_op_within_a_set():
    uf = dedupe.UnionFind(5)
    assert uf.union(4, 2) == 2 and uf.union(3, 4) == 2 and uf.union(2, 3) == 2
    assert [uf.find(i) for i in range(5)] == [0, 1, 2, 2, 2]


def test_by_default_a_copy_40_bits_away_is_rejected_and_one_41_away_kept():
    a, other = random_hashes(2, seed=5)
    hashes = [a, other, flip(a, range(40)), flip(a, range(41, 82))]
    assert dedupe.find_duplicates(hashes).kept_of == {2: 0}
    # the documented measurements (module docstring): grouping is looser than rejection
    assert (dedupe.DEFAULT_THRESHOLD, dedupe.GROUP_THRESHOLD) == (40, 56)


def test_find_compresses_the_path_it_walks():
    uf = dedupe.UnionFind(5)
    for i in range(3, -1, -1):
        uf.union(i, i + 1)  # a chain 4 -> 3 -> 2 -> 1 -> 0
    assert uf.parent[4] == 3 and uf.find(4) == 0
    assert uf.parent == [0] * 5  # every film walked now points at the root: long duplicate chains stay cheap


def test_hashes_of_unequal_length_are_refused_not_misread():
    h32, h8 = random_hashes(1)[0], random_hashes(1, nbytes=8)[0]
    # 8 + 24 bytes would reshape into two 16-byte rows without complaint: silently wrong pairs
    for hashes in ([h8, h32[:24]], [h32, h8], [h32, b""]):
        lengths = sorted({len(h) for h in hashes})
        message = rf"^perceptual hashes differ in length: {lengths[0]} and {lengths[-1]} bytes$"
        with pytest.raises(ValueError, match=message):
            dedupe.near_pairs(hashes, 40)


def test_nearest_names_each_querys_closest_reference_across_blocks(monkeypatch):
    monkeypatch.setattr(dedupe, "_BLOCK", 16)  # the closest reference in a later block must still win
    reference = random_hashes(50, seed=5)
    query = [flip(reference[40], range(7)), flip(reference[3], range(60)), random_hashes(1, seed=6)[0],
             reference[20]]
    index, distance = dedupe.nearest(query, reference)
    expected = [min(range(50), key=lambda j: (hamming(q, reference[j]), j)) for q in query]
    assert index.tolist() == expected and expected[0] == 40 and expected[3] == 20
    assert distance.tolist() == [hamming(q, reference[j]) for q, j in zip(query, expected)]
    assert distance[0] == 7 and distance[3] == 0
    # Ties keep the earlier reference, as curation keeps the first copy.
    assert dedupe.nearest([reference[9]], [reference[9], reference[9]])[0].tolist() == [0]


def test_nearest_without_references_finds_nothing_and_refuses_mixed_lengths():
    index, distance = dedupe.nearest(random_hashes(2, seed=7), [])
    assert index.tolist() == [-1, -1] and (distance > 256).all()  # beyond any threshold
    assert dedupe.nearest([], random_hashes(2, seed=7))[0].shape == (0,)
    with pytest.raises(ValueError, match="perceptual hashes differ in length: 32 and 8 bytes"):
        dedupe.nearest(random_hashes(1), random_hashes(1, nbytes=8))
