"""Read a token store by memory map: any token range of a split, with no tokenization and no copy of the store
in RAM (only the touched pages, which the kernel may drop again)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from . import format as fmt

OPEN_MAPS = 64


class TokenStore:
    """One split of one store, read as a single stream of token ids (its shards in unit order)."""

    def __init__(self, path: str | os.PathLike, split: str) -> None:
        self.root = Path(path).expanduser().resolve()
        self.manifest = fmt.read_manifest(self.root)
        self.split = split
        self.dtype = np.dtype(fmt.DTYPES[self.manifest["dtype"]])
        self._bins: list[Path] = []
        sizes: list[int] = []
        for rec in self.manifest["inputs"]:
            n = int(rec["tokens"][split])
            if n == 0:
                continue
            self._check_shard(rec["unit"], n)
            self._bins.append(fmt.shard_path(self.root, rec["unit"], split, "bin"))
            sizes.append(n)
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.n_tokens = int(self.starts[-1])
        self._maps: OrderedDict[int, np.memmap] = OrderedDict()

    def _check_shard(self, unit: int, n_tokens: int) -> None:
        """Sizes only (cheap enough for a blend of thousands of stores): the .bin holds what its index says."""
        bin_path, idx_path = (fmt.shard_path(self.root, unit, self.split, e) for e in ("bin", "idx"))
        for p in (bin_path, idx_path):
            if not p.is_file():
                raise fmt.StoreError(f"{p} is missing from the token store {self.root}: tokenize the store again")
        try:
            offsets = np.load(idx_path, mmap_mode="r")
            indexed = int(offsets[-1]) if offsets.size else -1
        except (OSError, ValueError) as e:
            raise fmt.StoreError(f"{idx_path} cannot be read ({e}): tokenize the store again") from None
        actual = bin_path.stat().st_size
        if indexed != n_tokens or actual != n_tokens * self.dtype.itemsize:
            raise fmt.StoreError(
                f"{bin_path} holds {actual // self.dtype.itemsize} tokens but its index {idx_path.name} says "
                f"{indexed} and the manifest {n_tokens}: the shard is damaged or truncated; tokenize the store again"
            )

    def _map(self, i: int) -> np.memmap:
        """Shard i's memory map; at most OPEN_MAPS stay open per store (the kernel limits mappings per process)."""
        m = self._maps.get(i)
        if m is None:
            m = self._maps[i] = np.memmap(self._bins[i], dtype=self.dtype, mode="r")
            if len(self._maps) > OPEN_MAPS:
                self._maps.popitem(last=False)
        self._maps.move_to_end(i)
        return m

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split, across shard ends."""
        out, pos, end = [], start, start + length
        i = int(np.searchsorted(self.starts, pos, side="right")) - 1
        while pos < end:
            lo, hi = pos - int(self.starts[i]), min(end, int(self.starts[i + 1])) - int(self.starts[i])
            out.append(self._map(i)[lo:hi])
            pos += hi - lo
            i += 1
        return out[0] if len(out) == 1 else np.concatenate(out)

    def identity(self) -> str:
        """A short digest of what the store holds (its tokenizer and inputs), not of where it lies."""
        m = self.manifest
        key = json.dumps([m["tokenizer"]["fingerprint"], [r["blake2b"] for r in m["inputs"]], m["tokens"]])
        return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.root), "split": self.split, "tokens": self.n_tokens}
