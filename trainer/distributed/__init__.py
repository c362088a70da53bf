"""Ranks, devices, the process group, collectives and parallel plans: everything that differs between launchers
(torchrun, mpiexec, srun) and vendors (CUDA/ROCm, XPU, MPS, CPU) is decided in this package.

- `ranks`: rank, local rank and world size from the launcher's variables; the rendezvous store.
- `devices`: device, backend, autocast, SDPA kernels, peak FLOP/s, memory, RNG.
- `group`: the process group's lifetime (`process_group()`, a context manager) and its collective timeouts
  (the start-up budget, then `steady_timeouts()`).
- `collectives`: the few reductions the trainer issues itself, and `together`.
- `parallel`: activation checkpointing, compile, DDP, FSDP2/HSDP (`ParallelConfig`, `parallelize`).
"""

from .collectives import (
    PeerFailed,
    any_rank,
    cpu_group,
    max_over_ranks,
    mean_over_ranks,
    min_over_ranks,
    sum_ints_over_ranks,
    together,
)
from .devices import (
    ATTENTION_KERNELS,
    attention_kernels,
    auto_device_type,
    autocast,
    autocast_dtype,
    can_pin_memory,
    choose_backend,
    device_name,
    document_kernel,
    peak_flops,
    peak_memory_gib,
    resolve_device,
    rng_state,
    set_rng_state,
    synchronize,
)
from .group import (
    CollectiveTimeout,
    end_distributed,
    init_distributed,
    is_collective_timeout,
    is_distributed,
    process_group,
    steady_timeouts,
)
from .ranks import Ranks, discover_ranks, make_store, process_start_time, ranks_per_node, rendezvous_address

__all__ = [
    "ATTENTION_KERNELS",
    "CollectiveTimeout",
    "PeerFailed",
    "Ranks",
    "ranks_per_node",
    "sum_ints_over_ranks",
    "any_rank",
    "attention_kernels",
    "auto_device_type",
    "autocast",
    "autocast_dtype",
    "can_pin_memory",
    "choose_backend",
    "cpu_group",
    "device_name",
    "document_kernel",
    "discover_ranks",
    "end_distributed",
    "init_distributed",
    "is_collective_timeout",
    "is_distributed",
    "make_store",
    "max_over_ranks",
    "mean_over_ranks",
    "min_over_ranks",
    "peak_flops",
    "peak_memory_gib",
    "process_group",
    "process_start_time",
    "rendezvous_address",
    "resolve_device",
    "rng_state",
    "set_rng_state",
    "steady_timeouts",
    "synchronize",
    "together",
]
