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


def _local_check(path: Path, ranks: distributed.Ranks) -> tuple[str | None, int | None]:
    """(what is wrong, index of the failing file among the digested ones) for this rank's share; never raises, so
    that every rank reaches the collectives that follow."""
    try:
        problem = verify(path)
        if problem is not None:
            return problem, None
        names = digested_files(path)
        bad = digests.first_mismatch(path, read_meta(path)["files"], names[ranks.rank :: ranks.world_size])
        return (None, None) if bad is None else (bad[1], names.index(bad[0]))
    except (OSError, ValueError, KeyError) as e:  # EIO on a damaged object, ESTALE on NFS, a mangled meta.json
        return f"it cannot be read ({type(e).__name__}: {e})", None


def shared_check(path: Path, ranks: distributed.Ranks) -> str | None:
    """verify() and the content digests of a checkpoint, each rank hashing its share of the files (a collective, the
    same two reductions on every rank): None everywhere when all match, else what is wrong."""
    problem, index = _local_check(path, ranks)
    first = distributed.min_over_ranks(math.inf if index is None else index)
    if not distributed.max_over_ranks(0.0 if problem is None else 1.0):
        return None
    if problem is not None and (index is None or index == first):
        return problem
    if first < math.inf:
        return f"file {digested_files(path)[int(first)]} does not match its recorded size or digest"
    return "another rank could not read it (see its log)"


def first_verified(found: list[Path], ranks: distributed.Ranks) -> tuple[Path | None, list[str]]:
    """The newest of `found` (newest first) that verifies, and a line for each one skipped before it. Every rank
    checks the same candidates: as many as the rank that sees the fewest, each agreed on by its step."""
    skipped = []
    for i in range(int(distributed.min_over_ranks(len(found)))):
        p, step = found[i], step_of(found[i])
        same = distributed.min_over_ranks(step) == distributed.max_over_ranks(step)
        problem = shared_check(p, ranks) if same else "the ranks see different checkpoints (a filesystem lag?)"
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
