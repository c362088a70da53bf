"""A rank's micro-batches of the global sample sequence over token stores (see sampler.py for the order).

Micro-batch k of rank r holds global samples [(k*W + r)*m, (k*W + r + 1)*m): the micro-batches of one step, over
all ranks, are always the same `global_batch` samples, whatever the world size W. The position is one number,
so a checkpoint resumes on any world size with no replay.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .blend import Corpus
from .format import StoreError
from .reader import TokenStore
from .sampler import Blend

log = logging.getLogger(__name__)
STATE_VERSION = 1


class StoreStream:
    """int64 tensors [batch_size, seq_len + 1], as TokenStream yields; train repeats corpora epoch by epoch, val
    ends when a corpus runs out (its held-out windows are each read once)."""

    def __init__(
        self,
        corpora: list[Corpus],
        *,
        split: str,
        seq_len: int,
        batch_size: int,
        seed: int,
        eos_id: int,
        vocab_size: int,
        rank: int = 0,
        world_size: int = 1,
        allow_change: bool = False,
    ) -> None:
        self.split, self.seq_len, self.batch_size = split, seq_len, batch_size
        self.eos_id, self.vocab_size = eos_id, vocab_size
        self.rank, self.world_size, self.allow_change = rank, world_size, allow_change
        window = seq_len + 1
        stores = [TokenStore(c.path, split) for c in corpora]
        if split == "train":
            small = [f"{c.path} ({s.n_tokens} tokens)" for c, s in zip(corpora, stores) if s.n_tokens < window]
            if small:
                raise StoreError(
                    f"token store(s) {', '.join(small)} hold fewer training tokens than one window of data.seq_len+1="
                    f"{window}: lower data.seq_len or leave them out"
                )
        else:  # a store with too small a held-out split is left out of evaluation, not a reason to fail
            keep = [i for i, s in enumerate(stores) if s.n_tokens >= window]
            corpora, stores = [corpora[i] for i in keep], [stores[i] for i in keep]
        self.corpora, self.stores = corpora, stores
        self.windows = [s.n_tokens // window for s in stores]
        self.blend = (
            Blend(self.windows, [c.weight for c in corpora], seed, [int(s.identity(), 16) for s in stores])
            if stores
            else None
        )
        self.key = _data_key(stores, corpora, seed, seq_len)
        self._k = 0  # micro-batches this rank has taken
        self._epochs = [0] * len(stores)

    # --- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION, "kind": "store", "split": self.split, "key": self.key,
            "samples": self._k * self.world_size * self.batch_size,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "store":
            raise ValueError(
                "the checkpoint's data position is for text sources, but this run reads token stores: resume with "
                "the data.sources it was saved with (or start from its weights: checkpoint.load_state=model)"
            )
        if state["key"] != self.key and not self.allow_change:
            raise ValueError(
                "the data changed since the checkpoint (token stores, weights, seed or data.seq_len differ): resume "
                "with the data it was saved with, or set data.allow_data_change=true to go on from the same global "
                "sample position with the new data"
            )
        per_micro = self.world_size * self.batch_size
        if state["samples"] % per_micro:
            raise ValueError(
                f"the checkpoint stopped after {state['samples']} samples, not a whole number of micro-batches of "
                f"{self.batch_size} x {self.world_size} ranks: resume with a trainer.micro_batch that divides it"
            )
        self._k = state["samples"] // per_micro
        # the epochs already begun, so that a resume does not announce them again
        done = state["samples"]
        self._epochs = [max(0, (self.blend.samples_of(c, done) - 1) // n) for c, n in enumerate(self.windows)]

    # --- iteration ---------------------------------------------------------------------------------------------
    def _note_epochs(self, corpus: np.ndarray, epoch: np.ndarray) -> None:
        for c in np.unique(corpus):
            e = int(epoch[corpus == c].max())
            if e > self._epochs[c]:
                self._epochs[c] = e
                if self.rank == 0:
                    log.info(
                        "data: %s starts epoch %d (repeat %d of its %d windows)",
                        self.corpora[c].name, e + 1, e, self.windows[c],
                    )  # fmt: skip

    def _rows(self, corpus: np.ndarray, window: np.ndarray) -> torch.Tensor:
        size = self.seq_len + 1
        rows = [self.stores[c].read(int(w) * size, size) for c, w in zip(corpus, window)]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def batch(self, k: int) -> torch.Tensor:
        """Micro-batch k of this rank (train)."""
        first = (k * self.world_size + self.rank) * self.batch_size
        corpus, window, epoch = self.blend.locate(np.arange(first, first + self.batch_size))
        self._note_epochs(corpus, epoch)
        return self._rows(corpus, window)

    def _val(self) -> Iterator[torch.Tensor]:
        """Each held-out window once: the blend's order with the used-up corpora left out (so a small corpus does
        not cut evaluation short), dealt to the ranks in turn; ends when every corpus is used up."""
        chunk, start, mine = 1 << 14, 0, []
        done = np.zeros(len(self.stores), dtype=bool)
        while not done.all():
            corpus, window, epoch = self.blend.locate(np.arange(start, start + chunk))
            start += chunk
            done[np.unique(corpus[epoch > 0])] = True
            fresh = epoch == 0
            picked = np.flatnonzero(fresh)[(self.rank - self._val_seen) % self.world_size :: self.world_size]
            self._val_seen += int(fresh.sum())
            mine += list(zip(corpus[picked], window[picked]))
            while len(mine) >= self.batch_size:
                rows, mine = mine[: self.batch_size], mine[self.batch_size :]
                yield self._rows(*map(np.asarray, zip(*rows)))

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.blend is None:
            return
        if self.split == "val":
            self._val_seen = 0
            yield from self._val()
            return
        while True:
            batch = self.batch(self._k)
            self._k += 1
            yield batch

    def plan(self, total_samples: int, max_repeat: float | None) -> list[str]:
        """One line per corpus: its windows and how often a run of `total_samples` reads it; an error if more than
        `max_repeat` epochs."""
        lines, over = [], []
        for c, (corpus, n) in enumerate(zip(self.corpora, self.windows)):
            epochs = self.blend.samples_of(c, total_samples) / n
            lines.append(f"{corpus.name}: weight {corpus.weight:g}, {n} windows, {epochs:.2f} epochs")
            if max_repeat is not None and epochs > max_repeat:
                over.append(f"{corpus.path} ({epochs:.2f} epochs)")
        if over:
            raise StoreError(
                f"this run would read {', '.join(over)} more often than data.max_repeat={max_repeat}: lower its "
                f"weight, add data, shorten the run, or raise data.max_repeat"
            )
        return lines


def _data_key(stores: list[TokenStore], corpora: list[Corpus], seed: int, seq_len: int) -> str:
    total = sum(c.weight for c in corpora) or 1.0
    key = [[s.identity(), round(c.weight / total, 12)] for s, c in zip(stores, corpora)], seed, seq_len
    return hashlib.blake2b(json.dumps(key).encode(), digest_size=8).hexdigest()
