"""A hung rank under torchrun (gloo, CPU): once the first step is done, the other rank fails after
parallel.timeout_s with one line naming it, not after the start-up budget, and the job ends with nothing left."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest

import data
from trainer.config import to_train_config

from ..conftest import TINY, TRAIN

STEADY_S, STARTUP_S = 10, 300


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return sum("loss" in json.loads(line) for line in lines if line.endswith("}"))


def _start_time(pid: int) -> str | None:
    """The process's start time (/proc), to tell it from a later one with its pid; None once it is gone or a
    zombie (no longer running)."""
    with suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]
    return None


def _workers(launcher: int) -> dict[int, int]:
    """torchrun's worker processes by rank (their own sessions: the launcher's process group misses them)."""
    out = {}
    for pid in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next((v for v in env if v.startswith(b"RANK=")), None)
        if rank is not None:
            out[int(rank[5:])] = int(pid)
    return out


def _wait(predicate, seconds: float, what: str, proc: subprocess.Popen, running: bool = True) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert not running or proc.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"timed out after {seconds:.0f} s waiting for {what}"
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks' processes in /proc")
def test_a_stopped_rank_fails_the_job_after_the_steady_timeout(compose, tmp_path, tok_cache):
    overrides = [*TINY, tok_cache, "parallel=ddp", "trainer.compile=false", "trainer.log_every=1"]
    overrides += ["trainer.eval_every=0", "checkpoint.every=0", "trainer.max_steps=1000000"]
    overrides += [f"parallel.timeout_s={STEADY_S}", f"parallel.startup_timeout_s={STARTUP_S}"]
    data.build_tokenizer(to_train_config(compose(*overrides)).data)  # trained now, not while rank 1 waits on it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [*torchrun, "--no-python", *TRAIN, *overrides, f"trainer.run_dir={tmp_path}/run"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()
    workers: dict[int, tuple[int, str | None]] = {}
    try:
        _wait(lambda: _steps_logged(tmp_path / "run") >= 3, 60, "the third step", proc)
        workers = {rank: (pid, _start_time(pid)) for rank, pid in _workers(proc.pid).items()}
        os.kill(workers[1][0], signal.SIGSTOP)
        stopped_at = time.monotonic()
        _wait(lambda: "a collective waited" in "".join(output), STEADY_S + 30, "rank 0's error", proc, False)
        waited = time.monotonic() - stopped_at
        # A hung rank ignores torchrun's SIGTERM, which then waits 30 s before its SIGKILL: not what is tested here.
        os.kill(workers[1][0], signal.SIGCONT)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None and not workers:  # failed early: its ranks must not outlive torchrun's SIGKILL
            with suppress(OSError):
                workers = {rank: (pid, _start_time(pid)) for rank, pid in _workers(proc.pid).items()}
        left = [pid for pid, started in workers.values() if started is not None and _start_time(pid) == started]
        for pid, started in [(proc.pid, _start_time(proc.pid)), *workers.values()]:
            if started is not None and _start_time(pid) == started:
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    text = "".join(output)
    assert rc != 0, text[-3000:]
    assert 0.8 * STEADY_S <= waited <= STEADY_S + 20, (waited, text[-3000:])  # far below the start-up budget
    assert (
        f"parallel.startup_timeout_s={STARTUP_S} s until the first step, parallel.timeout_s={STEADY_S} s from now on"
        in text
    ), text[-3000:]
    assert f"a collective waited parallel.timeout_s={STEADY_S} s: another rank stopped or hung" in text, text[-3000:]
    assert len(workers) == 2 and not left, (workers, left)  # torchrun ended both ranks itself
