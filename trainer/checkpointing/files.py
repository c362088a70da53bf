"""Checkpoints that never lose a run.

Layout of one checkpoint, `<run>/checkpoints/step-N/`:
- `.metadata`, `*.distcp`: torch.distributed.checkpoint of {"model": ..., "optim": ...} (fp32 master weights,
  sharded as saved; any number of ranks can load it);
- `rank-R.pt`: what is local to rank R (RNG states, data position, schedule);
- `meta.json`: step, world size, architecture (incl. the RoPE convention), tokenizer, resolved config, whether the
  weights were healthy when saved, and every other file's size and content digest (digests.py);
- `tokenizer.json`: the tokenizer the run used;
- `COMPLETE`: written last.

A checkpoint is written into `.step-N.tmp/` and renamed to `step-N/` only once every rank has finished and the marker
is in place, so a crash mid-save never leaves a directory that a resume would pick. Each rank digests the files it
wrote (`.digests-R.json`, merged into meta.json by rank 0). Nothing is unpickled on load (safe_read.py).
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

from . import digests
from .safe_read import UnsafeCheckpoint, safe_load

log = logging.getLogger(__name__)
# DCP warns that it runs "in a single process" every time it does, which is what we ask of it there.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

FORMAT = 2  # 2: meta.json records content digests
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
    for name, entry in meta.get("files", {}).items():
        size = entry["size"] if isinstance(entry, dict) else entry  # format 1 recorded sizes only
        f = path / name
        if not f.is_file():
            return f"file {name} is missing"
        if f.stat().st_size != size:
            return f"file {name} has {f.stat().st_size} bytes, {size} were written (truncated or altered)"
    return None


def digested_files(path: Path) -> list[str]:
    """The files of a checkpoint that have a recorded digest, in a fixed order ([] for a format-1 checkpoint)."""
    files = read_meta(path).get("files", {})
    return sorted(n for n, e in files.items() if isinstance(e, dict) and "sha256" in e)


def verify_content(path: Path, share: tuple[int, int] = (0, 1)) -> str | None:
    """verify(), then the content digests of this rank's share (rank, world) of the files: None when they match,
    else what is wrong, naming the file."""
    problem = verify(path)
    if problem is not None:
        return problem
    names = digested_files(path)[share[0] :: share[1]]
    bad = digests.first_mismatch(path, read_meta(path)["files"], names)
    return None if bad is None else bad[1]


def verify_or_raise(path: Path) -> None:
    """verify_content() of the whole checkpoint in this process, as a CheckpointError. A format-1 checkpoint
    (sizes only) is accepted with a warning."""
    problem = verify_content(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path}: {problem}")
    if not digested_files(path):
        log.warning("checkpoint %s has no content digests (saved by an older anytrain): only sizes checked", path)


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


def newest_healthy(found: list[Path]) -> Path | None:
    """The newest of `found` (newest first) that was saved healthy; checkpoints older than the flag count as such."""
    for p in found:
        try:
            if read_meta(p).get("healthy", True):
                return p
        except (OSError, ValueError):
            continue
    return None


def load_candidates(path: str | Path) -> list[Path]:
    """A step-N directory as is; a run or checkpoints directory: its complete checkpoints, newest first."""
    p = Path(path).expanduser()
    if step_of(p) is not None or (p / META).is_file():
        problem = verify(p)
        if problem:
            raise CheckpointError(f"checkpoint.load={path}: {problem}")
        return [p]
    for root in (p / CHECKPOINTS, p):
        found = complete_checkpoints(root)
        if found:
            return found
    raise CheckpointError(
        f"checkpoint.load={path}: no complete checkpoint there (expected a step-N directory with a {COMPLETE} marker, "
        f"or a run directory holding checkpoints/step-N)"
    )


def resolve_load_path(path: str | Path) -> Path:
    """The newest of load_candidates(path) (sizes checked; resume.first_verified checks the content)."""
    return load_candidates(path)[0]


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


def write_rank_digests(tmp: Path, rank: int) -> None:
    """Digest the files this rank wrote into a checkpoint (its DCP shards and rank-R.pt) into .digests-R.json."""
    mine = [*tmp.glob(f"__{rank}_*.distcp"), *tmp.glob(f"rank-{rank}.pt")]
    _fsync_write(tmp / f".digests-{rank}.json", json.dumps(digests.digest_files(sorted(mine))))


def merge_rank_digests(tmp: Path) -> dict[str, dict[str, int | str]]:
    """Every rank's digests, plus those of the files no rank digested (.metadata, the tokenizer), on rank 0."""
    files: dict[str, dict[str, int | str]] = {}
    for part in tmp.glob(".digests-*.json"):
        files.update(json.loads(part.read_text()))
        part.unlink()
    rest = [f for f in tmp.iterdir() if f.is_file() and f.name not in files and f.name not in (META, COMPLETE)]
    files.update(digests.digest_files(sorted(rest)))
    return files


def publish(tmp: Path, final: Path, step: int, meta: dict[str, Any], tokenizer: Any = None) -> Path:
    """Finish a checkpoint written into tmp: tokenizer, meta with file sizes, marker last, then the atomic rename.
    `tokenizer` is a tokenizer.json path or a `tokenizers.Tokenizer`."""
    if isinstance(tokenizer, (str, Path)):
        shutil.copyfile(tokenizer, tmp / TOKENIZER)
    elif tokenizer is not None:
        tokenizer.save(str(tmp / TOKENIZER))
    files = merge_rank_digests(tmp)
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


def load_model_state(
    path: str | Path, verified: bool = False
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """The consolidated fp32 weights of a checkpoint in this single process (no process group needed), with its
    model config and meta. Tied checkpoints hold both tok_embeddings.weight and output.weight (equal)."""
    path = Path(path)
    if not verified:  # the caller checked the digests already: hashing a large checkpoint takes seconds
        verify_or_raise(path)
    meta = read_meta(path)
    cfg = ModelConfig(**meta["model"])
    shapes = build_model(cfg, device="meta").state_dict()
    state = {k: torch.empty(v.shape, dtype=torch.float32) for k, v in shapes.items()}
    load_dcp({"model": state}, path, no_dist=True)
    return cfg, state, meta


def load_dcp(state: dict[str, Any], path: Path, no_dist: bool) -> None:
    """safe_load, with whatever DCP raises (its CheckpointException is a BaseException) as a CheckpointError."""
    try:
        safe_load(state, str(path), no_dist)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # DCP raises many kinds, some not Exceptions, on truncated or foreign files
        if isinstance(e, UnsafeCheckpoint):
            raise CheckpointError(f"checkpoint {path} refused: {e} (do not load it: it may be crafted)") from None
        raise CheckpointError(f"checkpoint {path} cannot be read: {_short(e)}") from None


def _short(e: BaseException) -> str:
    """The last line of an error: DCP's own messages carry whole tracebacks."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1].strip() if lines else ''}"


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
