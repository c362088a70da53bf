"""The process group's lifetime: started on this rank's device, and destroyed only after what holds it is gone.
Its collectives may wait the start-up budget until the first step is done, and the steady-state timeout after."""

import gc
import logging
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

from .devices import choose_backend, resolve_device
from .ranks import Ranks, make_store

log = logging.getLogger(__name__)
# How gloo words a wait that ran out: "Timed out waiting 15000ms for recv operation to complete".
_GLOO_TIMEOUT = re.compile(r"timed out waiting \d+ ?ms", re.IGNORECASE)
STARTUP, STEADY = "parallel.startup_timeout_s", "parallel.timeout_s"


@dataclass
class _Timeout:
    """The collective timeout in force on this rank, and the setting it comes from (the error names it)."""

    seconds: float = 1800.0
    setting: str = STARTUP


_TIMEOUT = _Timeout()


class CollectiveTimeout(RuntimeError):
    """A collective waited longer than the timeout in force: another rank stopped, hung or fell far behind."""


def init_distributed(ranks: Ranks, device: torch.device, backend: str, store: dist.Store, timeout_s: float) -> None:
    """Start the process group on an already-selected device (set before init, and passed as device_id). Its
    collectives may wait `timeout_s`, the start-up budget, until steady_timeouts() lowers it."""
    _TIMEOUT.seconds, _TIMEOUT.setting = timeout_s, STARTUP
    dist.init_process_group(
        backend=backend,
        store=store,
        rank=ranks.rank,
        world_size=ranks.world_size,
        timeout=timedelta(seconds=timeout_s),
        device_id=device if device.type != "cpu" else None,
    )


def is_distributed() -> bool:
    """Whether a process group is running (false for a single process)."""
    return dist.is_available() and dist.is_initialized()


def collective_timeout() -> timedelta:
    """The timeout in force, for a group made now (torch's new_group would give gloo 30 minutes, NCCL 10)."""
    return timedelta(seconds=_TIMEOUT.seconds)


def _set_group_timeout(group: dist.ProcessGroup, timeout: timedelta) -> bool:
    """Set an existing group's collective timeout, for its next collectives; False where it could not be.
    torch has no public API for this. Its private _set_pg_timeout sets it on the group's gloo and NCCL backends
    (seen to take effect: gloo on torch 2.11 and 2.13, NCCL's watchdog on 2.11); wrapped, and read back, so that
    a change of that API costs the lower timeout, never the run."""
    try:
        c10d._set_pg_timeout(timeout, group)
        backends = [group._get_backend(d) for d in group._device_types]
        return bool(backends) and all(b.options._timeout == timeout for b in backends)
    except Exception:  # a private API: any failure means "not lowered", which the caller logs
        return False


def _groups() -> list[dist.ProcessGroup]:
    """Every process group this rank is in (torch's private registry; without it, the world group alone)."""
    try:
        return list(c10d._world.pg_map)
    except AttributeError:
        return [dist.group.WORLD]


def steady_timeouts(seconds: float) -> None:
    """Start-up is over (the first step is done): from now on a collective on any group of this rank (the world
    group, the CPU groups, a device mesh's) fails after `seconds`, parallel.timeout_s, so a stopped or hung rank
    ends the job in minutes rather than after the start-up budget. Groups cpu_group() makes later get it too.
    A no-op in a single process."""
    if not is_distributed():
        return
    groups, timeout, before = _groups(), timedelta(seconds=seconds), f"{_TIMEOUT.setting}={_TIMEOUT.seconds:g} s"
    kept = [g for g in groups if not _set_group_timeout(g, timeout)]
    if kept:
        log.warning(
            "could not set %s=%g s on %d of %d process groups (torch %s): they keep %s",
            STEADY,
            seconds,
            len(kept),
            len(groups),
            torch.__version__,
            before,
        )
    if len(kept) < len(groups):
        _TIMEOUT.seconds, _TIMEOUT.setting = seconds, STEADY
        log.info("collective timeout: %s until the first step, %s=%g s from now on", before, STEADY, seconds)


def is_collective_timeout(e: BaseException) -> bool:
    """Whether `e` is a collective that ran out of time. Gloo raises it; NCCL's watchdog ends the process
    itself, after logging the collective and its "Timeout(ms)="."""
    return isinstance(e, CollectiveTimeout) or (isinstance(e, RuntimeError) and bool(_GLOO_TIMEOUT.search(str(e))))


def timeout_error() -> CollectiveTimeout:
    """The error for a collective that ran out of time: one line naming the timeout in force and the fix."""
    slow = "a step, an evaluation or a save legitimately takes" if _TIMEOUT.setting == STEADY else "start-up takes"
    return CollectiveTimeout(
        f"a collective waited {_TIMEOUT.setting}={_TIMEOUT.seconds:g} s: another rank stopped or hung (see its "
        f"log); raise {_TIMEOUT.setting} if {slow} longer"
    )


def end_distributed() -> None:
    """Destroy the process group, if any, after collecting what of the job is garbage by now. Drop the model first:
    DDP's C++ reducer holds the group and is freed without releasing the GIL, so were it the group's last holder,
    freeing it would join gloo's worker threads while one of them waits for the GIL to free a finished collective's
    tensors, and the process would hang at exit (pytorch/pytorch#56297)."""
    if is_distributed():
        gc.collect()
        dist.destroy_process_group()


@contextmanager
def process_group(
    ranks: Ranks, device: str, backend: str, timeout_s: float, store: dist.Store | None = None
) -> Iterator[torch.device]:
    """This rank's device (`device` is the trainer.device setting: "auto" or a device type), with the process group
    started on it when there are several ranks (`timeout_s`: the start-up budget), and destroyed when the block
    ends, also on an error. Do the work in a function called inside the block, so its locals (the model above
    all) are gone when the group goes; a failure's traceback would keep its frames alive, so they are cleared on
    the way out (see end_distributed). A collective that ran out of time leaves as a one-line CollectiveTimeout."""
    chosen = resolve_device(device, ranks.local_rank)
    if ranks.world_size > 1:
        init_distributed(ranks, chosen, choose_backend(chosen.type, backend), store or make_store(ranks), timeout_s)
    try:
        yield chosen
    except BaseException as e:
        traceback.clear_frames(e.__traceback__)
        if is_collective_timeout(e) and not isinstance(e, CollectiveTimeout):
            raise timeout_error() from None  # the gloo text says no more, and where it waited does not matter
        raise
    finally:
        end_distributed()
