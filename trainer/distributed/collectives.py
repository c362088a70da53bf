"""The collectives the trainer issues outside the model: reductions of a few scalars, the CPU (gloo) group for
control flags and asynchronous saves, and `together`, which turns a failure on one rank into a stop on every rank.
Every function here is a no-op (or the identity) in a single process."""

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from .devices import auto_device_type
from .group import collective_timeout, is_collective_timeout, is_distributed

T = TypeVar("T")


def cpu_group(dedicated: bool = False) -> dist.ProcessGroup | None:
    """A process group that carries CPU tensors (control flags, asynchronous checkpoint writes): the world group
    when it is gloo already, else a new gloo group. `dedicated` always makes a new one, for collectives issued from
    another thread: two threads sharing one group interleave their collectives differently on each rank and hang.
    A new group gets the collective timeout in force (see steady_timeouts). A collective: call it on every rank.
    None without a group."""
    if not is_distributed() or dist.get_world_size() == 1:
        return None
    if dist.get_backend() == "gloo" and not dedicated:
        return dist.group.WORLD
    return dist.new_group(backend="gloo", timeout=collective_timeout())


def _reduce(x: torch.Tensor, op: dist.ReduceOp, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    if is_distributed() and dist.get_world_size(group) > 1:
        x = x.clone()
        dist.all_reduce(x, op=op, group=group)
    return x


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of a device tensor over ranks, without a host sync (gloo has no AVG: SUM, then divide)."""
    return _reduce(x, dist.ReduceOp.SUM) / (dist.get_world_size() if is_distributed() else 1)


def _scalar(x: float, op: dist.ReduceOp) -> float:
    if not is_distributed():
        return x
    gloo = dist.get_backend() == "gloo"
    device = "cpu" if gloo else torch.device(auto_device_type(), torch.accelerator.current_device_index())
    return _reduce(torch.tensor(x, dtype=torch.float32, device=device), op).item()  # fp64: not on every XPU


def sum_ints_over_ranks(values: list[int]) -> list[int]:
    """Element-wise exact sums of host integers over ranks (int64; a collective: call it on every rank)."""
    if not is_distributed():
        return values
    gloo = dist.get_backend() == "gloo"
    device = "cpu" if gloo else torch.device(auto_device_type(), torch.accelerator.current_device_index())
    return _reduce(torch.tensor(values, dtype=torch.int64, device=device), dist.ReduceOp.SUM).tolist()


def max_over_ranks(x: float) -> float:
    """The largest of a host number over ranks (a collective: call it on every rank)."""
    return _scalar(x, dist.ReduceOp.MAX)


def min_over_ranks(x: float) -> float:
    """The smallest of a host number over ranks."""
    return _scalar(x, dist.ReduceOp.MIN)


def any_rank(flag: bool, group: dist.ProcessGroup | None) -> bool:
    """True on every rank when `flag` is true on any rank of `group`, a CPU group from cpu_group() (None: this
    process alone). Costs one small gloo message and no device sync."""
    if group is None:
        return flag
    return bool(_reduce(torch.tensor([1 if flag else 0]), dist.ReduceOp.MAX, group).item())


class PeerFailed(RuntimeError):
    """Another rank failed in a step that every rank takes together; its own error is in its log."""


def together(fn: Callable[[], T]) -> T:
    """Run fn on this rank, then let every rank learn (one small all-reduce) whether fn failed on any rank, and
    raise on all of them if so: a failure on one rank, say an I/O error in a step only rank 0 does, never leaves
    the others waiting in the next collective until the timeout."""
    error, out = None, None
    try:
        out = fn()
    except Exception as e:  # re-raised below, on this rank and (as PeerFailed) on every other one
        error = e
    if error is not None and is_collective_timeout(error):
        raise error  # a rank is hung: agreeing with it would wait out the timeout once more
    if is_distributed():
        if max_over_ranks(0.0 if error is None else 1.0) and error is None:
            raise PeerFailed("another rank failed (its error is in its log): stopping this rank too")
    if error is not None:
        raise error
    return out
