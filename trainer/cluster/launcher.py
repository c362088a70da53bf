"""Cluster launchers: render a SLURM or PBS job script from the run's config into its run directory and submit it.

`train launcher=slurm ...` (or pbs, aurora) composes and validates the config for the job's world size, writes the
resolved config to RUN_DIR/config.yaml, renders RUN_DIR/job.slurm (job.pbs) from scripts/templates/ and submits it.
The job body runs `anytrain run RUN_DIR` (see `entry`) on every rank (srun / mpiexec), which starts the run or
resumes it from its newest complete checkpoint. Optional in the job: a chain of dependent resubmissions for runs
longer than the walltime, and a watchdog that kills a silent run and retries it (watchdog.py). The templates are
scripts/templates/ of the checkout, installed as the package data `trainer.cluster.templates`.
"""

import os
import re
import shlex
import shutil
import string
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

NAMES = ("local", "slurm", "pbs")
SCRIPT_NAMES = {"slurm": "job.slurm", "pbs": "job.pbs"}
SUBMIT = {"slurm": "sbatch", "pbs": "qsub"}
TEMPLATES = "trainer.cluster.templates"  # scripts/templates/ in the checkout, package data in the wheel
# `python -c` instead of `python -m`: the job runs in the directory `train` was started from, and a research directory
# often holds its own data.py or models/, which the current directory first on sys.path (what -m puts there) would
# import in place of anytrain's packages. Dropping that entry is safe on any Python version (and a no-op under -P).
ENTRY = "import sys; sys.path[:1] = [p for p in sys.path[:1] if p]; from trainer.cli.anytrain import main; main()"
# One walltime format for both schedulers: hours (any number of digits, e.g. 48:00:00), minutes, seconds.
WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")
# Values that go into #SBATCH/#PBS lines, which the scheduler (not a shell) parses: no spaces, quotes or newlines.
DIRECTIVE_VALUE = re.compile(r"^[A-Za-z0-9_.,:=+@/%-]+$")


@dataclass
class LauncherConfig:
    name: str = "local"
    """"local" trains now, in this process (or under the torchrun/mpiexec/srun that started it). "slurm" or "pbs"
    render a job script into the run directory (job.slurm / job.pbs) and submit it with sbatch / qsub."""
    submit: bool = True
    """slurm/pbs: submit the rendered script. False only writes it and prints its path (submit it yourself)."""
    nodes: int | None = None
    """Nodes of the job. None: 1, or launcher.ranks / launcher.ranks_per_node when launcher.ranks is set."""
    ranks_per_node: int = 1
    """Processes (ranks) per node: one per GPU / GPU tile (Aurora: 12, one per tile)."""
    ranks: int | None = None
    """Total ranks of the job, as an alternative to launcher.nodes; must be a multiple of launcher.ranks_per_node.
    None: launcher.nodes x launcher.ranks_per_node."""
    walltime: str = "01:00:00"
    """Time limit of each job, HH:MM:SS for both schedulers (hours may exceed 24: 48:00:00). Day forms (SLURM's
    D-HH:MM:SS) are rejected to keep one format; a run longer than this continues in chained jobs (launcher.chain)."""
    queue: str | None = None
    """PBS queue (-q) or SLURM partition (--partition). None: the scheduler's default."""
    account: str | None = None
    """Project/account charged (PBS -A, SLURM --account). None: the scheduler's default."""
    filesystems: str | None = None
    """PBS only: file systems the job needs (-l filesystems=home:flare on Aurora)."""
    directives: list[str] = field(default_factory=list)
    """Extra scheduler options, one per line, written after "#SBATCH " / "#PBS " (e.g. "--gpus-per-node=4",
    "--exclusive", "-l place=scatter:exclhost")."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run in the job before training, verbatim: module load, source a venv, export variables."""
    cpu_bind: str | None = None
    """CPU binding of the ranks: mpiexec --cpu-bind VALUE (PBS; the Aurora list in configs/launcher/aurora.yaml) or
    srun --cpu-bind=VALUE (SLURM). None: the launcher's default (MPICH's hydra mpiexec has no --cpu-bind)."""
    launcher_args: list[str] = field(default_factory=list)
    """Extra arguments of srun / mpiexec, each one argument (shell-quoted in the script)."""
    python: str | None = None
    """Python interpreter run on every rank. None: with launcher.setup lines, `python3` as found on the job's PATH
    once they ran (the environment they activate); without them, the interpreter that renders the script."""
    cpus_per_node: int | None = None
    """CPU cores requested per node: PBS `ncpus` in the select statement; SLURM `--cpus-per-task` (this divided by
    launcher.ranks_per_node). None requests none (the site's default: often the whole node, Aurora's 208)."""
    gpus_per_node: int | None = None
    """GPUs requested per node: PBS `ngpus` in the select statement; SLURM `--gpus-per-node`. None requests none
    (the site's default; Aurora allocates whole nodes, so its profile leaves it unset)."""
    workdir: str | None = None
    """Directory the job runs in (relative paths in the config resolve from it). None: where `train` was run."""
    job_name: str | None = None
    """Job name. None: "anytrain-" + the run directory's name."""
    chain: int = 0
    """Chained resubmission: a job that starts without RUN_DIR/DONE submits the next job (dependent on this one,
    afterany) until this many follow-up jobs were submitted; each resumes from the newest checkpoint, and a job that
    finds DONE (trainer.max_steps reached) exits at once. 0: one job only."""
    signal_before_s: int = 120
    """SLURM: send SIGUSR1 to the ranks this many seconds before the walltime (--signal=USR1@N), so the run saves a
    checkpoint and exits cleanly for the next chained job. 0: off. (PBS sends SIGTERM at the walltime, which the
    trainer also turns into a checkpoint if the site's kill delay allows.)"""
    idle_timeout: int = 0
    """Watchdog: kill the run (exit 124) when it prints nothing for this many seconds; it must exceed the longest
    silent phase (imports, data set-up, compile, checkpoint save). 0: no watchdog unless launcher.max_retries > 0."""
    max_retries: int = 0
    """Watchdog: restart a run that failed or hung up to this many times in the same job; each retry resumes from the
    newest complete checkpoint. No retry once RUN_DIR/DONE exists or the run exits 0 (e.g. preempted cleanly)."""
    retry_backoff_s: float = 30.0
    """Watchdog: seconds before the first retry, doubled for each further retry."""


