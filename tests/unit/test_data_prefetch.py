"""Read-ahead in a thread hands out the same batches, and records the position of the consumed ones only."""

import itertools

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


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_same_batches_and_the_consumed_position(depth):
    p = Prefetcher(Counter(), depth=depth)
    it = iter(p)
    assert take(it, 5) == [0, 1, 2, 3, 4]
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
