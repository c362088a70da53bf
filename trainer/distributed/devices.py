"""Everything that differs between launchers and vendors lives here: ranks, rendezvous, device, backend, peak
FLOP/s, memory, synchronisation. The rest of the code asks this module and never branches on cuda/xpu/mps or on
torchrun/mpiexec/srun itself.
"""

import gc
import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# Launcher variables, first non-empty wins: torchrun, MPICH/Intel MPI (PMI), Cray PALS (Aurora), Open MPI, SLURM.
RANK_VARS = ("RANK", "PMI_RANK", "PALS_RANKID", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")
LOCAL_RANK_VARS = (
    "LOCAL_RANK",
    "PALS_LOCAL_RANKID",
    "PMI_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "SLURM_LOCALID",
)
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")
LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "PALS_LOCAL_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")
# Prefixes that show an MPI launcher started us even when none of the rank variables above is set.
MPI_HINTS = ("PMI_", "PMIX_", "OMPI_", "MPI_", "HYDRA_", "HYDI_", "PALS_", "I_MPI_")

# The collective backend of each device type when parallel.backend=auto (ROCm builds report as cuda: RCCL).
BACKENDS = {"cuda": "nccl", "xpu": "xccl", "cpu": "gloo", "mps": "gloo"}


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launcher: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, int] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            try:
                return name, int(value)
            except ValueError:
                raise RuntimeError(f"launcher variable {name}={value!r} is not an integer") from None
    return None


def discover_ranks(environ: Mapping[str, str] | None = None) -> Ranks:
    """Rank, local rank and world size from the launcher's variables, else from MPI (mpi4py COMM_WORLD) when an
    MPI launcher left hints, else a single process. Local rank comes from ranks per node, never devices per node."""
    environ = os.environ if environ is None else environ
    rank, size = _first(environ, RANK_VARS), _first(environ, WORLD_SIZE_VARS)
    local = _first(environ, LOCAL_RANK_VARS)
    if rank is not None:
        launcher = {"RANK": "torchrun", "SLURM_PROCID": "srun"}.get(rank[0], "mpi")
        world = size[1] if size else 1
        if local is None:
            per_node = _first(environ, LOCAL_SIZE_VARS)
            if per_node is None and world > 1:
                raise RuntimeError(
                    f"{rank[0]} is set but no local rank variable ({', '.join(LOCAL_RANK_VARS)}) nor ranks per node "
                    f"({', '.join(LOCAL_SIZE_VARS)}): export LOCAL_RANK from your launcher"
                )
            local = ("derived", rank[1] % per_node[1]) if per_node else ("derived", 0)
        ranks = Ranks(rank[1], local[1], world, launcher)
    elif any(k.startswith(MPI_HINTS) for k in environ):
        comm = _mpi_world()
        if comm is None:
            return Ranks()
        node = comm.Split_type(_mpi().COMM_TYPE_SHARED)
        ranks = Ranks(comm.Get_rank(), node.Get_rank(), comm.Get_size(), "mpi")
    else:
        return Ranks()
    if not 0 <= ranks.rank < ranks.world_size:
        raise RuntimeError(f"rank {ranks.rank} is outside a world of {ranks.world_size}: the launcher is misconfigured")
    return ranks


def _mpi():
    from mpi4py import MPI  # optional (pip install -e '.[mpi]'); imported only when an MPI launcher is in play

    return MPI


def _mpi_world():
    try:
        return _mpi().COMM_WORLD
    except ImportError:
        return None


