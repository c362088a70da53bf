"""Checkpoints that never lose a run.

Layout of one checkpoint, `<run>/checkpoints/step-N/`:
- `.metadata`, `*.distcp`: torch.distributed.checkpoint of {"model": ..., "optim": ...} (fp32 master weights,
  sharded as saved; any number of ranks can load it);
- `rank-R.pt`: what is local to rank R (RNG states, data position, schedule);
- `meta.json`: step, world size, architecture (incl. the RoPE convention), tokenizer, resolved config, file sizes;
- `tokenizer.json`: the tokenizer the run used;
- `COMPLETE`: written last.

A checkpoint is written into `.step-N.tmp/` and renamed to `step-N/` only once every rank has finished and the marker
is in place, so a crash mid-save never leaves a directory that a resume would pick.
"""

import json
import logging
import os
import re
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from models import ModelConfig, build_model

log = logging.getLogger(__name__)
# DCP warns that it runs "in a single process" every time it does, which is what we ask of it there.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

FORMAT = 1
COMPLETE, META, TOKENIZER = "COMPLETE", "meta.json", "tokenizer.json"
CHECKPOINTS = "checkpoints"  # the folder of a run directory that holds its step-N checkpoints
# Fields that change the function a checkpoint's weights compute; a mismatch with the config is an error.
ARCH_FIELDS = (
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "ffn_hidden",
    "vocab_size",
    "rope_theta",
    "rope_style",
    "tie_embeddings",
    "qk_norm",
    "norm_eps",
)
_STEP = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason."""


def step_of(path: Path) -> int | None:
    m = _STEP.match(path.name)
    return int(m.group(1)) if m else None


def verify(path: Path) -> str | None:
    """None when the checkpoint is complete and intact, else what is wrong with it."""
    if not (path / COMPLETE).is_file():
        return f"no {COMPLETE} marker (the save did not finish)"
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as e:
        return f"unreadable {META}: {e}"
    for name, size in meta.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"file {name} is missing"
        if f.stat().st_size != size:
            return f"file {name} has {f.stat().st_size} bytes, {size} were written (truncated or altered)"
    return None


def complete_checkpoints(root: Path, warn: bool = True) -> list[Path]:
    """Intact checkpoints under root, newest first; broken ones are skipped with a warning."""
    if not root.is_dir():
        return []
    found = sorted((p for p in root.iterdir() if p.is_dir() and step_of(p) is not None), key=step_of, reverse=True)
    good = []
    for p in found:
        problem = verify(p)
        if problem is None:
            good.append(p)
        elif warn:
            log.warning("skipping checkpoint %s: %s", p, problem)
    return good


def resolve_load_path(path: str | Path) -> Path:
    """A step-N directory as is; a run or checkpoints directory: its newest complete checkpoint."""
    p = Path(path).expanduser()
    if step_of(p) is not None or (p / META).is_file():
        problem = verify(p)
        if problem:
            raise CheckpointError(f"checkpoint.load={path}: {problem}")
        return p
    for root in (p / CHECKPOINTS, p):
        found = complete_checkpoints(root)
        if found:
            return found[0]
    raise CheckpointError(
        f"checkpoint.load={path}: no complete checkpoint there (expected a step-N directory with a {COMPLETE} marker, "
        f"or a run directory holding checkpoints/step-N)"
    )


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / META).read_text())


def override(name: str, value: Any) -> str:
    """The command-line override that sets model.NAME to value."""
    return f"model.{name}={'null' if value is None else str(value).lower() if isinstance(value, bool) else value}"


def check_architecture(meta: dict[str, Any], model: ModelConfig, where: Path) -> None:
    """Every architecture field on which the config and the checkpoint disagree, in one error with the overrides
    that would make it load."""
    saved = meta["model"]
    wrong = [name for name in ARCH_FIELDS if saved.get(name) != getattr(model, name)]
    if wrong:
        differences = ", ".join(f"model.{n}={saved.get(n)!r} but the config has {getattr(model, n)!r}" for n in wrong)
        fix = " ".join(override(n, saved.get(n)) for n in wrong)
        raise CheckpointError(
            f"checkpoint {where} was trained with {differences}: add `{fix}` to load it (or leave the model fields "
            f"unset, and they are taken from the checkpoint), or start without this checkpoint"
        )


def load_rank_states(path: Path) -> list[dict[str, Any]]:
    """Every rank's local state of a checkpoint, in rank order."""
    files = sorted(path.glob("rank-*.pt"), key=lambda f: int(f.stem.split("-")[1]))
    return [torch.load(f, map_location="cpu", weights_only=True) for f in files]


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def publish(tmp: Path, final: Path, step: int, meta: dict[str, Any], tokenizer: Any = None) -> Path:
    """Finish a checkpoint written into tmp: tokenizer, meta with file sizes, marker last, then the atomic rename.
    `tokenizer` is a tokenizer.json path or a `tokenizers.Tokenizer`."""
    if isinstance(tokenizer, (str, Path)):
        shutil.copyfile(tokenizer, tmp / TOKENIZER)
    elif tokenizer is not None:
        tokenizer.save(str(tmp / TOKENIZER))
    files = {f.name: f.stat().st_size for f in tmp.iterdir() if f.is_file()}
    meta = {**meta, "format": FORMAT, "step": step, "saved_at": time.time(), "files": files}
    _fsync_write(tmp / META, json.dumps(meta, indent=1))
    _fsync_write(tmp / COMPLETE, f"{step}\n")
    if final.exists():  # the same step saved again after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def load_model_state(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """The consolidated fp32 weights of a checkpoint in this single process (no process group needed), with its
    model config and meta. Tied checkpoints hold both tok_embeddings.weight and output.weight (equal)."""
    path = Path(path)
    problem = verify(path)
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}")
    meta = read_meta(path)
    cfg = ModelConfig(**meta["model"])
    shapes = build_model(cfg, device="meta").state_dict()
    state = {k: torch.empty(v.shape, dtype=torch.float32) for k, v in shapes.items()}
    try:
        dcp.load({"model": state}, checkpoint_id=str(path), no_dist=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    return cfg, state, meta


def write_model_checkpoint(
    out_dir: str | Path,
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    meta: dict[str, Any] | None = None,
    tokenizer: Any = None,
) -> Path:
    """A model-only checkpoint (step 0) that `checkpoint.load=OUT_DIR` can start from, written atomically."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    dcp.save({"model": {k: v.float().contiguous() for k, v in state.items()}}, checkpoint_id=str(tmp), no_dist=True)
    return publish(tmp, out, 0, {"model": asdict(cfg), "model_only": True, **(meta or {})}, tokenizer)
