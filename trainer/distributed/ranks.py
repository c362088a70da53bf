"""Where this process sits in the job: rank, local rank and world size from whichever launcher started it
(torchrun, mpiexec under PBS/PALS, srun, Open MPI), and the rendezvous store every rank meets at. The one place that
knows launchers; nothing else reads their variables."""

import os
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

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


class LauncherError(ValueError, RuntimeError):
    """A launcher environment that cannot work. A ValueError, so every command reports it in one line like a
    config error; a RuntimeError, as callers have caught it so far."""


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
                raise LauncherError(
                    f"launcher variable {name}={value!r} is not an integer: unset it, or start the job with a "
                    f"launcher that sets it (torchrun, mpiexec, srun)"
                ) from None
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
                raise LauncherError(
                    f"{rank[0]} is set but no local rank variable ({', '.join(LOCAL_RANK_VARS)}) nor ranks per node "
                    f"({', '.join(LOCAL_SIZE_VARS)}): export LOCAL_RANK from your launcher"
                )
            local = ("derived", rank[1] % per_node[1]) if per_node else ("derived", 0)
        ranks = Ranks(rank[1], local[1], world, launcher)
    elif any(k.startswith(MPI_HINTS) for k in environ):
        comm = _mpi_world()
        if comm is None:
            return _single(size)
        node = comm.Split_type(_mpi().COMM_TYPE_SHARED)
        ranks = Ranks(comm.Get_rank(), node.Get_rank(), comm.Get_size(), "mpi")
    else:
        return _single(size)
    if not 0 <= ranks.rank < ranks.world_size:
        raise LauncherError(
            f"rank {ranks.rank} is outside a world of {ranks.world_size}: the launcher is misconfigured"
        )
    return ranks


def _single(size: tuple[str, int] | None) -> Ranks:
    """No rank variable: one process. A world size of several then means a launcher half set up (WORLD_SIZE
    exported by hand, a torchrun-style script run with plain python), and this process would train alone."""
    # SLURM_NTASKS is the allocation's task count, also in a batch script that runs one process on purpose.
    partner = {"WORLD_SIZE": "RANK", "PMI_SIZE": "PMI_RANK", "OMPI_COMM_WORLD_SIZE": "OMPI_COMM_WORLD_RANK"}
    if size is not None and size[1] > 1 and size[0] in partner:
        raise LauncherError(
            f"{size[0]}={size[1]} is set but {partner[size[0]]} is not: this process would train alone, not as one of "
            f"{size[1]} ranks; start the job with torchrun (it sets RANK, LOCAL_RANK and WORLD_SIZE), mpiexec or "
            f"srun, or unset {size[0]} to train in one process"
        )
    return Ranks()


def _mpi():
    from mpi4py import MPI  # optional (pip install 'anytrain[mpi]'); imported only when an MPI launcher is in play

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


def _port(value: str, addr: str) -> int:
    """MASTER_PORT as an integer TCP port (0, "any free port", cannot be shared with the other ranks)."""
    try:
        port = int(value.strip())
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise LauncherError(
            f"MASTER_PORT={value!r} is not a TCP port: set it to an integer in 1..65535 that is free on the host of "
            f"rank 0 (MASTER_ADDR={addr}), e.g. MASTER_PORT=29500"
        )
    return port


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
        return environ["MASTER_ADDR"], _port(environ["MASTER_PORT"], environ["MASTER_ADDR"])
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
    raise LauncherError(
        f"cannot find the rendezvous address of this {ranks.world_size}-rank job: export MASTER_ADDR (the host of "
        f"rank 0) and MASTER_PORT, or install mpi4py (pip install 'anytrain[mpi]') so rank 0 can broadcast them"
    )


def make_store(ranks: Ranks, timeout_s: float = 1800.0) -> dist.Store:
    """The TCP store every rank meets at; it carries the resolved config from rank 0 before the process group."""
    addr, port = rendezvous_address(ranks)
    # Under torchrun the agent already serves a store on MASTER_PORT: every rank joins it as a client.
    serve = ranks.is_main and os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true"
    return dist.TCPStore(
        addr, port, ranks.world_size, is_master=serve, timeout=timedelta(seconds=timeout_s), use_libuv=True
    )


def process_start_time() -> float:
    """Wall-clock time the job started: $ANYTRAIN_JOB_START (set by job scripts as their first command), else when
    this process imported anytrain (its first import: a few milliseconds after the interpreter started)."""
    if os.environ.get("ANYTRAIN_JOB_START"):
        return float(os.environ["ANYTRAIN_JOB_START"])
    from .. import STARTED

    return STARTED


def ranks_per_node(environ: Mapping[str, str] | None = None) -> int:
    """Processes the launcher started on this node (1 when it does not say): they share its cores."""
    found = _first(os.environ if environ is None else environ, LOCAL_SIZE_VARS)
    return max(1, found[1]) if found else 1
