"""A real one-machine SLURM cluster (slurm-wlm + munge, installed and started by scripts/slurm-local-cluster.sh):
`train launcher=slurm` submits the rendered script for 2 tasks of the tiny model; the first job is told to stop
(SIGUSR1, as `--signal=USR1@N` does before the walltime), checkpoints and exits; the chained second job resumes from
that checkpoint and finishes; the third job of the chain finds DONE and exits at once."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import REPO
from .conftest import JOB, metrics, steps, train

SETUP = REPO / "scripts" / "slurm-local-cluster.sh"


DAEMONS = ("munged", "slurmctld", "slurmd")


def running_daemons() -> list[str]:
    return [d for d in DAEMONS if subprocess.run(["pgrep", "-x", d], capture_output=True).returncode == 0]


@pytest.fixture(scope="session")
def slurm_cluster():
    """Install (apt, can take a minute the first time) and start the one-machine cluster, or skip with the reason.
    Stops the daemons it started when the session ends, and fails the session if one outlives that."""
    if os.geteuid() != 0:
        pytest.skip("the one-machine SLURM cluster needs root (apt-get install slurm-wlm munge; daemons as root)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("slurm-wlm is not installed and there is no apt-get to install it")
    before = running_daemons()
    try:
        r = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("installing or starting the SLURM cluster took over 10 minutes")
    if r.returncode != 0:  # a half-started cluster (munged up, the node never idle) is stopped too
        left = _stop_started(before)
        pytest.skip(f"could not start a one-machine SLURM cluster: {(r.stderr or r.stdout).strip()[-1500:]}"
                    + (f" (and {left} would not stop)" if left else ""))  # fmt: skip
    yield
    left = _stop_started(before)
    assert not left, f"SLURM daemons started by the tests outlive them: {left}"


def _stop_started(before: list[str]) -> list[str]:
    """Stop the daemons that were not running `before` (a demo's or a system service stays); those still left."""
    started = [d for d in DAEMONS if d not in before]
    for daemon in started:
        subprocess.run(["pkill", "-x", daemon], capture_output=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and set(started) & set(running_daemons()):
        time.sleep(0.1)
    return sorted(set(started) & set(running_daemons()))


def squeue(*job_ids: str) -> list[str]:
    r = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True, text=True)
    return r.stdout.split("\n") if r.stdout.strip() else []


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def newest_step(run: Path) -> int:
    try:
        return max((m["step"] for m in metrics(run) if "loss" in m), default=0)
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_slurm_job_trains_checkpoints_and_a_chained_job_resumes(slurm_cluster, tmp_path, tok_cache):
    run = tmp_path / "run"
    overrides = [*JOB, tok_cache, "trainer.max_steps=100", "checkpoint.every=50", f"trainer.run_dir={run}"]
    overrides += ["launcher=slurm", "launcher.ranks_per_node=2", "launcher.chain=2", "launcher.walltime=00:10:00"]
    overrides += ["launcher.idle_timeout=120", "launcher.max_retries=1", "launcher.retry_backoff_s=1"]
    r = train(overrides, tmp_path)
    first = r.stdout.split("submitted job ")[1].split(":")[0]
    job_ids = lambda: (run / "job_ids").read_text().split() if (run / "job_ids").exists() else []  # noqa: E731

    # job 1 trains; once it has made a few steps, send the walltime warning to its ranks
    wait_for(lambda: newest_step(run) >= 5, 180, "the first job's first steps")
    subprocess.run(["scancel", "--signal=USR1", first], check=True)
    # job 1 chained job 2 at its start; job 2 chains job 3; job 3 finds DONE
    wait_for(lambda: len(job_ids()) == 3 and not squeue(*job_ids()), 240, "the chain of 3 jobs to finish")
    ids = job_ids()
    assert ids[0] == first
    logs = [(run / f"job-{i}.out").read_text() for i in ids]

    # job 1: trained on 2 ranks, stopped early by the signal with a checkpoint
    assert "2 x cpu | plan ddp" in logs[0] and "chained job " + ids[1] in logs[0], logs[0][-3000:]
    assert "preempted by signal" in logs[0] and "exit code 0" in logs[0], logs[0][-3000:]
    saved = int(logs[0].split("preempted by signal")[1].split("saved step ")[1].split()[0])
    assert 5 <= saved < 100, logs[0][-3000:]
    # job 2: resumed from that checkpoint and reached max_steps
    assert f"resumed at step {saved}" in logs[1] and "chained job " + ids[2] in logs[1], logs[1][-3000:]
    assert (run / "DONE").is_file() and (run / "checkpoints" / "step-100" / "COMPLETE").is_file()
    assert steps(run) == list(range(1, 101))  # continued where job 1 stopped, no step twice
    firsts = [m for m in metrics(run) if "time_to_first_step_s" in m]
    assert [m["step"] for m in firsts] == [1, saved + 1] and all(m["time_to_first_step_s"] > 0 for m in firsts)
    # job 3: DONE ends the chain, no further job
    assert "DONE exists" in logs[2] and "chained job" not in logs[2] and "plan ddp" not in logs[2], logs[2]
