"""Read-ahead in a thread hands out the same batches, and records the position of the consumed ones only."""

import gc
import itertools
import threading
import time

import pytest
import torch

from data import Prefetcher


class Counter:
    """A resumable stream of [1, 1] tensors 0, 1, 2, ...; `fail_at` raises there."""

    def __init__(self, fail_at: int | None = None):
        self.pos, self.fail_at = 0, fail_at

    def __iter__(self):
        while True:
            if self.pos == self.fail_at:
                raise ValueError("the corpus file is unreadable")
            self.pos += 1
            yield torch.tensor([[self.pos - 1]])

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def take(it, n):
    return [int(b) for b in itertools.islice(it, n)]


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def readers() -> int:
    return sum(t.name == "anytrain-prefetch" for t in threading.enumerate())


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_same_batches_and_the_consumed_position(depth):
    counter = Counter()
    p = Prefetcher(counter, depth=depth)
    it = iter(p)
    assert take(it, 5) == [0, 1, 2, 3, 4]
    if depth:  # the queue holds `depth` batches and the thread one more, waiting to put it
        wait_until(lambda: counter.pos == 5 + depth + 1)
    assert p.state_dict() == {"pos": 5}  # the thread has read ahead, the state has not
    fresh = Prefetcher(Counter(), depth=depth)
    fresh.load_state_dict(p.state_dict())
    assert take(iter(fresh), 3) == [5, 6, 7]
    p.close()


def test_a_second_iter_continues_after_the_consumed_batches():
    p = Prefetcher(Counter(), depth=3)
    assert take(iter(p), 2) == [0, 1]
    assert take(iter(p), 2) == [2, 3]
    p.close()


def test_an_error_in_the_thread_reaches_the_training_loop():
    p = Prefetcher(Counter(fail_at=3), depth=2)
    it = iter(p)
    assert take(it, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="unreadable"):
        next(it)


def test_attributes_fall_through_and_depth_is_checked():
    stream = Counter()
    stream.batch_size = 8
    assert Prefetcher(stream).batch_size == 8
    with pytest.raises(ValueError, match="prefetch depth"):
        Prefetcher(stream, depth=-1)


def test_the_thread_stops_on_close_and_when_the_iterator_is_dropped():
    before = readers()
    p = Prefetcher(Counter(), depth=2)
    take(iter(p), 1)  # the iterator is dropped at once
    gc.collect()
    wait_until(lambda: readers() == before)
    it = iter(p)
    take(it, 1)
    assert readers() == before + 1
    p.close()
    assert readers() == before


def test_an_iterator_replaced_by_a_newer_one_refuses_to_hand_out_stale_batches():
    p = Prefetcher(Counter(), depth=3)
    old = iter(p)
    assert take(old, 2) == [0, 1]
    new = iter(p)
    assert take(new, 1) == [2]
    with pytest.raises(RuntimeError, match="replaced by a later iter"):
        next(old)
    assert p.state_dict() == {"pos": 3}  # untouched by the stale iterator
    p.close()
