"""Watchdog for hung runs: `anytrain watchdog --idle-timeout S --retries N --backoff B -- CMD...`.

Runs CMD in its own process group and streams its stdout and stderr through. When CMD prints nothing for S seconds
the whole group is killed (SIGTERM, then SIGKILL after a grace period) and that attempt counts as exit 124, as with
coreutils' `timeout`. A failed or killed attempt is retried up to N times, waiting B, 2B, 4B, ... seconds; with CMD
being `anytrain run RUN_DIR` each retry resumes from the newest complete checkpoint. Retries stop once the command
exits 0 or the --done-file exists (the run reached trainer.max_steps). SIGTERM, SIGINT and SIGUSR1 sent to the
watchdog are forwarded to the command and end the retries (a walltime warning: the run checkpoints and exits).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

TIMEOUT_EXIT = 124
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def _say(message: str) -> None:
    print(f"watchdog: {message}", file=sys.stderr, flush=True)


class _Attempt:
    """One run of the command: pumps its output through and remembers when it last printed."""

    def __init__(self, cmd: list[str], env: dict | None = None):
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env, bufsize=0
        )
        self.last_output = time.monotonic()
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, sys.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, sys.stderr), daemon=True),
        ]
        for t in self._pumps:
            t.start()

    def _pump(self, src, dst) -> None:
        out = getattr(dst, "buffer", None)
        fd = src.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.last_output = time.monotonic()
            try:
                if out is not None:
                    out.write(chunk)
                    out.flush()
                else:
                    dst.write(chunk.decode(errors="replace"))
                    dst.flush()
            except (OSError, ValueError):
                pass

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, grace_s: float) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left after grace_s (a hung rank ignores SIGTERM)."""
        self.signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        self.signal_group(signal.SIGKILL)  # also children that outlived the leader
        self.proc.wait()

    def join(self) -> None:
        for t in self._pumps:
            t.join(timeout=5)


def run_once(
    cmd: list[str], idle_timeout: float, kill_grace_s: float = 10.0, stop: threading.Event | None = None, env=None
) -> int:
    """Run cmd once; its exit code, or 124 when it was silent for idle_timeout seconds (0: never)."""
    attempt = _Attempt(cmd, env)
    _Current.attempt = attempt
    try:
        while True:
            try:
                rc = attempt.proc.wait(timeout=0.2)
                attempt.join()
                return rc
            except subprocess.TimeoutExpired:
                pass
            idle = time.monotonic() - attempt.last_output
            if idle_timeout > 0 and idle > idle_timeout and not (stop and stop.is_set()):
                _say(f"no output for {idle:.0f} s (launcher.idle_timeout={idle_timeout:g}): killing the run")
                attempt.kill(kill_grace_s)
                attempt.join()
                return TIMEOUT_EXIT
    finally:
        _Current.attempt = None


class _Current:
    attempt: _Attempt | None = None


def watch(
    cmd: list[str],
    idle_timeout: float = 0,
    retries: int = 0,
    backoff_s: float = 30.0,
    done_file: str | Path | None = None,
    kill_grace_s: float = 10.0,
    env: dict | None = None,
) -> int:
    """Run cmd with the idle watchdog and up to `retries` restarts; the exit code of the last attempt."""
    if not cmd:
        raise ValueError("watchdog: no command given (anytrain watchdog [options] -- CMD ...)")
    stop = threading.Event()

    def forward(sig, _frame):
        stop.set()
        _say(f"received signal {signal.Signals(sig).name}: forwarding it to the run, no further retries")
        if _Current.attempt is not None:
            _Current.attempt.signal_group(sig)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        rc = 0
        for attempt in range(retries + 1):
            if attempt:
                env = dict(os.environ if env is None else env, ANYTRAIN_WATCHDOG_ATTEMPT=str(attempt))
            rc = run_once(cmd, idle_timeout, kill_grace_s, stop, env)
            done = done_file is not None and Path(done_file).exists()
            if rc == 0 or done or stop.is_set():
                if rc and done:
                    _say(f"the run exited {rc} but {done_file} exists: the run is complete")
                    rc = 0
                return rc
            if attempt == retries:
                _say(f"attempt {attempt + 1} exited {rc}; no retries left (launcher.max_retries={retries})")
                return rc
            wait = backoff_s * 2**attempt
            _say(f"attempt {attempt + 1} exited {rc}; retry {attempt + 1}/{retries} in {wait:g} s")
            if stop.wait(wait):
                return rc
        return rc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_arguments(p) -> None:
    p.add_argument("--idle-timeout", type=float, default=0, help="kill the command after this many silent seconds")
    p.add_argument("--retries", type=int, default=0, help="restart a failed or killed command up to N times")
    p.add_argument("--backoff", type=float, default=30.0, help="seconds before the first retry, doubled each time")
    p.add_argument("--done-file", default=None, help="no retry once this file exists (RUN_DIR/DONE)")
    p.add_argument("--kill-grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL on a kill")
    p.add_argument("cmd", nargs="+", help="the command, after --")


def main(args) -> None:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    sys.exit(watch(cmd, args.idle_timeout, args.retries, args.backoff, args.done_file, args.kill_grace))
