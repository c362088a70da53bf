"""The wheel as a user installs it: built from the checkout, installed without -e into a fresh environment, and run
from a research directory that holds its own data.py and models/ package (which must never be imported)."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ..conftest import REPO, TINY

pytestmark = pytest.mark.slow
SHADOW = "raise RuntimeError(\"the research directory's own {} was imported in place of anytrain's\")\n"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin dir of a fresh venv holding only the anytrain wheel, the wheel). The dependencies (torch, hydra, ...)
    come from this test's environment through a .pth path line, which does not run that environment's .pth hooks,
    so the checkout's editable install stays out of the fresh one; nothing is downloaded."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"  # a clean copy of the tracked files: no .venv, build/ or egg-info leftovers in the wheel
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True)
    for name in files.stdout.splitlines():
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "-q"]
    r = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", src], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (root / "dist").glob("anytrain-*.whl")
    venv = root / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", venv], check=True)
    r = subprocess.run(
        [venv / "bin" / "pip", "install", "-q", "--no-index", "--no-deps", wheel], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([venv / "bin" / "python", "-c", code], capture_output=True, text=True).stdout.strip())
    (site / "anytrain-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin", wheel


@pytest.fixture()
def research_dir(tmp_path):
    """A user's directory with modules named like anytrain's packages."""
    (tmp_path / "data.py").write_text(SHADOW.format("data.py"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text(SHADOW.format("models/"))
    return tmp_path


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.pop("PYTHONPATH", None)
    return {**env, "OMP_NUM_THREADS": "1"}


def _run(cmd: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_the_wheel_ships_the_configs_and_the_job_templates(installed):
    import zipfile

    names = set(zipfile.ZipFile(installed[1]).namelist())
    assert {
        "trainer/configs/train.yaml",
        "trainer/configs/model/debug.yaml",
        "trainer/configs/optim/muon.yaml",
    } <= names
    assert {"trainer/cluster/templates/slurm.sh", "trainer/cluster/templates/pbs.sh"} <= names
    assert not any(n.startswith(("tests/", "configs/", "scripts/")) for n in names)


def test_installed_commands_train_render_and_count_from_a_research_directory(installed, research_dir, tok_cache):
    bin_dir, _ = installed
    where = _run(
        [bin_dir / "python", "-I", "-c", "import trainer, data, models; print(trainer.__file__, data.__file__)"],
        research_dir,
    )
    assert where.returncode == 0 and str(bin_dir.parent) in where.stdout and str(REPO) not in where.stdout, where
    run = research_dir / "runs" / "tiny"
    overrides = [*TINY, tok_cache, "trainer.max_steps=2", "schedule.warmup_steps=1", "trainer.eval_every=0"]
    r = _run([bin_dir / "train", *overrides, f"trainer.run_dir={run}"], research_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "DONE").is_file() and (run / "checkpoints" / "step-2" / "COMPLETE").is_file()

    job = research_dir / "runs" / "job"
    r = _run(
        [bin_dir / "train", *overrides, "launcher=slurm", "launcher.submit=false", f"trainer.run_dir={job}"],
        research_dir,
    )
    assert r.returncode == 0 and (job / "job.slurm").is_file(), r.stderr[-3000:]
    # The job's own command, as srun would start it on one rank, from the directory the job runs in.
    script = (job / "job.slurm").read_text().splitlines()
    line = next(x for x in script if x.endswith(' run "$RUN_DIR"'))
    entry = re.sub(r"^srun( --\S+)* ", "", line)
    python = "; ".join(x for x in script if x.startswith("PYTHON="))  # the script's own choice of interpreter
    r = _run(["bash", "-c", f"{python}; RUN_DIR={job}; {entry}"], research_dir)
    assert r.returncode == 0 and (job / "DONE").is_file(), r.stderr[-3000:]

    r = _run([bin_dir / "anytrain", "params", "2b"], research_dir)
    assert r.returncode == 0 and re.search(r"parameters: [\d,]+", r.stdout), r.stderr


def test_python_m_from_a_research_directory_stops_with_one_line(installed, research_dir):
    """`python -m` puts the current directory first: the clash is named, nothing of the user's module runs."""
    r = _run([installed[0] / "python", "-m", "trainer.cli", "trainer.max_steps=1"], research_dir)
    assert r.returncode == 2, r.stderr
    assert (
        len(r.stderr.strip().splitlines()) == 1 and "shadows it" in r.stderr and "research directory's" not in r.stderr
    )
    assert "`import models` finds " + str(research_dir / "models") in r.stderr
