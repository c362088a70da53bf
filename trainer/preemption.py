"""Preemption: a SIGTERM, SIGUSR1 or SIGINT (Ctrl-C) on any rank stops every rank at the same step, so they can
save together. A second Ctrl-C aborts at once, without saving."""

import signal
import sys

from . import distributed

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preemption:
    """Records signals; `agreed()` tells every rank the same answer. Over several ranks it all-reduces one flag on
    a CPU (gloo) group: no device synchronisation, about the cost of a small message per check."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {}
        self._group = None

    def __enter__(self) -> "Preemption":
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._group = distributed.cpu_group()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: the user does not want to wait for the save
        if signum == signal.SIGINT:
            print("interrupted: saving a checkpoint at the end of this step (Ctrl-C again to abort)", file=sys.stderr)
        self.received = signum

    def agreed(self) -> bool:
        """True on every rank when any rank has received a signal (a collective: call it on every rank)."""
        return distributed.any_rank(self.received is not None, self._group)
