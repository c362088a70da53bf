"""One job per run directory: rank 0 holds RUN_DIR/.lock while the run trains, and a second job is refused with one
line naming the holder.

The lock is a file created with O_CREAT|O_EXCL, which is atomic on local disks and on the shared filesystems of
clusters (NFS v3+, Lustre, GPFS), where flock() may be missing or lock within one node only. It holds its holder as
JSON (job id, host, pid, start time, user, command); its mtime is the heartbeat, touched every HEARTBEAT_S by a
daemon thread (a touch cannot clobber a successor's lock, as rewriting the file could).

A lock whose holder is gone is taken over, with a warning naming the previous holder. Gone means:
- on the same machine (host, boot and pid namespace equal): its pid is not running, or runs another process now
  (the pid's start time in /proc differs: the pid was reused);
- the same scheduler job with a higher SLURM_RESTART_COUNT: the earlier run of a requeued job;
- otherwise: its heartbeat stopped more than STALE_S ago. A fresh lock of another machine is watched (a job killed
  there, by the scheduler before an afterany successor starts, say, leaves its lock behind): a heartbeat seen while
  watching means the holder lives and the job is refused; none until the lock is stale means it is gone.
Takers serialize on a second O_EXCL file, RUN_DIR/.lock.takeover, and remove the lock only if it is still the one
they judged gone (same bytes and mtime), so two jobs that find one stale lock never both win.
"""

import contextlib
import errno
import getpass
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import distributed

LOCK, TAKEOVER = ".lock", ".lock.takeover"
# A touch every 30 s is one metadata operation per job per 30 s: nothing, even on a busy Lustre MDS.
HEARTBEAT_S = 30.0
# Ten missed heartbeats: outlasts a metadata server or NFS mount stalling for minutes and clock skew between
# hosts, yet an afterany successor of a job killed on another node waits at most 5 minutes, once.
STALE_S = 300.0
# A takeover takes milliseconds: a takeover file this old was left by a taker that died in the middle of one.
TAKEOVER_STALE_S = 60.0
# How often a job watching another machine's lock looks at its heartbeat.
POLL_S = 2.0
JOB_VARS = (("SLURM_JOB_ID", "slurm"), ("PBS_JOBID", "pbs"), ("LSB_JOBID", "lsf"))
GONE, ALIVE, UNSURE = "gone", "alive", "unsure"

log = logging.getLogger(__name__)


class RunDirError(ValueError):
    """The run directory cannot be used: a file stands in its place, it cannot be written, or another job holds it."""


class RunDirLocked(RunDirError):
    """Another job holds the run directory's lock."""

    def __init__(self, message: str, holder: dict) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class _Seen:
    """A lock file as one read saw it: its bytes, its mtime (the heartbeat) and, when it parses, its holder."""

    raw: bytes
    mtime: float
    info: dict

    def same(self, other: "_Seen | None") -> bool:
        return other is not None and other.raw == self.raw and other.mtime == self.mtime


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of pid from /proc; None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name before it, in parentheses, may hold spaces
    return fields[0], int(fields[19])


