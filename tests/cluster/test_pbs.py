"""The rendered PBS script run for real: bash under a PBS environment (PBS_JOBID, PBS_NODEFILE, PBS_O_WORKDIR) and
MPICH's mpiexec (hydra) starting 2 ranks of the tiny model. No PBS server exists for Debian or PyPI, so `qsub` is a
recording stand-in for the chained resubmission. MPICH's mpiexec has no --cpu-bind (Cray PALS has): the test leaves
launcher.cpu_bind unset, as the generic pbs profile does."""

import shutil
import subprocess
import time

import pytest

from .conftest import JOB, clean_env, metrics, steps, train

MPIEXEC = shutil.which("mpiexec")


@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: pip install 'anytrain[mpi]' installs the mpich wheel")
def test_rendered_pbs_script_trains_on_two_ranks_under_mpiexec(tmp_path, tok_cache):
    run = tmp_path / "run"
    overrides = [*JOB, tok_cache, "trainer.max_steps=20", "checkpoint.every=10", f"trainer.run_dir={run}"]
    overrides += ["launcher=pbs", "launcher.ranks_per_node=2", "launcher.submit=false", "launcher.chain=1"]
    overrides += ["launcher.idle_timeout=120", "launcher.max_retries=1"]
    train(overrides, tmp_path)
    script = run / "job.pbs"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "qsub.calls"
    (bindir / "qsub").write_text(f'#!/bin/bash\necho "$@" >> {calls}\necho 8.pbs-server\n')
    (bindir / "qsub").chmod(0o755)
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("localhost\n")
    pbs = {"PBS_JOBID": "7.pbs-server", "PBS_NODEFILE": str(nodefile), "PBS_O_WORKDIR": str(tmp_path)}
    env = clean_env(PATH=f"{bindir}:{clean_env()['PATH']}", **pbs)
    started = time.time()
    r = subprocess.run(["bash", str(script)], cwd="/", env=env, capture_output=True, text=True, timeout=240)
    wall = time.time() - started
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]

    # trained on 2 ranks, checkpointed, finished
    assert "2 x cpu | plan ddp" in out and "job 7.pbs-server finished" in out, out[-4000:]
    assert steps(run) == list(range(1, 21))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-10", "step-20"]
    assert (run / "checkpoints" / "step-20" / "COMPLETE").is_file() and (run / "DONE").is_file()
    # time to first step counted from the job's start (exported by the script), not from the python process's
    first = next(m for m in metrics(run) if "time_to_first_step_s" in m)["time_to_first_step_s"]
    assert 0 < first < wall
    # the chained job was submitted, dependent on this one, as chain job 2
    assert calls.read_text().split() == [
        "-W",
        "depend=afterany:7.pbs-server",
        "-v",
        "ANYTRAIN_CHAIN_INDEX=1",
        str(script),
    ]
    assert (run / "job_ids").read_text() == "8.pbs-server\n"

    # the chained job finds DONE: it exits at once, submits nothing, runs no rank
    env.update(PBS_JOBID="8.pbs-server", ANYTRAIN_CHAIN_INDEX="1")
    r = subprocess.run(["bash", str(script)], cwd="/", env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "DONE exists" in r.stdout, r.stdout + r.stderr
    assert len(calls.read_text().splitlines()) == 1
