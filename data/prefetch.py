"""Read a resumable batch stream ahead in a background thread, so the training step never waits on tokenisation
and packing, while a checkpoint still records exactly the batches the trainer consumed."""

from __future__ import annotations

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

    def __getattr__(self, name: str) -> Any:  # batch_size, seq_len, vocab_size, ... of the wrapped stream
        if name == "stream":
            raise AttributeError(name)
        return getattr(self.stream, name)

    def state_dict(self) -> dict[str, Any]:
        return self._consumed if self._consumed is not None else self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` at the next iter(); batches read ahead from the old position are dropped."""
        self.close()
        self.stream.load_state_dict(state)
        self._consumed = None

    def close(self) -> None:
        """Stop the reading thread (it is a daemon, so an unclosed one never blocks the exit)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._stop = threading.Event()

    def __iter__(self) -> Iterator[torch.Tensor]:
        # A second iter() goes on from what was consumed, not from what the last thread had read ahead.
        if self._thread is not None or self._consumed is not None:
            self.load_state_dict(self.state_dict())
        if self.depth == 0:
            for batch in self.stream:
                self._consumed = self.stream.state_dict()
                yield batch
            return
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = self._stop
        self._thread = threading.Thread(target=self._produce, args=(q, stop), name="anytrain-prefetch", daemon=True)
        self._thread.start()
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            batch, self._consumed = item
            yield batch

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