def _read_or_none(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _machine() -> dict:
    """What tells two processes they can see each other's pids: host, boot and pid namespace (a container on the
    same host has pids of its own)."""
    pid_ns = None
    with contextlib.suppress(OSError):
        pid_ns = os.readlink("/proc/self/ns/pid")
    return {"host": socket.gethostname(), "boot_id": _read_or_none("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def _restart_count() -> int:
    """How many times SLURM requeued this job (it keeps its id): 0 when never."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def holder_info() -> dict:
    """This process as a lock holder."""
    job, scheduler = next(((os.environ[v], s) for v, s in JOB_VARS if os.environ.get(v)), (None, None))
    user = None
    with contextlib.suppress(Exception):  # no passwd entry in some containers
        user = getpass.getuser()
    stat = _proc_stat(os.getpid())
    return {
        "job": job,
        "scheduler": scheduler,
        "restart": _restart_count() if scheduler == "slurm" else None,
        **_machine(),
        "pid": os.getpid(),
        "proc_start": stat[1] if stat else None,
        "user": user,
        "started": _iso(distributed.process_start_time()),
        "heartbeat_s": HEARTBEAT_S,
        "command": " ".join(sys.argv)[:500],
        "nonce": uuid.uuid4().hex,
    }


def describe(info: dict) -> str:
    """The holder in a few words: 'job 123 (slurm) on host n1 (pid 42, user ann, started 2025-...)'."""
    if not info:
        return "an unknown holder (the lock file is unreadable)"
    host, details = info.get("host", "?"), [f"pid {info.get('pid', '?')}"]
    details += [f"user {info['user']}"] if info.get("user") else []
    details += [f"started {info['started']}"] if info.get("started") else []
    who = f"job {info['job']} ({info.get('scheduler')})" if info.get("job") else "a process"
    return f"{who} on host {host} ({', '.join(details)})"


def _parse(raw: bytes) -> dict:
    try:
        info = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    pid = info.get("pid") if isinstance(info, dict) else None
    ok = isinstance(pid, int) and pid > 0 and isinstance(info.get("host"), str)  # kill(0 or -1) means a group
    return info if ok else {}


def _read(path: Path) -> _Seen | None:
    """The lock as it is now; None when there is none. Opening it also revalidates NFS's cached attributes."""
    try:
        with open(path, "rb") as f:
            mtime, raw = os.fstat(f.fileno()).st_mtime, f.read(1 << 16)
    except FileNotFoundError:
        return None
    except PermissionError:  # another user's lock made unreadable: its heartbeat still counts
        try:
            return _Seen(b"", path.stat().st_mtime, {})
        except FileNotFoundError:
            return None
    return _Seen(raw, mtime, _parse(raw))


def _local_holder_gone(info: dict) -> str | None:
    """Why a holder on this machine is gone, or None when it runs."""
    pid = info["pid"]
    stat = _proc_stat(pid)
    if stat is None:  # or hidden: /proc shows no other user's processes when mounted with hidepid, kill(0) does
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"pid {pid} is not running"
        except PermissionError:
            pass
        return None
    if stat[0] in ("Z", "X"):
        return f"pid {pid} has exited"
    if info.get("proc_start") is not None and stat[1] != info["proc_start"]:
        return f"pid {pid} is another process now (the pid was reused)"
    return None


def _judge(seen: _Seen, me: dict, stale_s: float) -> tuple[str, str]:
    """GONE (with why), ALIVE, or UNSURE (a fresh lock of another machine: only its heartbeat can tell)."""
    info, age = seen.info, time.time() - seen.mtime
    restart, before = me.get("restart") or 0, info.get("restart") or 0
    if info.get("job") and info["job"] == me["job"] and restart > before:
        return GONE, f"job {info['job']} was requeued since (restart {before} -> {restart})"
    if info and all(info.get(k) == me[k] for k in ("host", "boot_id", "pid_ns")):
        why = _local_holder_gone(info)
        return (GONE, why) if why else (ALIVE, "")
    if age > stale_s:
        return GONE, f"its heartbeat stopped {age:.0f} s ago (stale after {stale_s:.0f} s)"
    return UNSURE, f"its last heartbeat was {max(age, 0):.0f} s ago"


def _cannot_write(run_dir: Path, e: OSError) -> RunDirError:
    fix = " or fix its permissions" if e.errno in (errno.EACCES, errno.EPERM) else ""
    return RunDirError(
        f"cannot write to run directory {run_dir} ({e.strerror or e}): choose a trainer.run_dir you can write to{fix}"
    )


def _file_in_the_way(run_dir: Path) -> RunDirError | None:
    """The error when the run directory, or one of its parents, is a file."""
    for p in [*reversed(run_dir.parents), run_dir]:
        if p.exists() and not p.is_dir():
            if p == run_dir:
                return RunDirError(
                    f"run directory {run_dir} is a file, not a directory: choose another trainer.run_dir, or move "
                    f"the file away"
                )
            return RunDirError(
                f"run directory {run_dir} cannot be made: {p} is a file, not a directory: choose another "
                f"trainer.run_dir"
            )
    return None


def check_run_dir(run_dir: Path) -> bool:
    """Create the run directory where needed (True when this call made it). A file in its place or on its path,
    or a directory this process cannot create, is a RunDirError naming it and the fix."""
    try:
        error = _file_in_the_way(run_dir)
        made = not run_dir.exists()
        if error is None:
            run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_write(run_dir, e) from None
    if error is not None:
        raise error
    return made


def _create(path: Path, me: dict) -> bool:
    """Create the lock holding `me`; False when one exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # readable by all: they learn who holds it
    except FileExistsError:
        return False
    except OSError as e:
        raise _cannot_write(path.parent, e) from None
    try:
        os.write(fd, json.dumps({**me, "locked": _iso(time.time())}, indent=1).encode() + b"\n")
        os.fsync(fd)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise _cannot_write(path.parent, e) from None
    finally:
        os.close(fd)
    return True


def _take_over(path: Path, seen: _Seen) -> bool:
    """Remove the lock that `seen` saw, judged gone, unless it changed since or another taker is at it. Takers
    serialize on the takeover file, so a lock another taker already replaced is never removed."""
    guard = path.with_name(TAKEOVER)
    try:
        os.close(os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - guard.stat().st_mtime > TAKEOVER_STALE_S:
                guard.unlink()
        return False
    except OSError as e:
        raise _cannot_write(path.parent, e) from None
    try:
        if not seen.same(_read(path)):  # released, taken by another, or its holder's heartbeat came
            return False
        path.unlink()
        return True
    finally:
        guard.unlink(missing_ok=True)


def _refusal(run_dir: Path, info: dict, why: str) -> RunDirLocked:
    return RunDirLocked(
        f"run directory {run_dir} is in use by {describe(info)}{why}: one job at a time per run directory; "
        f"wait for it to end or stop it, or choose another trainer.run_dir",
        info,
    )


def _watch(run_dir: Path, seen: _Seen, watched: _Seen | None, why: str, stale_s: float, poll_s: float) -> _Seen:
    """One look at a fresh lock of another machine: RunDirLocked when its heartbeat came since the last look (the
    holder lives), else wait poll_s and return what is being watched."""
    if watched is not None and watched.raw == seen.raw and seen.mtime > watched.mtime:
        raise _refusal(run_dir, seen.info, ", which is alive (its heartbeat came while this job waited)")
    if watched is None or watched.raw != seen.raw:
        log.warning(
            "run directory %s is locked by %s on another machine, and %s: waiting up to %.0f s for its next "
            "heartbeat (a job killed there leaves its lock behind, and it goes stale then)",
            run_dir, describe(seen.info), why, max(0.0, stale_s - (time.time() - seen.mtime)),
        )  # fmt: skip
        watched = seen
    time.sleep(poll_s)
    return watched


def acquire(
    run_dir: str | Path, stale_s: float = STALE_S, heartbeat_s: float = HEARTBEAT_S, poll_s: float = POLL_S
) -> "RunLock":
    """Take RUN_DIR's lock, creating the directory where needed; RunDirLocked when another job holds it. A lock
    whose holder is gone is taken over; a fresh one of another machine is watched until its heartbeat shows the
    holder alive (refused) or it goes stale (taken over): at most stale_s."""
    run_dir = Path(os.path.abspath(run_dir))
    made, me, path = check_run_dir(run_dir), holder_info(), run_dir / LOCK
    watched, taken = None, None
    while not _create(path, me):
        seen = _read(path)
        if seen is None:
            continue  # released meanwhile
        verdict, why = _judge(seen, me, stale_s)
        if verdict == ALIVE:
            raise _refusal(run_dir, seen.info, "")
        if verdict == UNSURE:
            watched = _watch(run_dir, seen, watched, why, stale_s, poll_s)
        elif _take_over(path, seen):
            taken = (seen.info, why)
        else:
            time.sleep(0.05)  # another taker is at it: look again
    if taken is not None:
        log.warning("took over the lock of run directory %s from %s: %s", run_dir, describe(taken[0]), taken[1])
    return RunLock(path, me, heartbeat_s, made).start()


class RunLock:
    """A held run directory lock: its heartbeat thread runs until release()."""

    def __init__(self, path: Path, info: dict, heartbeat_s: float = HEARTBEAT_S, made_dir: bool = False) -> None:
        self.path, self.info, self.heartbeat_s, self.made_dir = path, info, heartbeat_s, made_dir
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="run-dir-lock-heartbeat", daemon=True)

    def start(self) -> "RunLock":
        self._thread.start()
        return self

    def ours(self) -> bool:
        seen = _read(self.path)
        return seen is not None and seen.info.get("nonce") == self.info["nonce"]

    def _beat(self) -> None:
        failing = False
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.ours():
                    seen = _read(self.path)
                    by = f"taken over by {describe(seen.info)}" if seen else "removed"
                    log.error(
                        "the lock %s of this run was %s: the run stops at its next checkpoint without saving (another "
                        "job may be writing into its run directory; this job's heartbeat stopped for longer than the "
                        "stale limit: suspended, or a filesystem stall?)", self.path, by,
                    )  # fmt: skip
                    _LOST[str(self.path.parent)] = by
                    return
                os.utime(self.path)
                failing = False
            except OSError as e:
                if not failing:
                    log.warning("cannot refresh lock %s (%s): retrying every %.0f s", self.path, e, self.heartbeat_s)
                failing = True

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still ours (and the directory, if this made it and it
        is empty: a run that failed before writing anything leaves nothing behind)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self.ours():
            self.path.unlink(missing_ok=True)
        if self.made_dir:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_LOST: dict[str, str] = {}  # run directory -> how this process lost its lock (set by the heartbeat thread)


def check_held(run_dir: str | Path) -> None:
    """RunDirLocked when this process held RUN_DIR's lock and lost it: it must not write checkpoints over the new
    holder's. Cheap (a dict lookup): called before every save."""
    lost = _LOST.get(os.path.abspath(run_dir))
    if lost is not None:
        raise RunDirLocked(
            f"this job's lock of run directory {run_dir} was {lost}: stopping without saving, so as not to write over "
            f"the other job's checkpoints; resume when that job is gone",
            {},
        )


@contextlib.contextmanager
def hold(run_dir: str | Path, ranks: distributed.Ranks | None = None, **kwargs: float) -> Iterator[RunLock | None]:
    """Hold RUN_DIR's lock for the block on rank 0 (None on the other ranks). A collective: when rank 0 cannot take
    it, every rank stops with a RunDirError."""
    ranks = ranks or distributed.Ranks()
    try:
        lock = distributed.together(lambda: acquire(run_dir, **kwargs) if ranks.is_main else None)
    except distributed.PeerFailed:
        raise RunDirError(f"rank 0 could not take the lock of run directory {run_dir} (its error says why)") from None
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def preflight(run_dir: str | Path, stale_s: float = STALE_S, poll_s: float = POLL_S) -> None:
    """acquire()'s verdict without writing anything, for before anything else touches the run directory (Hydra's
    files, a job script): a RunDirError when a file stands in its way, it cannot be created or written, or another
    job holds it. A fresh lock of another machine is watched as acquire() would."""
    run_dir = Path(os.path.abspath(run_dir))
    try:
        error = _file_in_the_way(run_dir)
        existing = next(p for p in [run_dir, *run_dir.parents] if p.exists())
    except OSError as e:
        raise _cannot_write(run_dir, e) from None
    if error is not None:
        raise error
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _cannot_write(run_dir, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    me, watched = holder_info(), None
    while (seen := _read(run_dir / LOCK)) is not None:
        verdict, why = _judge(seen, me, stale_s)
        if verdict == ALIVE:
            raise _refusal(run_dir, seen.info, "")
        if verdict == GONE:
            return
        watched = _watch(run_dir, seen, watched, why, stale_s, poll_s)
