"""The job watchdog: kills a silent command (exit 124) with its whole process group, retries with backoff, and a
real training run that hangs is killed and resumed from its newest checkpoint by the retry."""

import os
import subprocess
import sys
import time
from pathlib import Path

from trainer.cli import train as cli
from trainer.cluster import watchdog
from trainer.config import to_train_config

from ..conftest import ANYTRAIN
from .conftest import JOB, clean_env, steps

PY = sys.executable


def test_a_silent_command_is_killed_with_124_and_retried(tmp_path):
    count = tmp_path / "attempts"
    cmd = ["bash", "-c", f'echo x >> {count}; echo "started $ANYTRAIN_WATCHDOG_ATTEMPT"; sleep 60']
    t0 = time.monotonic()
    rc = watchdog.watch(cmd, idle_timeout=0.6, retries=2, backoff_s=0.1, kill_grace_s=1)
    assert rc == watchdog.TIMEOUT_EXIT
    assert len(count.read_text().split()) == 3  # the first attempt and two retries
    assert time.monotonic() - t0 < 15


def test_the_whole_process_group_is_killed(tmp_path):
    pidfile = tmp_path / "pid"
    # the grandchild ignores SIGTERM: only the SIGKILL after the grace period ends it
    cmd = ["bash", "-c", f"(trap '' TERM; sleep 60) & echo $! > {pidfile}; echo started; wait"]
    assert watchdog.watch(cmd, idle_timeout=0.5, kill_grace_s=0.5) == 124
    pid = int(pidfile.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_output_keeps_the_command_alive_and_streams_through(tmp_path):
    script = "import time\nfor i in range(6):\n    print(i, flush=True); time.sleep(0.3)\n"
    r = subprocess.run(
        [*ANYTRAIN, "watchdog", "--idle-timeout", "1", "--", PY, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert r.returncode == 0 and r.stdout.split() == [str(i) for i in range(6)], r.stderr


def test_retries_stop_at_success_and_at_the_done_file(tmp_path):
    count = tmp_path / "attempts"
    fail_twice = ["bash", "-c", f'echo x >> {count}; [ "$(wc -l < {count})" -ge 3 ]']
    assert watchdog.watch(fail_twice, retries=5, backoff_s=0.05) == 0
    assert len(count.read_text().split()) == 3
    done = tmp_path / "DONE"
    count.unlink()
    fail_and_finish = ["bash", "-c", f"echo x >> {count}; touch {done}; exit 3"]
    assert watchdog.watch(fail_and_finish, retries=5, backoff_s=0.05, done_file=done) == 0
    assert len(count.read_text().split()) == 1
    count.unlink()
    always_fails = ["bash", "-c", f"echo x >> {count}; exit 7"]
    assert watchdog.watch(always_fails, retries=1, backoff_s=0.05) == 7
    assert len(count.read_text().split()) == 2


def test_cli_exit_code_is_124_after_the_idle_timeout():
    r = subprocess.run(
        [
            *ANYTRAIN,
            "watchdog",
            "--idle-timeout",
            "0.5",
            "--kill-grace",
            "1",
            "--",
            "bash",
            "-c",
            "echo before; sleep 30",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert r.returncode == 124 and r.stdout == "before\n"
    assert "no output for" in r.stderr and "no retries left" in r.stderr


# A test-only wrapper around `anytrain run`: a heartbeat keeps the slow start-up of a loaded test machine from
# looking like a hang; on the first attempt it then freezes its own process (SIGSTOP: no output, no progress, deaf
# to SIGTERM, like a rank stuck in a collective) as soon as the checkpoint of step 10 is complete.
HANG = """
import os, signal, sys, threading, time
from pathlib import Path

run_dir = Path(sys.argv[1])
first = not os.environ.get("ANYTRAIN_WATCHDOG_ATTEMPT")

def heartbeat():
    while True:
        print("test wrapper: alive", flush=True)
        time.sleep(0.5)

def freeze():
    while not (run_dir / "checkpoints" / "step-10" / "COMPLETE").exists():
        time.sleep(0.005)
    print("test wrapper: freezing the run", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)

threading.Thread(target=heartbeat, daemon=True).start()
if first:
    threading.Thread(target=freeze, daemon=True).start()
from trainer.cli.anytrain import main
main(["run", str(run_dir)])
"""


def test_a_hung_training_run_is_killed_and_the_retry_resumes_it(compose, tmp_path, tok_cache):
    run = tmp_path / "run"
    overrides = [*JOB, tok_cache, "parallel=single", "trainer.global_batch=4", "trainer.max_steps=60"]
    overrides += ["checkpoint.every=10", "checkpoint.keep_last=0", "launcher.submit=false", f"trainer.run_dir={run}"]
    cli._submit(to_train_config(compose(*overrides, "launcher=slurm")), str(run))  # writes run/config.yaml
    (tmp_path / "hang.py").write_text(HANG)
    r = subprocess.run(
        [
            *ANYTRAIN,
            "watchdog",
            "--idle-timeout",
            "3",
            "--retries",
            "2",
            "--backoff",
            "0.5",
            "--kill-grace",
            "1",
            "--done-file",
            str(run / "DONE"),
            "--",
            PY,
            str(tmp_path / "hang.py"),
            str(run),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=clean_env(),
        cwd=tmp_path,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "test wrapper: freezing the run" in out and "no output for" in out and "retry 1/2" in out, out[-4000:]
    resumed = int(out.split("resumed at step ")[1].split()[0])
    assert resumed >= 10 and resumed % 10 == 0, out[-4000:]
    assert (run / "DONE").is_file()
    assert steps(run) == list(range(1, 61))  # the resumed run continued where the checkpoint left off
    assert os.environ.get("ANYTRAIN_WATCHDOG_ATTEMPT") is None
