"""Decision logic of trainer/distributed (ranks.py, devices.py): launcher variables, devices and backends."""

import pytest
import torch

from trainer.distributed import devices, ranks

LAUNCHERS = {
    "torchrun": ({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, (5, 1, 8, "torchrun")),
    "mpich": ({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}, (3, 1, 4, "mpi")),
    "aurora-pals": (
        {"PMI_RANK": "13", "PMI_SIZE": "24", "PALS_LOCAL_RANKID": "1", "PALS_RANKID": "13"},
        (13, 1, 24, "mpi"),
    ),
    "openmpi": (
        {"OMPI_COMM_WORLD_RANK": "6", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "2"},
        (6, 2, 8, "mpi"),
    ),
    "slurm": ({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}, (9, 1, 16, "srun")),
    # torchrun inside an srun allocation: torchrun's own variables win over SLURM's.
    "torchrun-in-slurm": (
        {
            "RANK": "2",
            "LOCAL_RANK": "2",
            "WORLD_SIZE": "4",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "1",
            "SLURM_LOCALID": "0",
        },
        (2, 2, 4, "torchrun"),
    ),
    # Only ranks per node known: local rank is derived from it (12 ranks per Aurora node), not from devices.
    "ranks-per-node": ({"PMI_RANK": "14", "PMI_SIZE": "24", "MPI_LOCALNRANKS": "12"}, (14, 2, 24, "mpi")),
    "plain-python": ({}, (0, 0, 1, "none")),
    "empty-values-skipped": ({"RANK": "", "PMI_RANK": "1", "PMI_SIZE": "2", "PMI_LOCAL_RANK": "1"}, (1, 1, 2, "mpi")),
}


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_variables_resolve_to_ranks(name):
    environ, (rank, local, world, launcher) = LAUNCHERS[name]
    assert ranks.discover_ranks(environ) == ranks.Ranks(rank, local, world, launcher)


def test_missing_local_rank_on_many_ranks_is_an_error():
    with pytest.raises(RuntimeError, match="LOCAL_RANK"):
        ranks.discover_ranks({"RANK": "1", "WORLD_SIZE": "2"})


def test_rank_outside_world_is_an_error():
    with pytest.raises(RuntimeError, match="outside a world of 2"):
        ranks.discover_ranks({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_mpi_world_of_one_per_rank_is_diagnosed():
    job = ranks.Ranks(rank=1, local_rank=1, world_size=4, launcher="mpi")
    with pytest.raises(RuntimeError, match="mpi4py is linked against a different MPI"):
        ranks.check_mpi_world(job, mpi_size=1)
    ranks.check_mpi_world(job, mpi_size=4)


def test_rendezvous_from_environment_wins():
    job = ranks.Ranks(0, 0, 2, "torchrun")
    assert ranks.rendezvous_address(job, {"MASTER_ADDR": "node7", "MASTER_PORT": "29510"}) == ("node7", 29510)


def test_rendezvous_without_any_source_says_what_to_set():
    with pytest.raises(RuntimeError, match="export MASTER_ADDR"):
        ranks.rendezvous_address(ranks.Ranks(0, 0, 2, "srun"), {"SLURM_PROCID": "0"})


@pytest.mark.parametrize(
    "device,override,expected",
    [
        ("xpu", "auto", "xccl"),
        ("cuda", "auto", "nccl"),
        ("cpu", "auto", "gloo"),
        ("cuda", "gloo", "gloo"),
        ("xpu", "ccl", "ccl"),
    ],
)
def test_backend_choice(device, override, expected):
    assert devices.choose_backend(device, override) == expected


class _FakeAccelerator:
    """Stands in for an accelerator that cannot exist on this machine; only the decision is under test."""

    def __init__(self, kind):
        self.kind = kind

    def is_available(self):
        return self.kind is not None

    def current_accelerator(self):
        return torch.device(self.kind)


@pytest.mark.parametrize("kind,expected", [("xpu", "xpu"), ("cuda", "cuda"), ("mps", "mps"), (None, "cpu")])
def test_auto_device_picks_the_accelerator(monkeypatch, kind, expected):
    monkeypatch.setattr(torch, "accelerator", _FakeAccelerator(kind))
    assert devices.auto_device_type() == expected


def test_explicit_unavailable_device_is_a_clear_error():
    with pytest.raises(RuntimeError, match="trainer.device='cuda'"):
        devices.resolve_device("cuda")
    assert devices.resolve_device("auto") == torch.device("cpu")
