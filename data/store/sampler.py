"""Where global sample p comes from: which corpus, which of its windows, in which epoch. A pure function of
(p, window counts, weights, seed): no state to save, so a resume at any world size jumps straight to its place.

Why packed windows and not documents are shuffled: a window is the unit the model trains on, a corpus of any size
is addressed by arithmetic (window k is tokens [k*(L+1), (k+1)*(L+1))), so nothing per document is held in memory
and there is no index to build at start; every token is read once per epoch. A document longer than one window is
split over windows that land in different batches, as in any packing.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = 0x9E3779B97F4A7C15
_MAX_BLOCK_BITS = 22  # 4M samples: the block's layout (two int arrays) stays at ~50 MB
_ROUNDS = [np.uint64(((r + 1) * _GOLDEN) & (2**64 - 1)) for r in range(6)]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a good 64-bit hash (uint64 arithmetic wraps, as intended)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash64(*parts: int | np.ndarray) -> np.ndarray:
    """Combine integers (or arrays of them, element-wise) into 64-bit keys."""
    h = np.zeros((), dtype=np.uint64)
    for p in parts:
        v = np.asarray(p).astype(np.uint64) if isinstance(p, np.ndarray) else np.uint64(p & (2**64 - 1))
        with np.errstate(over="ignore"):
            h = _mix(np.asarray(h ^ v, dtype=np.uint64)) + np.uint64(_GOLDEN)
    return h


def permute(idx: np.ndarray, n: int, key: int | np.ndarray) -> np.ndarray:
    """A seeded pseudo-random bijection of [0, n), evaluated at `idx`: a 6-round Feistel network on the smallest
    even number of bits that covers n, with cycle walking to stay inside [0, n). `key` may differ per element."""
    idx = np.asarray(idx, dtype=np.uint64)
    if n <= 1:
        return np.zeros_like(idx)
    bits = max(2, (n - 1).bit_length())
    bits += bits % 2
    half, mask = np.uint64(bits // 2), np.uint64((1 << (bits // 2)) - 1)
    keys = np.broadcast_to(np.asarray(key, dtype=np.uint64), idx.shape)
    out, todo = idx.copy(), np.ones(idx.shape, dtype=bool)
    while todo.any():
        x, k = out[todo], keys[todo]
        left, right = x >> half, x & mask
        for c in _ROUNDS:
            with np.errstate(over="ignore"):
                f = _mix(right ^ _mix(k + c)) & mask
            left, right = right, left ^ f
        out[todo] = (left << half) | right
        todo = out >= np.uint64(n)
    return out.astype(np.int64)


def quotas(weights: list[float]) -> tuple[int, np.ndarray]:
    """Block size B and each corpus's whole share of every block of B samples (largest remainders). B is the
    smallest power of two of at least 4096 that gives every corpus >= 100 samples (each realised share then within
    1% of its weight), at most 2^22; a corpus below one sample per block is an error."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    block = 1 << min(_MAX_BLOCK_BITS, max(12, int(np.ceil(np.log2(100.0 / w.min())))))
    exact = w * block
    n = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - n), kind="stable")
    n[order[: block - int(n.sum())]] += 1
    if (n == 0).any():
        raise ValueError(
            f"a mixing weight of {w.min():.3g} of the total is below one sample in {block}: raise or drop it"
        )
    return block, n


class Blend:
    """The global sample sequence over several corpora of `windows[c]` windows, mixed by weight.

    The sequence is cut into blocks of B samples; block b gives corpus c exactly quota[c] samples, at positions
    drawn by a seeded permutation of the block, and they are the corpus's samples b*quota[c] ... in position order.
    So every corpus is read epoch by epoch (its window order reshuffled each epoch), its share is exact per block,
    and any position is found from its block alone.
    """

    def __init__(self, windows: list[int], weights: list[float], seed: int, keys: list[int]) -> None:
        self.windows = np.asarray(windows, dtype=np.int64)
        self.block, self.quota = quotas(weights)
        self.bounds = np.concatenate([[0], np.cumsum(self.quota)])
        self.seed = seed
        self.keys = np.asarray([int(hash64(seed, k)) for k in keys], dtype=np.uint64)
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def _layout(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Block b's corpus of each position and the position's rank among that corpus's positions (cached: a
        stream reads one block for many steps)."""
        if self._cached is None or self._cached[0] != b:
            slot = permute(np.arange(self.block), self.block, int(hash64(self.seed, 1, b)))
            corpus = (np.searchsorted(self.bounds, slot, side="right") - 1).astype(np.int32)
            order = np.argsort(corpus, kind="stable")  # by corpus, then by position
            rank = np.empty(self.block, dtype=np.int64)
            rank[order] = np.arange(self.block) - self.bounds[corpus[order]]
            self._cached = (b, corpus, rank)
        return self._cached[1], self._cached[2]

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(corpus, window, epoch) of each global sample position."""
        p = np.asarray(positions, dtype=np.int64)
        corpus, j = np.empty_like(p), np.empty_like(p)
        blocks = p // self.block
        for b in np.unique(blocks):
            sel = blocks == b
            layout, rank = self._layout(int(b))
            q = p[sel] % self.block
            corpus[sel] = layout[q]
            j[sel] = int(b) * self.quota[layout[q]] + rank[q]  # the corpus's own sample number
        n = self.windows[corpus]
        epoch, r = j // n, j % n
        return corpus, _per_corpus_permute(r, n, self.keys[corpus], epoch), epoch

    def samples_of(self, corpus: int, total: int) -> int:
        """How many of the first `total` samples come from `corpus` (whole blocks exactly, the rest rounded)."""
        full, rest = divmod(total, self.block)
        return int(full * self.quota[corpus] + round(rest * self.quota[corpus] / self.block))


def _per_corpus_permute(r: np.ndarray, n: np.ndarray, keys: np.ndarray, epoch: np.ndarray) -> np.ndarray:
    """Each corpus is shuffled anew every epoch: window r of epoch e -> a position in that epoch's order."""
    out = np.empty_like(r)
    for size in np.unique(n):
        sel = n == size
        out[sel] = permute(r[sel], int(size), hash64(keys[sel], epoch[sel]))
    return out