def job_ranks(lc: LauncherConfig) -> tuple[int, int]:
    """(nodes, total ranks) of the job, checked (ValueError naming launcher.<field> and the fix)."""
    if lc.ranks_per_node < 1:
        raise ValueError(f"launcher.ranks_per_node must be >= 1, got {lc.ranks_per_node}")
    if lc.nodes is not None and lc.nodes < 1:
        raise ValueError(f"launcher.nodes must be >= 1, got {lc.nodes}")
    if lc.ranks is None:
        nodes = 1 if lc.nodes is None else lc.nodes
        return nodes, nodes * lc.ranks_per_node
    if lc.ranks < 1 or lc.ranks % lc.ranks_per_node:
        raise ValueError(
            f"launcher.ranks_per_node={lc.ranks_per_node} does not divide launcher.ranks={lc.ranks}: every node runs "
            f"the same number of ranks; set launcher.ranks to a multiple of {lc.ranks_per_node} (or give "
            f"launcher.nodes instead of launcher.ranks)"
        )
    nodes = lc.ranks // lc.ranks_per_node
    if lc.nodes is not None and lc.nodes != nodes:
        raise ValueError(
            f"launcher.nodes={lc.nodes} x launcher.ranks_per_node={lc.ranks_per_node} != launcher.ranks={lc.ranks}: "
            f"give launcher.nodes or launcher.ranks, not both"
        )
    return nodes, lc.ranks


def walltime_seconds(walltime: str) -> int:
    m = WALLTIME.match(walltime.strip())
    if not m:
        raise ValueError(
            f"launcher.walltime={walltime!r} is not HH:MM:SS: write e.g. 02:00:00 for two hours or 48:00:00 for two "
            f"days (hours may exceed 24; the D-HH:MM:SS form is not accepted)"
        )
    h, mi, s = map(int, m.groups())
    if h * 3600 + mi * 60 + s == 0:
        raise ValueError("launcher.walltime must be longer than 00:00:00")
    return h * 3600 + mi * 60 + s


