"""Real multi-process jobs on the CPU with gloo, started by torchrun and by mpiexec (the mpich wheel)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import to_train_config
from trainer.loop import fit

from ..conftest import TINY, TRAIN

STEPS = 10
# fp32, two data streams so that 1 rank x 2 micro-steps and 2 ranks x 1 micro-step see the same global batches.
PARITY = [
    "optim.lr=3e-3",
    *TINY,
    "trainer.precision=fp32",
    "data.streams=2",
    f"trainer.max_steps={STEPS}",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "schedule.warmup_steps=2",
]
MPIEXEC = shutil.which("mpiexec")


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def launch(launcher: list[str], overrides: list[str], cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([*launcher, *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]


def train_under(n: int) -> list[str]:
    """`torchrun --no-python train` on n ranks: the installed command, as the README says to start it."""
    return [*torchrun(n), "--no-python", *TRAIN]


@pytest.fixture(scope="module")
def single(compose, tmp_path_factory, tok_cache):
    """The single-process reference curve."""
    run_dir = tmp_path_factory.mktemp("single")
    fit(to_train_config(compose(*PARITY, tok_cache)), run_dir)
    return losses(run_dir)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, tok_cache):
    cwd = tmp_path_factory.mktemp("ddp")
    launch(train_under(2), [*PARITY, tok_cache, "parallel=ddp"], cwd)  # run_dir left to its dated default
    return cwd


def test_ddp_on_two_processes_matches_one_process(single, ddp):
    run_dirs = list((ddp / "runs").iterdir())
    assert len(run_dirs) == 1, run_dirs  # composed once: one run directory for both ranks
    curve = losses(run_dirs[0])
    assert len(curve) == STEPS and max(abs(a - b) for a, b in zip(curve, single)) < 1e-5, (curve, single)
    assert curve[-1] < curve[0] - 0.05


def test_fsdp_matches_ddp(single, ddp, tmp_path, tok_cache):
    launch(
        train_under(2),
        [*PARITY, tok_cache, "parallel=fsdp", f"trainer.run_dir={tmp_path}/run"],
        tmp_path,
    )
    curve, reference = losses(tmp_path / "run"), losses(next((ddp / "runs").iterdir()))
    assert len(curve) == STEPS and max(abs(a - b) for a, b in zip(curve, reference)) < 1e-5, (curve, reference)


def test_fsdp_with_accumulation_and_activation_checkpointing_matches(single, tmp_path, tok_cache):
    """2 micro-steps per rank (gradients reduced once, on the last) and recomputed blocks: the same curve."""
    overrides = [
        *PARITY,
        tok_cache,
        "parallel=fsdp",
        "parallel.activation_checkpoint=full",
        "trainer.micro_batch=2",
        "data.streams=4",
        f"trainer.run_dir={tmp_path}/run",
    ]
    launch(train_under(2), overrides, tmp_path)
    curve = losses(tmp_path / "run")
    assert len(curve) == STEPS and curve[-1] < curve[0] - 0.05


def test_hsdp_on_four_processes(compose, tmp_path, tok_cache):
    """2 replicas x 2 shards; the global batch of 16 comes from 4 streams, so one process sees the same data."""
    common = [*PARITY, tok_cache, "data.streams=4", "trainer.global_batch=16", "trainer.eval_batches=2"]
    launch(
        train_under(4),
        [*common, "parallel=hsdp", "parallel.dp_replicate=2", f"trainer.run_dir={tmp_path}/hsdp"],
        tmp_path,
    )
    fit(to_train_config(compose(*common)), tmp_path / "single")
    curve, reference = losses(tmp_path / "hsdp"), losses(tmp_path / "single")
    assert len(curve) == STEPS and max(abs(a - b) for a, b in zip(curve, reference)) < 1e-5, (curve, reference)


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: pip install 'anytrain[mpi]' installs the mpich wheel")
def test_ddp_under_mpiexec_matches_one_process(single, tmp_path, tok_cache):
    """No MASTER_ADDR: rank 0 picks the rendezvous and broadcasts it over MPI."""
    launch(
        [MPIEXEC, "-n", "2", *TRAIN],
        [*PARITY, tok_cache, "parallel=ddp", f"trainer.run_dir={tmp_path}/r"],
        tmp_path,
    )
    curve = losses(tmp_path / "r")
    assert max(abs(a - b) for a, b in zip(curve, single)) < 1e-5, (curve, single)


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_mpi_comm_world_is_the_fallback_without_rank_variables(tmp_path):
    """With the launcher's rank variables hidden, ranks come from mpi4py's COMM_WORLD."""
    script = (
        "import os, json, sys; from trainer.distributed import ranks as env\n"
        "hide = env.RANK_VARS + env.WORLD_SIZE_VARS + env.LOCAL_RANK_VARS\n"
        "e = {k: v for k, v in os.environ.items() if k not in hide}\n"
        "r = env.discover_ranks(e)\n"
        "json.dump([r.rank, r.local_rank, r.world_size, r.launcher], open(f'{sys.argv[1]}/{r.rank}.json', 'w'))\n"
    )
    r = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert [json.loads((tmp_path / f"{i}.json").read_text()) for i in (0, 1)] == [[0, 0, 2, "mpi"], [1, 1, 2, "mpi"]]


def test_a_config_error_stops_every_rank_with_one_message(tmp_path, tok_cache):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    r = subprocess.run(
        [
            *torchrun(2),
            "--no-python",
            *TRAIN,
            *TINY,
            tok_cache,
            "parallel=ddp",
            "trainer.global_batch=12",
            f"trainer.run_dir={tmp_path}/r",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "trainer.global_batch=12 is not divisible by trainer.micro_batch=4 x 2 data-parallel rank(s)" in r.stderr


def test_the_skip_decision_agrees_across_ranks(tmp_path, tok_cache):
    """A spike on rank 1 only: both ranks skip the update (DDP would otherwise desynchronise or hang)."""
    worker = Path(__file__).parent / "spike_worker.py"
    config_dir = Path(__file__).resolve().parents[2] / "configs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    r = subprocess.run(
        [
            *torchrun(2),
            str(worker),
            str(config_dir),
            str(tmp_path),
            *PARITY,
            tok_cache,
            "parallel=ddp",
            "trainer.spikes.warmup=4",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads((tmp_path / f"spike-rank{i}.json").read_text()) for i in (0, 1)]
    assert results == [{"rank": 0, "skipped": 1, "unchanged": True}, {"rank": 1, "skipped": 1, "unchanged": True}]


def test_a_failure_on_rank_zero_reaches_every_rank_at_once(tmp_path):
    """env.together: the other ranks raise PeerFailed instead of waiting in the next collective until the timeout."""
    worker = Path(__file__).parent / "together_worker.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    r = subprocess.run([*torchrun(2), str(worker), str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert results[0] == ["OSError: disk full", "ok"]
    assert results[1][0].startswith("PeerFailed: another rank failed") and results[1][1] == "ok"


@pytest.mark.parametrize("mode", ["fit", "fit-fails", "bench", "bench-fails"])
def test_the_model_is_gone_before_the_process_group(mode, tmp_path, tok_cache):
    """DDP's reducer must not be the group's last holder: freeing it then joins gloo's threads with the GIL held,
    and the job hangs at exit now and then (it did in CI). So no DDP module may be alive at destroy_process_group,
    also when training fails."""
    worker = Path(__file__).parent / "teardown_worker.py"
    config_dir = Path(__file__).resolve().parents[2] / "configs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    overrides = [*PARITY, tok_cache, "parallel=ddp", "trainer.max_steps=3", "trainer.compile=false"]
    r = subprocess.run(
        [*torchrun(2), str(worker), mode, str(config_dir), str(tmp_path), *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert [json.loads((tmp_path / f"teardown-rank{i}.json").read_text()) for i in (0, 1)] == [[0], [0]]
