"""One job per run directory, end to end: a second `train` in a running job's run directory is refused and the first
goes on untouched; the lock is released after a preempted and a finished run, so a chained job resumes; a lock left
by a killed job is taken over; a run directory that cannot be used is one line."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import checkpointing as ckpt
from trainer import run_lock as rl
from trainer.config import config_to_yaml, to_train_config
from trainer.loop import DONE, fit

from ..conftest import ANYTRAIN, TINY, TRAIN

RUN = [*TINY, "trainer.log_every=1", "trainer.eval_every=0", "schedule.warmup_steps=2"]


def logged_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended early"
        if (run_dir / "metrics.jsonl").exists() and (steps := logged_steps(run_dir)) and steps[-1] >= step:
            return steps[-1]
        time.sleep(0.05)
    raise TimeoutError(f"step {step} never came")


def test_a_second_job_is_refused_the_first_goes_on_and_a_chained_one_resumes(compose, tmp_path, tok_cache, capsys):
    run_dir = tmp_path / "run"
    cmd = [*TRAIN, *RUN, tok_cache, f"trainer.run_dir={run_dir}"]
    env = {**os.environ, "SLURM_JOB_ID": "4242"}
    first = subprocess.Popen(
        [*cmd, "trainer.max_steps=100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        wait_for_step(run_dir, 2, first)
        config = (run_dir / "config.yaml").read_text()
        second = subprocess.run([*cmd, "trainer.max_steps=50", "optim.lr=1e-2"], capture_output=True, text=True)
        at = wait_for_step(run_dir, logged_steps(run_dir)[-1] + 3, first)  # still training, undisturbed
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert second.returncode == 2, second.stderr[-2000:]
    assert "Traceback" not in second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"error: run directory {run_dir} is in use by job 4242 (slurm) on host {os.uname().nodename} (pid {first.pid}"
    ), line
    assert "started " in line and line.endswith("wait for it to end or stop it, or choose another trainer.run_dir")
    assert first.returncode == 0 and "preempted by signal" in out, err[-2000:]
    assert not (run_dir / rl.LOCK).exists()  # released on the preempted run's way out
    assert (run_dir / "config.yaml").read_text() == config  # the first job's config, not the second's
    assert not list(run_dir.glob("metrics.before-*"))  # its metrics were not moved away
    steps = logged_steps(run_dir)
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] >= at
    saved = ckpt.read_meta(ckpt.complete_checkpoints(run_dir / "checkpoints")[0])["step"]

    capsys.readouterr()
    fit(to_train_config(compose(*RUN, tok_cache, f"trainer.max_steps={saved + 2}")), run_dir)  # the chained job
    assert f"resumed at step {saved}" in capsys.readouterr().out
    assert (run_dir / DONE).exists() and not (run_dir / rl.LOCK).exists()  # released after a finished run too


def test_a_lock_left_by_a_killed_job_is_taken_over(compose, tmp_path, tok_cache, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import time, trainer.run_lock as rl; rl.acquire({str(tmp_path)!r}); time.sleep(120)"]
    )
    deadline = time.time() + 60
    while not (tmp_path / rl.LOCK).exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # its contents written
    with pytest.raises(rl.RunDirLocked, match=f"pid {holder.pid}"):  # alive: refused
        rl.acquire(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with caplog.at_level(logging.WARNING, logger="trainer.run_lock"):
        last = fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=3")), tmp_path)
    assert last["step"] == 3
    assert f"took over the lock of run directory {tmp_path} from a process on host" in caplog.text
    assert f"pid {holder.pid} is not running" in caplog.text
    assert not (tmp_path / rl.LOCK).exists()


@pytest.mark.parametrize("mode", ["trainer.max_steps=3", "lr_find.enabled=true", "trainer.max_steps=0"])
def test_every_path_of_fit_takes_the_lock_first(compose, tmp_path, tok_cache, mode):
    """Training, the LR finder and max_steps=0 evaluation: refused before writing anything into the run dir."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        lock = json.dumps({**rl.holder_info(), "pid": sleeper.pid, "proc_start": rl._proc_stat(sleeper.pid)[1]})
        (tmp_path / rl.LOCK).write_text(lock)
        with pytest.raises(rl.RunDirLocked, match=f"pid {sleeper.pid}"):
            fit(to_train_config(compose(*RUN, tok_cache, mode)), tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [p.name for p in tmp_path.iterdir()] == [rl.LOCK]


def test_a_run_dir_that_is_a_file_or_unwritable_is_one_line(compose, tmp_path, tok_cache):
    (tmp_path / "file").write_text("not a directory")
    cfg = to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=1"))
    with pytest.raises(rl.RunDirError, match=f"run directory {tmp_path / 'file'} is a file, not a directory"):
        fit(cfg, tmp_path / "file")
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only directory anyway (the unit tests cover the message)")
    run_dir = tmp_path / "ro"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    run_dir.chmod(0o555)
    r = subprocess.run([*ANYTRAIN, "run", str(run_dir)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"cannot write to run directory {run_dir} (Permission denied)" in r.stderr


def test_train_with_a_file_as_run_dir_is_one_line(tmp_path, tok_cache):
    file = tmp_path / "file"
    file.write_text("not a directory")
    r = subprocess.run([*TRAIN, *RUN, tok_cache, f"trainer.run_dir={file}"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"run directory {file} is a file, not a directory" in r.stderr