def validate_launcher(lc: LauncherConfig) -> tuple[int, int]:
    """Check the launcher group on its own; returns (nodes, ranks). Raises ValueError naming the field and the fix."""
    if lc.name not in NAMES:
        raise ValueError(f"launcher.name must be one of {NAMES}, got {lc.name!r} (pick a profile: launcher=slurm)")
    nodes, ranks = job_ranks(lc)
    wall = walltime_seconds(lc.walltime)
    for name in ("cpus_per_node", "gpus_per_node"):
        if getattr(lc, name) is not None and getattr(lc, name) < 1:
            raise ValueError(f"launcher.{name} must be >= 1 or null, got {getattr(lc, name)}")
    if lc.cpus_per_node and lc.cpus_per_node < lc.ranks_per_node:
        raise ValueError(
            f"launcher.cpus_per_node={lc.cpus_per_node} gives less than one core to each of the "
            f"launcher.ranks_per_node={lc.ranks_per_node} ranks: raise it or leave it null"
        )
    for name in ("chain", "idle_timeout", "max_retries", "signal_before_s"):
        if getattr(lc, name) < 0:
            raise ValueError(f"launcher.{name} must be >= 0, got {getattr(lc, name)}")
    if lc.retry_backoff_s < 0:
        raise ValueError(f"launcher.retry_backoff_s must be >= 0, got {lc.retry_backoff_s}")
    if lc.signal_before_s and lc.signal_before_s >= wall:
        raise ValueError(
            f"launcher.signal_before_s={lc.signal_before_s} is not shorter than launcher.walltime={lc.walltime}: "
            f"lower it or set it to 0"
        )
    for name in ("queue", "account", "filesystems", "job_name"):
        value = getattr(lc, name)
        if value is not None and not DIRECTIVE_VALUE.match(value):
            raise ValueError(
                f"launcher.{name}={value!r} cannot go into a job script directive: use letters, digits and "
                f"_ . , : = + @ / % - only"
            )
    for line in lc.directives:
        if "\n" in line or "\r" in line or not line.strip():
            raise ValueError(f"launcher.directives: each entry is one non-empty line, got {line!r}")
    for line in lc.setup:
        if "\n" in line or "\r" in line:
            raise ValueError(f"launcher.setup: each entry is one line (give several entries), got {line!r}")
    return nodes, ranks


class _Template(string.Template):
    """{{name}} placeholders, so that the shell's own $VAR and ${VAR} need no escaping in the templates."""

    flags = 0
    pattern = r"\{\{(?P<named>[a-z_]+)\}\}(?P<braced>(?!))?(?P<escaped>(?!))?(?P<invalid>(?!))?"


def _q(value) -> str:
    return shlex.quote(str(value))


def _lines(prefix: str, items: list[str]) -> str:
    return "\n".join(f"{prefix}{item}" for item in items)


# The job script's command that runs `anytrain` with $PYTHON (chosen by _python_lines), safe from the job
# directory's own modules.
ANYTRAIN = f'"$PYTHON" -c {shlex.quote(ENTRY)}'


def _python_lines(lc: LauncherConfig) -> list[str]:
    """Set $PYTHON in the job: launcher.python; else, after launcher.setup, python3 of the environment it made if
    that one has anytrain (a venv it activated), falling back to the interpreter that renders the script (a setup
    that only loads modules, with anytrain in a venv on a shared file system)."""
    if lc.python:
        return [f"PYTHON={_q(lc.python)}"]
    if not lc.setup:
        return [f"PYTHON={_q(sys.executable)}"]
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('trainer') is None)"
    return ["PYTHON=python3", f'"$PYTHON" -c {_q(probe)} 2>/dev/null || PYTHON={_q(sys.executable)}']


def _watchdog(lc: LauncherConfig, run_dir: Path) -> str:
    if lc.idle_timeout <= 0 and lc.max_retries <= 0:
        return ""
    args = ["watchdog", "--idle-timeout", lc.idle_timeout, "--retries"]
    args += [lc.max_retries, "--backoff", lc.retry_backoff_s, "--done-file", run_dir / "DONE", "--"]
    return ANYTRAIN + " " + " ".join(_q(a) for a in args) + " "


