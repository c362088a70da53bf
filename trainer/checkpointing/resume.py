"""Which checkpoint a run starts from: the newest of its own that verifies (content digests, shared out over the
ranks), else checkpoint.load's; a run whose checkpoints all fail refuses to start rather than train over them."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from .. import distributed
from ..config import TrainConfig
from . import digests
from .files import (
    CHECKPOINTS,
    CheckpointError,
    complete_checkpoints,
    digested_files,
    load_candidates,
    read_meta,
    step_of,
    verify,
)

log = logging.getLogger(__name__)


def shared_check(path: Path, ranks: distributed.Ranks) -> str | None:
    """verify() and the content digests of a checkpoint, each rank hashing its share of the files (a collective):
    None on every rank when all match, else (the same on every rank) what is wrong."""
    problem = verify(path)
    if problem is None:
        names = digested_files(path)
        bad = digests.first_mismatch(path, read_meta(path)["files"], names[ranks.rank :: ranks.world_size])
        first = distributed.min_over_ranks(names.index(bad[0]) if bad else math.inf)
        if first < math.inf:
            mine = bad is not None and names.index(bad[0]) == first
            problem = bad[1] if mine else f"file {names[int(first)]} does not match its recorded size or digest"
    if distributed.max_over_ranks(0.0 if problem is None else 1.0) and problem is None:
        problem = "another rank could not read it"
    return problem


def first_verified(found: list[Path], ranks: distributed.Ranks) -> tuple[Path | None, list[str]]:
    """The newest of `found` (newest first) that verifies, and a line for each one skipped before it."""
    skipped = []
    for p in found:
        problem = shared_check(p, ranks)
        if problem is None:
            if not digested_files(p) and ranks.is_main:
                log.warning("checkpoint %s has no content digests (saved by an older anytrain): sizes checked only", p)
            return p, skipped
        skipped.append(f"{p.name}: {problem}")
        if ranks.is_main:
            log.warning("skipping checkpoint %s: %s", p, problem)
    return None, skipped


def resume_source(cfg: TrainConfig, run_dir: Path, ranks: distributed.Ranks) -> tuple[Path | None, bool]:
    """(checkpoint to start from, whether to restore everything). The run's own checkpoints win over
    checkpoint.load; when it has some and none verifies, the run stops (or, with checkpoint.start_over, sets
    them aside and starts from step 0)."""
    root = run_dir / CHECKPOINTS
    own, skipped = first_verified(complete_checkpoints(root, warn=ranks.is_main), ranks)
    if own is not None:
        return own, True
    saved = sorted((p for p in root.iterdir() if step_of(p) is not None), key=step_of) if root.is_dir() else []
    if saved:
        _all_broken(cfg, root, saved, skipped, ranks)
    if cfg.checkpoint.load:
        found, skipped = first_verified(load_candidates(cfg.checkpoint.load), ranks)
        if found is None:
            raise CheckpointError(
                f"checkpoint.load={cfg.checkpoint.load}: no checkpoint there verifies ({'; '.join(skipped)}): "
                f"restore it from a copy, or point checkpoint.load at another checkpoint"
            )
        return found, cfg.checkpoint.load_state == "all"
    return None, False


def _all_broken(cfg: TrainConfig, root: Path, saved: list[Path], skipped: list[str], ranks: distributed.Ranks) -> None:
    """Every checkpoint of the run failed: refuse, or (checkpoint.start_over) move them aside, never delete them."""
    names = ", ".join(p.name for p in saved)
    why = "; ".join(skipped) or "none is complete"
    if not cfg.checkpoint.start_over:
        raise CheckpointError(
            f"{root} holds checkpoints ({names}) but none verifies ({why}): restore them from a copy, or set "
            f"checkpoint.start_over=true to train from step 0 (they are then moved aside, not deleted)"
        )
    aside = root.with_name(f"{CHECKPOINTS}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
    distributed.together(lambda: root.rename(aside) if ranks.is_main else None)
    if ranks.is_main:
        log.warning("checkpoint.start_over=true: no checkpoint of %s verifies; moved them to %s", root, aside)
