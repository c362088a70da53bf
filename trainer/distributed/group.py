"""The process group's lifetime: started on this rank's device, and destroyed only after what holds it is gone."""

import gc
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from .devices import choose_backend, resolve_device
from .ranks import Ranks, make_store


def init_distributed(ranks: Ranks, device: torch.device, backend: str, store: dist.Store, timeout_s: float) -> None:
    """Start the process group on an already-selected device (set before init, and passed as device_id)."""
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
    started on it when there are several ranks, and destroyed when the block ends, also on an error. Do the work in
    a function called inside the block, so its locals (the model above all) are gone when the group goes; a
    failure's traceback would keep its frames alive, so they are cleared on the way out (see end_distributed)."""
    chosen = resolve_device(device, ranks.local_rank)
    if ranks.world_size > 1:
        init_distributed(ranks, chosen, choose_backend(chosen.type, backend), store or make_store(ranks), timeout_s)
    try:
        yield chosen
    except BaseException as e:
        traceback.clear_frames(e.__traceback__)
        raise
    finally:
        end_distributed()
