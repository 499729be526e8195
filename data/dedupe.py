"""Near-duplicate detection and patient/duplicate grouping (union-find).

Hash: a 256-bit DCT perceptual hash of the border-cropped grayscale (``images.perceptual_hash``),
compared by hamming distance; near-duplicate when the distance is <= ``DEFAULT_THRESHOLD``.

Why 256 bits, threshold 40 (measured on ../shared/data, 2,911 images): with the classic 64-bit
pHash, distinct paediatric films (Kermany) and distinct adult films come within 4 bits of each other
(e.g. two different children at distance 4, a COVID and a Normal film of different patients at 2),
while some true copies that carry added arrows/text need 6-8 bits: no threshold separates them.
The 256-bit hash does: the covid19-radiography 224-px re-encodings of Cohen images sit at 0-18 bits,
copies with burnt-in annotations or small crops at 28-44, and the closest distinct pairs found
(visually checked) at 46 and above. 40 keeps a margin on the side of not merging distinct images;
``--hash-threshold`` changes it.

Grouping uses a looser threshold than rejection (``GROUP_THRESHOLD``, 56): re-crops of one film with
panel letters, arrows or burnt-in dates sit at 42-56 (a source audit found Cohen / Radiography pairs
at 42, 48, 52 and 56, three of them dealt into train and test), but distinct films also reach
48-50, so a film that close is kept, not rejected, and only shares its group. Linking a distinct
film costs nothing but a slightly coarser split; missing a copy leaks it. On the curated corpus
(covid-vs-normal, 1,655 films; three-class, 2,613) 56 joins 27 / 48 more pairs and leaves the
largest group at 8 films; 64 chains Kermany's children into a 46-film group and 72 into 759.

Pairwise distances are computed blockwise with one matrix product over the bit vectors
(hamming = |a| + |b| - 2 a.b), so a few thousand images take well under a second.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

DEFAULT_THRESHOLD = 40  # near-duplicate: the later copy is rejected
GROUP_THRESHOLD = 56  # near enough to be the same film re-cropped: kept, but in one patient group
_BLOCK = 1024


def hash_bits(hashes: Sequence[bytes]) -> np.ndarray:
    """[N] equal-length byte strings -> [N, bits] float32 0/1 matrix; ValueError when their lengths differ."""
    if not hashes:
        return np.zeros((0, 0), dtype=np.float32)
    lengths = {len(h) for h in hashes}
    if len(lengths) > 1:  # joined and reshaped they would be cut at the wrong places without a word
        raise ValueError(f"perceptual hashes differ in length: {min(lengths)} and {max(lengths)} bytes")
    packed = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), -1)
    return np.unpackbits(packed, axis=1).astype(np.float32)


def hamming(a_bits: np.ndarray, b_bits: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] Hamming distances between the rows of two :func:`hash_bits` matrices.
    |a| + |b| - 2 a.b: exact in float32, every term being an integer <= the number of bits."""
    return a_bits.sum(axis=1)[:, None] + b_bits.sum(axis=1)[None, :] - 2.0 * (a_bits @ b_bits.T)


def nearest(query: Sequence[bytes], reference: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash, the index of its nearest reference hash and their Hamming distance: two
    [len(query)] int arrays (-1 and one more than the bits when there is no reference). Blockwise over
    the references, so memory stays bounded however many there are."""
    query_bits, reference_bits = hash_bits(query), hash_bits(reference)
    index = np.full(len(query), -1, dtype=np.int64)
    distance = np.full(len(query), query_bits.shape[1] + 1 if len(query) else 0, dtype=np.int64)
    if not len(query) or not len(reference):
        return index, distance
    if query_bits.shape[1] != reference_bits.shape[1]:  # a product of the two would fail, or mislead
        raise ValueError(f"perceptual hashes differ in length: {query_bits.shape[1] // 8} and "
                         f"{reference_bits.shape[1] // 8} bytes")
    for start in range(0, len(reference), _BLOCK):
        block = hamming(query_bits, reference_bits[start : start + _BLOCK])
        best = block.argmin(axis=1)
        best_distance = np.rint(block[np.arange(len(query)), best]).astype(np.int64)
        closer = best_distance < distance  # ties keep the earlier reference
        index[closer], distance[closer] = start + best[closer], best_distance[closer]
    return index, distance


def near_pairs(hashes: Sequence[bytes], threshold: int) -> list[tuple[int, int, int]]:
    """All (i, j, distance) with i < j and Hamming distance(hashes[i], hashes[j]) <= threshold, sorted."""
    bits = hash_bits(hashes)
    n = len(hashes)
    if n < 2:
        return []
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, n, _BLOCK):
        dist = hamming(bits[start : start + _BLOCK], bits)
        rows, cols = np.nonzero(dist <= threshold + 0.5)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if i < c:
                pairs.append((i, c, int(round(float(dist[r, c])))))
    pairs.sort()
    return pairs


class UnionFind:
    """Disjoint sets over 0..n-1 whose representative is always the smallest member (stable)."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> int:
        a, b = self.find(i), self.find(j)
        if a == b:
            return a
        if b < a:
            a, b = b, a
        self.parent[b] = a
        return a


@dataclasses.dataclass(frozen=True)
class Duplicates:
    kept_of: dict[int, int]  # rejected index -> index of the kept image it duplicates
    pairs: list[tuple[int, int, int]]  # every near pair (i, j, distance), i < j


def find_duplicates(hashes: Sequence[bytes], threshold: int = DEFAULT_THRESHOLD,
                    pairs: Optional[Sequence[tuple[int, int, int]]] = None) -> Duplicates:
    """Greedy in index order: an image is kept unless it is near an earlier *kept* image.

    Index order is the caller's deterministic order, so the first copy is kept. The reason names the
    earliest kept image it is near. The near pairs (distance <= ``threshold``) are returned too.
    ``pairs``: :func:`near_pairs` of ``hashes`` already found at a larger threshold (curation's
    grouping one), so the search is not repeated; the farther pairs are ignored.
    """
    pairs = near_pairs(hashes, threshold) if pairs is None else [p for p in pairs if p[2] <= threshold]
    earlier: dict[int, list[int]] = {}
    for i, j, _ in pairs:
        earlier.setdefault(j, []).append(i)
    kept_of: dict[int, int] = {}
    for j in range(len(hashes)):
        for i in earlier.get(j, ()):  # ascending
            if i not in kept_of:
                kept_of[j] = i
                break
    return Duplicates(kept_of, pairs)
