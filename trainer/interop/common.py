"""What export, import and consolidation share: their error type, argument checks, and atomic publication (into a
hidden temp path that is renamed at the end, so a crash never leaves a half-written result behind)."""

import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from models import hf

from .. import checkpointing, distributed
from ..checkpointing.files import load_candidates
from ..checkpointing.resume import first_verified


class ExportError(ValueError):
    """Input that cannot be exported, imported or consolidated, with the reason."""


def anytrain_version() -> str:
    try:
        return version("anytrain")
    except PackageNotFoundError:
        return "unknown"


def to_dtype(name: str) -> torch.dtype:
    if name not in hf.DTYPES:
        raise ExportError(f"--dtype must be one of {sorted(hf.DTYPES)}, got {name!r}")
    return hf.DTYPES[name]


def check_target(out: Path, force: bool) -> None:
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        if not force:
            raise ExportError(f"{out} exists and is not empty: choose another path or pass --force to replace it")


def publish_dir(tmp: Path, out: Path, force: bool) -> Path:
    """Rename the finished tmp directory to out, replacing an empty (or, with force, any) existing one."""
    check_target(out, force)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return out


def readable(path: Path) -> None:
    # safetensors creates files 0600; an export is meant to be shared like the rest of the directory.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def tmp_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def resolve_checkpoint(path: str | Path) -> Path:
    """The newest checkpoint at `path` whose content verifies (the others skipped with a warning), as a resume
    picks it; load it with load_model_state(..., verified=True)."""
    try:
        found, skipped = first_verified(load_candidates(path), distributed.Ranks())
    except checkpointing.CheckpointError as e:  # worded for the training config key; here it is an argument
        raise ExportError(str(e).removeprefix("checkpoint.load=")) from None
    if found is None:
        raise ExportError(f"{path}: no checkpoint there verifies ({'; '.join(skipped)}): restore it from a copy")
    return found
