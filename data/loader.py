"""The resumable stream of packed token batches."""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import torch
from tokenizers import Tokenizer

from .diagnose import doc_text, explained, local_bytes, null_counts
from .packing import Packer
from .sources import keep
from .tokenizer import eos_id, tokenizer_vocab_size

SPLITS = ("train", "val")
STATE_VERSION = 2
log = logging.getLogger(__name__)

NULL_SCAN_BYTES = 1 << 30  # the null-text report names files only for corpora up to this size


class TokenStream:
    """Yields int64 tensors of shape [batch_size, seq_len + 1] (inputs + shifted targets).

    The train split cycles over epochs forever; the val split stops after one pass (an incomplete last batch is
    dropped so every batch has the same shape). `state_dict()` taken after k batches lets a fresh stream built from
    the same config continue with batch k+1 exactly.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        tokenizer: Tokenizer,
        *,
        split: str,
        batch_size: int,
        seq_len: int,
        eos_token: str,
        val_fraction: float,
        pull_chars: int = 1 << 16,
        pull_docs: int = 512,
        shuffle_docs: int = 0,
        seed: int = 0,
        announce: bool = False,
        sources: Sequence[Any] = (),
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} (got {split!r})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.split = split
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.val_fraction = val_fraction
        self.vocab_size = tokenizer_vocab_size(tokenizer)
        self.eos_id = eos_id(tokenizer, eos_token)
        # Documents are pulled and tokenised in chunks (encode_batch is multi-threaded); a chunk ends after
        # `pull_docs` documents or `pull_chars` characters, which bounds the tokens kept in the state.
        self.pull_chars = pull_chars
        self.pull_docs = pull_docs
        self._packer = Packer(seq_len + 1, self.eos_id)
        # Tokenised documents not yet in the packer (the shuffle buffer), as tuples: a state snapshot after every
        # batch (the Prefetcher takes one) then copies references, not every token.
        self._pending: list[tuple[int, ...]] = []
        # Documents leave the buffer in a random order once it holds more than `shuffle_docs` (all of it at the end
        # of a pass); the RNG's state is saved with the buffer, so a resume draws the same order.
        self.shuffle_docs = shuffle_docs if split == "train" else 0
        self._rng = random.Random(seed)
        self._drain = False
        self.announce = announce  # log epoch wrap-arounds, dropped and repeated data (one stream of the run does)
        self.sources = sources  # data.sources, to name the file behind a bad document
        self._nulls = 0  # documents of this pass whose text is null or missing (dropped)
        self._pass_tokens: int | None = 0  # tokens read in this pass; None: unknown (resumed from an older state)
        self._epoch = 0
        self._ds_state: dict | None = None  # dataset position after the last document pulled
        self._done = False  # val split: the single pass is over
        self._empty_passes = 0  # consecutive dataset passes that produced no document

    # --- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python position: dataset state (after all pulled docs) + tokens pulled but not yet yielded."""
        return {
            "version": STATE_VERSION,
            "split": self.split,
            "epoch": self._epoch,
            "done": self._done,
            "dataset": copy.deepcopy(self._ds_state),
            "pending": list(self._pending),
            "packer": self._packer.state_dict(),
            "rng": self._rng.getstate(),
            "nulls": self._nulls,
            "pass_tokens": self._pass_tokens,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`; takes effect at the next `iter()`."""
        if state.get("version") not in (1, STATE_VERSION) or state.get("split") != self.split:
            raise ValueError(
                f"data stream state is for split={state.get('split')!r} version={state.get('version')!r}, "
                f"expected split={self.split!r} version={STATE_VERSION}; was the checkpoint saved by another stream?"
            )
        self._epoch = int(state["epoch"])
        self._done = bool(state["done"])
        self._ds_state = copy.deepcopy(state["dataset"])
        self._pending = [tuple(int(t) for t in doc) for doc in state["pending"]]
        self._packer.load_state_dict(state["packer"])
        self._nulls = int(state.get("nulls", 0))
        self._pass_tokens = state.get("pass_tokens")  # absent from states saved before it was counted
        if "rng" in state:  # version 1 (before the shuffle) has none: the shuffle starts from its seed
            version, internal, gauss = state["rng"]
            self._rng.setstate((version, tuple(internal), gauss))

    # --- iteration ---------------------------------------------------------------------------------------------
    def _open(self) -> Iterator[dict]:
        self.dataset.set_epoch(self._epoch)
        # None restarts the epoch from its first document.
        self.dataset.load_state_dict(self._ds_state)
        return iter(self.dataset)

    def _pull(self, it: Iterator[dict]) -> bool:
        """Read one chunk of documents into `_pending`; False when the dataset pass is exhausted."""
        texts: list[str] = []
        chars = 0
        exhausted = False
        with explained(self.sources):  # a decode error or a number for a text: name the file
            while len(texts) < self.pull_docs and chars < self.pull_chars:
                ex = next(it, None)
                if ex is None:
                    exhausted = True
                    break
                text = doc_text(ex)
                if text is None:
                    self._nulls += 1
                if keep(text, self.split, self.val_fraction):
                    texts.append(text)
                    chars += len(text)
        # Snapshot right after the last pull: together with `_pending` it accounts for every document read.
        self._ds_state = self.dataset.state_dict()
        if texts:
            self._empty_passes = 0
            # encode_batch_fast (tokenizers >= 0.21) skips character offsets: ~30% faster, same ids.
            encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
            encs = encode(texts, add_special_tokens=False)
            self._pending.extend(tuple(e.ids) for e in encs)
            if self._pass_tokens is not None:
                self._pass_tokens += sum(len(e.ids) + 1 for e in encs)  # + the EOS each document ends with
        return not exhausted

    def _take(self) -> list[int]:
        if not self.shuffle_docs:
            return self._pending.pop(0)
        i = self._rng.randrange(len(self._pending))
        self._pending[i], self._pending[-1] = self._pending[-1], self._pending[i]
        return self._pending.pop()

    def _next_window(self, it_box: list[Iterator[dict] | None]) -> list[int] | None:
        while True:
            window = self._packer.pop()
            if window is not None:
                return window
            if self._pending and (self._drain or self._done or len(self._pending) > self.shuffle_docs):
                self._packer.push(self._take())
                continue
            if self._done:
                return None
            if it_box[0] is None:
                it_box[0] = self._open()
                self._drain = False
            more = self._pull(it_box[0])
            if not more and self._pending:
                self._drain = True  # the pass is read: empty the buffer before the next one
                continue
            if not more:
                # Pass over: train starts the next epoch, val ends.
                it_box[0] = None
                if self.split == "train":
                    # Two passes in a row without a document (the first may have started mid-pass after a
                    # resume) mean the train split is empty: fail instead of spinning over epochs forever.
                    self._empty_passes += 1
                    if self._empty_passes >= 2:
                        raise ValueError(
                            "the train split has no documents: every document is empty or held out; "
                            "check data.sources and lower data.val_fraction"
                        )
                    self._wrap()
                else:
                    self._done = True

    def _wrap(self) -> None:
        """The train split's pass is over: the next epoch begins. The first wrap reports what the pass held."""
        if self.announce and self._epoch == 0:
            self._report_nulls()
            batch = self.batch_size * (self.seq_len + 1)
            if self._pass_tokens is not None and self._pass_tokens < batch:
                log.warning(
                    "data: the train split holds only %d tokens (this stream's share of one pass), fewer than one "
                    "batch of %d x %d: every batch repeats the same documents; add data to data.sources (or lower "
                    "data.val_fraction)", self._pass_tokens, self.batch_size, self.seq_len + 1,
                )  # fmt: skip
        self._epoch += 1
        self._ds_state = None
        self._nulls, self._pass_tokens = 0, 0
        if self.announce:
            log.info("data: every document has been read; epoch %d begins (repeat %d)", self._epoch + 1, self._epoch)

    def _report_nulls(self) -> None:
        """One warning per source that holds documents without text, with the count per file (a scan of the
        files, once per run: the stream alone cannot tell which source a document came from). A corpus over
        NULL_SCAN_BYTES is not scanned: it would stall this rank's read-ahead while the others wait."""
        if not self._nulls:
            return
        found = null_counts(self.sources) if local_bytes(self.sources) <= NULL_SCAN_BYTES else []
        for i, column, counts in found:
            files = ", ".join(f"{p}: {n}" for p, n in sorted(counts.items()))
            log.warning(
                "data.sources[%d]: %d documents have no `%s` (null or missing) and are skipped (%s); fill or drop "
                "them to silence this", i, sum(counts.values()), column, files,
            )  # fmt: skip
        if not found:  # hub sources, or a corpus too large to scan: only this stream's count is known
            log.warning("data: %d documents of one pass over the train split have no text (null) and are skipped",
                        self._nulls)  # fmt: skip

    def __iter__(self) -> Iterator[torch.Tensor]:
        it_box: list[Iterator[dict] | None] = [None]
        while True:
            rows: list[list[int]] = []
            while len(rows) < self.batch_size:
                window = self._next_window(it_box)
                if window is None:
                    return  # val pass over; the incomplete batch is dropped
                rows.append(window)
            yield torch.tensor(rows, dtype=torch.long)


class RoundRobin:
    """A rank's several sub-streams, one batch from each in turn. The state is keyed by global stream index so a
    checkpoint can be regrouped for another world size that divides the number of streams."""

    def __init__(self, streams: list[TokenStream], first_index: int, step: int) -> None:
        self.streams = streams
        self.indices = [first_index + i * step for i in range(len(streams))]
        self.batch_size, self.seq_len = streams[0].batch_size, streams[0].seq_len
        self.vocab_size, self.eos_id = streams[0].vocab_size, streams[0].eos_id
        self._next = 0

    def __len__(self) -> int:
        return len(self.streams)

    def state_dict(self) -> dict[str, Any]:
        return {"next": self._next, "streams": {str(i): s.state_dict() for i, s in zip(self.indices, self.streams)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """`state["streams"]` may hold more streams than this rank reads (the merged states of every rank of a run
        saved with another world size); each stream takes its own."""
        if state.get("kind") == "store":
            raise ValueError(
                "the checkpoint's data position is for token stores, but this run reads text sources: resume with "
                "the stores it was saved with (or start from its weights: checkpoint.load_state=model)"
            )
        missing = [i for i in self.indices if str(i) not in state["streams"]]
        if missing:
            raise ValueError(
                f"the saved data position has no state for stream(s) {missing}: the checkpoint was written with "
                f"other data.streams; resume with the data.streams it was saved with"
            )
        self._next = int(state.get("next", 0)) % len(self.streams)
        for i, s in zip(self.indices, self.streams):
            s.load_state_dict(state["streams"][str(i)])

    def __iter__(self) -> Iterator[torch.Tensor]:
        iters = [iter(s) for s in self.streams]
        while True:
            batch = next(iters[self._next], None)
            if batch is None:
                return  # a val sub-stream ran dry: stop with equal shares from every stream
            self._next = (self._next + 1) % len(iters)
            yield batch