def check_mpi_world(ranks: Ranks, mpi_size: int) -> None:
    """mpi4py linked against another MPI than the launcher's sees a world of one in every rank."""
    if mpi_size != ranks.world_size:
        raise RuntimeError(
            f"the launcher says this job has {ranks.world_size} ranks but mpi4py's COMM_WORLD has {mpi_size}: "
            f"mpi4py is linked against a different MPI than the mpiexec that started the job (every rank got a "
            f"world of its own). Use the mpiexec of the MPI mpi4py was built with (python -c 'import mpi4py; "
            f"print(mpi4py.get_config())'), rebuild mpi4py against the site MPI, or export MASTER_ADDR and MASTER_PORT"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _slurm_first_host(environ: Mapping[str, str]) -> str | None:
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodelist.split(",")[0] if "[" not in nodelist else None


def rendezvous_address(ranks: Ranks, environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """MASTER_ADDR/MASTER_PORT from the environment; else rank 0 picks them and broadcasts over MPI; else, under
    SLURM, the job's first node and a port derived from the job id."""
    environ = os.environ if environ is None else environ
    if environ.get("MASTER_ADDR") and environ.get("MASTER_PORT"):
        return environ["MASTER_ADDR"], int(environ["MASTER_PORT"])
    if ranks.world_size == 1:
        return "127.0.0.1", _free_port()
    comm = _mpi_world() if ranks.launcher == "mpi" or any(k.startswith(MPI_HINTS) for k in environ) else None
    if comm is not None:
        check_mpi_world(ranks, comm.Get_size())
        addr = environ.get("MASTER_ADDR") or (socket.gethostname() if ranks.rank == 0 else None)
        return comm.bcast((addr, _free_port()) if ranks.rank == 0 else None, root=0)
    host = _slurm_first_host(environ)
    if host and environ.get("SLURM_JOB_ID"):
        return environ.get("MASTER_ADDR", host), 20000 + int(environ["SLURM_JOB_ID"]) % 20000
    raise RuntimeError(
        f"cannot find the rendezvous address of this {ranks.world_size}-rank job: export MASTER_ADDR (the host of "
        f"rank 0) and MASTER_PORT, or install mpi4py (pip install -e '.[mpi]') so rank 0 can broadcast them"
    )


def choose_backend(device_type: str, override: str = "auto") -> str:
    """parallel.backend: an explicit name wins; auto maps the device type (nccl, xccl, gloo)."""
    if override != "auto":
        return override
    if device_type not in BACKENDS:
        raise ValueError(f"no default collective backend for device {device_type!r}: set parallel.backend")
    return BACKENDS[device_type]


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


def distributed() -> bool:
    """Whether a process group is running (false for a single process)."""
    return dist.is_available() and dist.is_initialized()


def end_distributed() -> None:
    """Destroy the process group, if any, after collecting what of the job is garbage by now. Drop the model first:
    DDP's C++ reducer holds the group and is freed without releasing the GIL, so were it the group's last holder,
    freeing it would join gloo's worker threads while one of them waits for the GIL to free a finished collective's
    tensors, and the process would hang at exit (pytorch/pytorch#56297)."""
    if distributed():
        gc.collect()
        dist.destroy_process_group()


def cpu_group(dedicated: bool = False) -> dist.ProcessGroup | None:
    """A process group that carries CPU tensors (control flags, asynchronous checkpoint writes): the world group
    when it is gloo already, else a new gloo group. `dedicated` always makes a new one, for collectives issued from
    another thread: two threads sharing one group interleave their collectives differently on each rank and hang.
    A collective: call it on every rank. None without a group."""
    if not distributed() or dist.get_world_size() == 1:
        return None
    return dist.group.WORLD if dist.get_backend() == "gloo" and not dedicated else dist.new_group(backend="gloo")


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
    if distributed() and dist.get_world_size() > 1:
        gloo = dist.get_backend() == "gloo"
        device = (
            torch.device("cpu") if gloo else torch.device(auto_device_type(), torch.accelerator.current_device_index())
        )
        flag = torch.tensor([0.0 if error is None else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and error is None:
            raise PeerFailed("another rank failed (its error is in its log): stopping this rank too")
    if error is not None:
        raise error
    return out


def make_store(ranks: Ranks, timeout_s: float = 1800.0) -> dist.Store:
    """The TCP store every rank meets at; it carries the resolved config from rank 0 before the process group."""
    addr, port = rendezvous_address(ranks)
    # Under torchrun the agent already serves a store on MASTER_PORT: every rank joins it as a client.
    serve = ranks.is_main and os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true"
    return dist.TCPStore(
        addr, port, ranks.world_size, is_master=serve, timeout=timedelta(seconds=timeout_s), use_libuv=True
    )


# Dense bf16 peak FLOP/s per device, matched against the device name (first match wins; specific names first).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("MI300X", 1307e12),
    ("MI250X", 191.5e12),  # one GCD, which is what torch reports as a device
    ("Max 1550", 419e12),  # one tile (Aurora exposes tiles as devices)
)


def auto_device_type() -> str:
    """The accelerator this torch build has (xpu, cuda incl. ROCm, mps), else cpu."""
    if hasattr(torch, "accelerator") and torch.accelerator.is_available():
        return torch.accelerator.current_accelerator().type
    return "cpu"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`trainer.device`: "auto" or a device type. Accelerators get the local rank's index."""
    kind = auto_device_type() if name == "auto" else name
    if kind == "cpu":
        return torch.device("cpu")
    module = getattr(torch, kind, None)
    if module is None or not module.is_available():
        raise RuntimeError(
            f"trainer.device={name!r} asks for {kind}, which this torch build cannot use: "
            f"set trainer.device=auto or install a torch build for {kind}"
        )
    device = torch.device(kind, local_rank) if kind != "mps" else torch.device("mps")
    if hasattr(module, "set_device") and kind != "mps":
        module.set_device(device)
    return device


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast on accelerators (fp32 master weights stay fp32), none on the CPU unless asked."""
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return None
    return torch.bfloat16


ATTENTION_KERNELS = ("cudnn", "flash", "efficient", "math")


def attention_kernels(names: list[str] | None) -> AbstractContextManager:
    """Allow only these SDPA kernels, tried in this order, while the context is open (compiled graphs keep the
    kernel chosen when they were traced inside it). None changes nothing."""
    if not names:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    member = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}
    backends = [getattr(SDPBackend, member.get(n, n.upper())) for n in names]
    try:
        return sdpa_kernel(backends, set_priority=True)
    except TypeError:  # torch < 2.6 has no priority order: restrict to the named kernels instead
        return sdpa_kernel(backends)


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def can_pin_memory(device: torch.device) -> bool:
    """Whether host batches for this device should be page-locked (which makes copies to it asynchronous)."""
    return device.type in ("cuda", "xpu")


def device_name(device: torch.device) -> str:
    module = getattr(torch, device.type, None)
    if device.type != "cpu" and hasattr(module, "get_device_name"):
        return module.get_device_name(device)
    return device.type


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of one device, or None where MFU is meaningless (CPU) or the device is unknown."""
    if device.type == "cpu":
        return None
    name = device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def synchronize(device: torch.device) -> None:
    module = getattr(torch, device.type, None)
    if device.type != "cpu" and hasattr(module, "synchronize"):
        module.synchronize()


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak memory allocated by tensors on the device since start, in GiB (None on the CPU)."""
    module = getattr(torch, device.type, None)
    fn = getattr(module, "max_memory_allocated", None) if device.type != "cpu" else None
    return fn(device) / 2**30 if fn else None


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """Host and device RNG states (the device's is None on the CPU)."""
    module = getattr(torch, device.type, None)
    dev = module.get_rng_state(device) if device.type != "cpu" and hasattr(module, "get_rng_state") else None
    return {"cpu": torch.get_rng_state(), "device": dev}


def set_rng_state(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    module = getattr(torch, device.type, None)
    if state.get("device") is not None and device.type != "cpu" and hasattr(module, "set_rng_state"):
        module.set_rng_state(state["device"], device)


def process_start_time() -> float:
    """Wall-clock time the job started: $ANYTRAIN_JOB_START (set by job scripts) or this process's start."""
    if os.environ.get("ANYTRAIN_JOB_START"):
        return float(os.environ["ANYTRAIN_JOB_START"])
    try:  # Linux: the process start in clock ticks after boot
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return _IMPORT_TIME


_IMPORT_TIME = time.time()
