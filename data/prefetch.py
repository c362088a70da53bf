"""Read a resumable batch stream ahead in a background thread, so the training step never waits on tokenisation
and packing, while a checkpoint still records exactly the batches the trainer consumed."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import torch


class ResumableStream(Protocol):
    def __iter__(self) -> Iterator[torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


_END = object()
JOIN_TIMEOUT_S = 30.0
log = logging.getLogger(__name__)


class Prefetcher:
    """Iterates `stream` in a thread, up to `depth` batches ahead of the consumer (0: no thread at all).

    The producer snapshots the stream's state after every batch it makes and sends it along with the batch, so
    `state_dict()` is the position after the last batch handed out, not after the last one read ahead. `pin`
    copies each batch to page-locked memory in the thread, which makes the trainer's non_blocking copy to the
    accelerator truly asynchronous. Attribute reads other than these fall through to the stream.
    """

    def __init__(self, stream: ResumableStream, depth: int = 2, pin: bool = False) -> None:
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self.stream, self.depth, self.pin = stream, depth, pin
        self._consumed: dict[str, Any] | None = None  # state after the last batch handed out
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._generation = 0  # bumped by every iter(), load_state_dict() and close(); older iterators refuse to go on

    def __getattr__(self, name: str) -> Any:  # batch_size, seq_len, vocab_size, ... of the wrapped stream
        if name == "stream":
            raise AttributeError(name)
        return getattr(self.stream, name)

    def state_dict(self) -> dict[str, Any]:
        return self._consumed if self._consumed is not None else self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` at the next iter(). Batches read ahead from the old position are dropped, and an
        iterator taken before this call raises instead of handing them out."""
        self.close()
        self.stream.load_state_dict(state)
        self._consumed = None

    def close(self) -> None:
        """Stop the reading thread; iterators taken so far become invalid. Also done when an iterator is dropped."""
        self._generation += 1
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=JOIN_TIMEOUT_S)
            if self._thread.is_alive():  # stuck in a read; it is a daemon and dies with the process
                log.warning("the data read-ahead thread did not stop within %.0f s", JOIN_TIMEOUT_S)
            self._thread = None

    def _check(self, generation: int) -> None:
        if generation != self._generation:
            raise RuntimeError(
                "this data iterator was replaced by a later iter(), load_state_dict() or close(): use the new one"
            )

    def __iter__(self) -> Iterator[torch.Tensor]:
        # A second iter() goes on from what was consumed, not from what the last thread had read ahead.
        if self._thread is not None or self._consumed is not None:
            self.load_state_dict(self.state_dict())
        self._generation += 1
        generation = self._generation
        if self.depth == 0:
            for batch in self.stream:
                self._check(generation)
                self._consumed = self.stream.state_dict()
                yield batch
            return
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        self._stop = stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(q, stop), name="anytrain-prefetch", daemon=True)
        self._thread = thread
        thread.start()
        try:
            while True:
                self._check(generation)
                try:
                    item = q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                self._check(generation)
                batch, self._consumed = item
                yield batch
        finally:  # a finished, failed or dropped iterator stops its own thread
            stop.set()
            thread.join(timeout=JOIN_TIMEOUT_S)
            if self._thread is thread:
                self._thread = None

    def _produce(self, q: queue.Queue, stop: threading.Event) -> None:
        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for batch in self.stream:
                if self.pin:
                    batch = batch.pin_memory()
                if not put((batch, self.stream.state_dict())):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer, which raises it in the training loop
            put(e)