def render(cfg, run_dir: str | Path) -> str:
    """The job script of cfg.launcher (slurm or pbs) for the run in run_dir (cfg: a TrainConfig)."""
    lc: LauncherConfig = cfg.launcher
    nodes, ranks = validate_launcher(lc)
    if lc.name not in SCRIPT_NAMES:
        raise ValueError(f"launcher.name={lc.name!r} renders no job script: use launcher=slurm or launcher=pbs")
    run_dir = Path(run_dir).resolve()
    if any(c.isspace() for c in str(run_dir)):
        raise ValueError(
            f"the run directory {str(run_dir)!r} contains white space, which #SBATCH/#PBS lines cannot hold"
        )
    workdir = Path(lc.workdir or os.getcwd()).resolve()
    job_name = lc.job_name or ("anytrain-" + re.sub(r"[^A-Za-z0-9_.-]", "_", run_dir.name))[:64]
    directives: list[str] = []
    if lc.name == "slurm":
        directives += [f"--job-name={job_name}", f"--nodes={nodes}", f"--ntasks-per-node={lc.ranks_per_node}"]
        directives += [f"--time={lc.walltime}", f"--output={run_dir}/job-%j.out", "--open-mode=append"]
        directives += [f"--partition={lc.queue}"] if lc.queue else []
        directives += [f"--account={lc.account}"] if lc.account else []
        directives += [f"--signal=USR1@{lc.signal_before_s}"] if lc.signal_before_s else []
        directives += [f"--gpus-per-node={lc.gpus_per_node}"] if lc.gpus_per_node else []
        if lc.cpus_per_node:
            directives += [f"--cpus-per-task={lc.cpus_per_node // lc.ranks_per_node}"]
        launch = ["srun", f"--ntasks={ranks}", f"--ntasks-per-node={lc.ranks_per_node}", "--kill-on-bad-exit=1"]
        launch += [f"--cpu-bind={lc.cpu_bind}"] if lc.cpu_bind else []
        # srun of Slurm 22.05-23.02 does not take --cpus-per-task from the job's directives: give it again.
        launch += [f"--cpus-per-task={lc.cpus_per_node // lc.ranks_per_node}"] if lc.cpus_per_node else []
    else:
        chunk = f"{nodes}" + (f":ncpus={lc.cpus_per_node}" if lc.cpus_per_node else "")
        chunk += (f":ngpus={lc.gpus_per_node}" if lc.gpus_per_node else "") + f":mpiprocs={lc.ranks_per_node}"
        directives += [f"-N {job_name}", f"-l select={chunk}", "-l place=scatter", f"-l walltime={lc.walltime}"]
        directives += [f"-q {lc.queue}"] if lc.queue else []
        directives += [f"-A {lc.account}"] if lc.account else []
        directives += [f"-l filesystems={lc.filesystems}"] if lc.filesystems else []
        directives += ["-j oe", f"-o {run_dir}/"]
        launch = ["mpiexec", "--envall", "--np", str(ranks), "--ppn", str(lc.ranks_per_node)]
        launch += ["--hostfile", "$HOSTFILE"]
        launch += ["--cpu-bind", lc.cpu_bind] if lc.cpu_bind else []
    prefix = "#SBATCH " if lc.name == "slurm" else "#PBS "
    launch += list(lc.launcher_args)
    command = " ".join('"$HOSTFILE"' if a == "$HOSTFILE" else _q(a) for a in launch)
    command += f' {ANYTRAIN} run "$RUN_DIR"'
    hosts = ""
    if lc.name == "pbs":  # PBS lists a host once per mpiprocs: mpiexec --ppn takes each host once, in order
        hosts = 'HOSTFILE="$RUN_DIR/.hosts-${PBS_JOBID:-job}"\n'
        hosts += 'awk \'!seen[$0]++\' "$PBS_NODEFILE" >"$HOSTFILE"\n'
    setup = ["# (no launcher.setup lines)"]
    if lc.setup:  # verbatim site lines, grouped so that one shellcheck directive covers them (sourced files)
        setup = ["# launcher.setup", "# shellcheck disable=SC1090,SC1091", "{", *lc.setup, "}"]
    setup = "\n".join([*setup, "# The interpreter every rank runs (launcher.python)", *_python_lines(lc)])
    values = {
        "directives": _lines(prefix, directives + list(lc.directives)),
        "run_dir": _q(run_dir),
        "script": _q(run_dir / SCRIPT_NAMES[lc.name]),
        "workdir": _q(workdir),
        "chain": str(lc.chain),
        "setup": setup,
        "command": hosts + _watchdog(lc, run_dir) + command,
        "nodes": str(nodes),
        "ranks": str(ranks),
    }
    template = resources.files(TEMPLATES).joinpath(f"{lc.name}.sh").read_text()
    return _Template(template).substitute(values)


def launch(cfg, run_dir: str | Path) -> Path:
    """Write RUN_DIR/job.slurm (job.pbs), executable, and submit it unless launcher.submit=false. Returns the script
    path. Errors (ValueError, FileNotFoundError) come before anything is submitted."""
    lc: LauncherConfig = cfg.launcher
    text = render(cfg, run_dir)
    tool = SUBMIT[lc.name]
    if lc.submit and shutil.which(tool) is None:
        raise FileNotFoundError(
            f"{tool} is not on PATH: run on a login node of the {lc.name.upper()} cluster, or set "
            f"launcher.submit=false to only write the job script"
        )
    path = Path(run_dir) / SCRIPT_NAMES[lc.name]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    if not lc.submit:
        print(f"job script written (not submitted): {path}\nsubmit it with: {tool} {path}")
        return path
    args = [tool, "--parsable", str(path)] if lc.name == "slurm" else [tool, str(path)]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()}")
    job_id = r.stdout.strip().split(";")[0]
    with (Path(run_dir) / "job_ids").open("a") as f:
        f.write(f"{job_id}\n")
    print(f"submitted job {job_id}: {path}")
    return path
