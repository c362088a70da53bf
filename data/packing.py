"""Pack tokenised documents into fixed-length training windows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class Packer:
    """Concatenates documents, each followed by EOS, and cuts consecutive non-overlapping windows of `window` tokens.

    Nothing is dropped or repeated: tokens that do not fill a window yet wait in the buffer (and in `state_dict`).
    """

    def __init__(self, window: int, eos_id: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 (got {window})")
        self.window = window
        self.eos_id = eos_id
        self._buf: list[int] = []
        self._pos = 0  # start of the unconsumed part of _buf; avoids re-slicing the list for every window

    def __len__(self) -> int:
        """Tokens waiting to be packed."""
        return len(self._buf) - self._pos

    def push(self, tokens: Iterable[int]) -> None:
        """Add one document (without EOS; the packer appends it)."""
        self._buf.extend(tokens)
        self._buf.append(self.eos_id)

    def pop(self) -> list[int] | None:
        """The next full window, or None if fewer than `window` tokens are buffered."""
        if len(self) < self.window:
            return None
        out = self._buf[self._pos : self._pos + self.window]
        self._pos += self.window
        if self._pos >= len(self._buf) // 2:
            # Compact once half the list is consumed: amortised O(1) per token.
            del self._buf[: self._pos]
            self._pos = 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "eos_id": self.eos_id, "buffer": self._buf[self._pos :]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["window"] != self.window or state["eos_id"] != self.eos_id:
            raise ValueError(
                f"packer state is for window={state['window']}, eos_id={state['eos_id']} but this packer has "
                f"window={self.window}, eos_id={self.eos_id}; resume with the same data.seq_len and tokenizer"
            )
        self._buf = [int(t) for t in state["buffer"]]
        self._pos = 0
