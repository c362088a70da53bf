"""Cluster launchers: render a PBS or SLURM job script from the config and submit it (placeholder: local only)."""

from dataclasses import dataclass
from pathlib import Path


@dataclass
class LauncherConfig:
    name: str = "local"
    """"local" runs now, in this process (or under the launcher that started it)."""


def launch(cfg, run_dir: Path) -> Path:
    raise NotImplementedError(f"launcher.name={cfg.launcher.name!r} is not implemented yet")
