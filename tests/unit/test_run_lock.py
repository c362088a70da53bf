"""The run directory lock on its own: who holds it, when a holder counts as gone, takeover races, heartbeats, and
run directories that cannot be used. Lock files of other hosts and dead processes are crafted."""

import json
import logging
import multiprocessing
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from trainer import distributed
from trainer import run_lock as rl


def craft(run_dir: Path, age_s: float = 0.0, **fields) -> Path:
    """A lock file as another holder would have left it: this process's details, overridden by `fields`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / rl.LOCK
    path.write_text(json.dumps({**rl.holder_info(), **fields}))
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def sleeper():
    p = subprocess.Popen(["sleep", "60"])
    yield p
    p.kill()
    p.wait()


def beat(path: Path, stop: threading.Event, every: float = 0.05) -> threading.Thread:
    """A live holder on another host: its heartbeat touches the lock."""

    def run() -> None:
        while not stop.wait(every):
            os.utime(path)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_second_job_is_refused_with_its_holder_and_release_frees_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with rl.acquire(tmp_path) as lock:
        info = json.loads((tmp_path / rl.LOCK).read_text())
        assert {"job", "host", "pid", "started", "locked", "nonce"} <= info.keys() and info["job"] == "4242"
        with pytest.raises(rl.RunDirLocked) as e:
            rl.acquire(tmp_path)
        assert lock.ours()
    msg = str(e.value)
    assert f"run directory {tmp_path} is in use by job 4242 (slurm) on host {info['host']}" in msg
    assert f"pid {os.getpid()}" in msg and f"started {info['started']}" in msg and "\n" not in msg
    assert not (tmp_path / rl.LOCK).exists()
    rl.acquire(tmp_path).release()  # free again


def test_a_dead_holder_on_this_host_is_taken_over_and_logged(tmp_path, caplog):
    pid = dead_pid()
    craft(tmp_path, pid=pid, job="999", scheduler="slurm")
    with caplog.at_level(logging.WARNING), rl.acquire(tmp_path, stale_s=3600) as lock:
        assert lock.ours()
    assert f"took over the lock of run directory {tmp_path} from job 999 (slurm)" in caplog.text
    assert f"pid {pid} is not running" in caplog.text


def test_a_reused_pid_is_gone_but_a_live_one_holds(tmp_path, sleeper, caplog):
    start = rl._proc_stat(os.getpid())[1]
    craft(tmp_path, pid=os.getpid(), proc_start=start - 1)  # our pid, but another process's start time
    with caplog.at_level(logging.WARNING), rl.acquire(tmp_path):
        pass
    assert "is another process now (the pid was reused)" in caplog.text
    craft(tmp_path, pid=sleeper.pid, proc_start=rl._proc_stat(sleeper.pid)[1], age_s=10 * rl.STALE_S)
    with pytest.raises(rl.RunDirLocked, match=f"pid {sleeper.pid}"):  # on this host, a stale heartbeat does not matter
        rl.acquire(tmp_path)


def test_another_hosts_lock_is_refused_while_its_heartbeat_comes(tmp_path, caplog):
    path = craft(tmp_path, host="node-b", pid=1, job="7", scheduler="slurm")
    stop = threading.Event()
    beat(path, stop)
    try:
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING), pytest.raises(rl.RunDirLocked) as e:
            rl.acquire(tmp_path, stale_s=60, poll_s=0.1)
    finally:
        stop.set()
    assert time.monotonic() - t0 < 5
    assert "in use by job 7 (slurm) on host node-b (pid 1" in str(e.value) and "which is alive" in str(e.value)
    assert "waiting up to" in caplog.text  # it said why it waited


def test_another_hosts_stale_lock_is_taken_over(tmp_path, caplog):
    craft(tmp_path, host="node-b", pid=1, age_s=100)
    with caplog.at_level(logging.WARNING), rl.acquire(tmp_path, stale_s=50) as lock:
        assert lock.ours()
    assert "from a process on host node-b (pid 1" in caplog.text and "its heartbeat stopped 100 s ago" in caplog.text


def test_a_successor_waits_for_a_killed_hosts_lock_to_go_stale(tmp_path, caplog):
    """An afterany successor of a job killed on another node: the lock is fresh, its heartbeat never comes."""
    craft(tmp_path, host="node-b", pid=1)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING), rl.acquire(tmp_path, stale_s=1.0, poll_s=0.05):
        pass
    assert 0.9 < time.monotonic() - t0 < 5
    assert "waiting up to 1 s for its next heartbeat" in caplog.text and "took over" in caplog.text


def test_a_requeued_job_takes_over_its_earlier_run_at_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    craft(tmp_path, host="node-b", pid=1, job="77", scheduler="slurm", restart=0)
    with caplog.at_level(logging.WARNING), rl.acquire(tmp_path, stale_s=3600):
        pass
    assert "job 77 was requeued since (restart 0 -> 1)" in caplog.text


def test_an_unreadable_lock_counts_by_its_heartbeat(tmp_path, caplog):
    (tmp_path / rl.LOCK).write_text("{half a")
    old = time.time() - 100
    os.utime(tmp_path / rl.LOCK, (old, old))
    with caplog.at_level(logging.WARNING), rl.acquire(tmp_path, stale_s=50):
        pass
    assert "from an unknown holder" in caplog.text


def _contend(run_dir: str, barrier, done, results) -> None:
    barrier.wait()
    try:
        lock = rl.acquire(run_dir, stale_s=3600)
    except rl.RunDirLocked:
        results.put("refused")
        return
    results.put("won")
    done.wait(30)  # hold it until every contender has tried
    lock.release()


@pytest.mark.parametrize("stale", [True, False], ids=["stale-lock", "no-lock"])
def test_contenders_for_one_lock_exactly_one_wins(tmp_path, stale):
    ctx, n = multiprocessing.get_context("fork"), 8
    for round_ in range(3):
        run_dir = tmp_path / str(round_)
        if stale:
            craft(run_dir, pid=dead_pid())
        barrier, done, results = ctx.Barrier(n), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(str(run_dir), barrier, done, results)) for _ in range(n)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in range(n)]
        done.set()
        for p in procs:
            p.join(30)
        assert sorted(outcomes) == ["refused"] * (n - 1) + ["won"], outcomes
        assert not (run_dir / rl.LOCK).exists() and not (run_dir / rl.TAKEOVER).exists()


def test_the_heartbeat_touches_the_lock_and_a_lost_lock_is_reported_not_removed(tmp_path, caplog):
    lock = rl.acquire(tmp_path, heartbeat_s=0.05)
    path = tmp_path / rl.LOCK
    first = path.stat().st_mtime
    deadline = time.monotonic() + 5
    while path.stat().st_mtime == first and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.stat().st_mtime > first
    with caplog.at_level(logging.ERROR):
        rl.check_held(tmp_path)  # still ours: nothing to say
        craft(tmp_path, host="node-b", pid=1, nonce="someone-else")  # as a takeover by another job would
        time.sleep(0.3)
        with pytest.raises(rl.RunDirLocked, match="stopping without saving"):
            rl.check_held(tmp_path)  # what save_run asks before every checkpoint
        lock.release()
    assert "was taken over by a process on host node-b" in caplog.text
    assert json.loads(path.read_text())["nonce"] == "someone-else"  # the other job's lock stays


def test_a_directory_the_lock_made_is_removed_when_left_empty(tmp_path):
    rl.acquire(tmp_path / "a" / "run").release()
    assert (tmp_path / "a").is_dir() and not (tmp_path / "a" / "run").exists()
    with rl.acquire(tmp_path / "b"):
        (tmp_path / "b" / "metrics.jsonl").write_text("")
    assert (tmp_path / "b" / "metrics.jsonl").exists()


def test_a_file_in_place_of_the_run_dir_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(rl.RunDirError, match="is a file, not a directory: choose another trainer.run_dir"):
        rl.acquire(tmp_path / "f")
    with pytest.raises(rl.RunDirError, match=f"cannot be made: {tmp_path / 'f'} is a file, not a directory"):
        rl.acquire(tmp_path / "f" / "run")
    with pytest.raises(rl.RunDirError, match="is a file"):
        rl.preflight(tmp_path / "f")


def test_an_unwritable_run_dir_is_one_line(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rl.os, "open", denied)
    with pytest.raises(rl.RunDirError) as e:
        rl.acquire(tmp_path)
    assert str(e.value) == (
        f"cannot write to run directory {tmp_path} (Permission denied): choose a trainer.run_dir you can write to "
        f"or fix its permissions"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory anyway")
def test_a_read_only_run_dir_is_one_line(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(rl.RunDirError, match="cannot write to run directory .*ro \\(Permission denied\\)"):
        rl.acquire(tmp_path / "ro")
    with pytest.raises(rl.RunDirError, match="cannot write to run directory"):
        rl.preflight(tmp_path / "ro" / "run")


def test_preflight_writes_nothing_and_refuses_a_live_holder(tmp_path, sleeper):
    rl.preflight(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    craft(tmp_path, pid=sleeper.pid, proc_start=rl._proc_stat(sleeper.pid)[1])
    with pytest.raises(rl.RunDirLocked, match=f"pid {sleeper.pid}"):
        rl.preflight(tmp_path)
    path = craft(tmp_path, host="node-b", pid=1)  # another machine's: watched, as acquire would
    stop = threading.Event()
    beat(path, stop)
    try:
        with pytest.raises(rl.RunDirLocked, match="which is alive"):
            rl.preflight(tmp_path, stale_s=60, poll_s=0.1)
    finally:
        stop.set()
    before = path.read_bytes()
    rl.preflight(tmp_path, stale_s=0.3, poll_s=0.05)  # no heartbeat: gone, for acquire to take over
    assert path.read_bytes() == before


def test_when_rank_zero_is_refused_every_rank_stops_with_one_line(tmp_path, monkeypatch):
    def peer_failed(fn):
        raise distributed.PeerFailed("another rank failed")

    monkeypatch.setattr(rl.distributed, "together", peer_failed)
    with pytest.raises(rl.RunDirError, match=f"rank 0 could not take the lock of run directory {tmp_path}"):
        with rl.hold(tmp_path, distributed.Ranks(rank=1, world_size=2)):
            pass
