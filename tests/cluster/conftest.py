"""Shared pieces of the cluster tests: tiny-model overrides for a 2-rank job and a clean subprocess environment."""

import json
import os
import subprocess
from pathlib import Path

from ..conftest import REPO, TINY, TRAIN

# 2 ranks of the tiny model with DDP: global batch 8 = micro-batch 4 x 2 ranks.
JOB = [*TINY, "parallel=ddp", "trainer.eval_every=0", "trainer.log_every=1"]
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "PMI_", "SLURM_", "PBS_", "ANYTRAIN_", "OMPI_")


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_VARS)}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def train(overrides: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`train OVERRIDES` as a user runs it (a fresh process: Hydra composes, the launcher renders/submits)."""
    r = subprocess.run(
        [*TRAIN, *overrides],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def steps(run_dir: Path) -> list[int]:
    return [m["step"] for m in metrics(run_dir) if "loss" in m]
