"""Saving a run's checkpoints on every rank (synchronously or in the background), pruning old ones, and loading
one into the live, possibly sharded, model and optimizer. The file layout is in files.py."""

import logging
import shutil
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .. import distributed
from .files import CHECKPOINTS, CheckpointError, complete_checkpoints, publish

log = logging.getLogger(__name__)


@dataclass
class CheckpointConfig:
    every: int = 100
    """Save every this many steps and at the last step (0: only when preempted)."""
    keep_last: int = 3
    """Complete checkpoints to keep (older ones are deleted after a newer one is complete); 0 keeps all."""
    load: str | None = None
    """Start from another run's checkpoint: a step-N directory, or a run or checkpoints directory (its newest
    complete checkpoint). The run's own checkpoints win over it when there are any."""
    load_state: str = "model"
    """What `load` restores: "model" (weights only; step, optimizer and data start fresh) or "all" (continue its
    step, optimizer, schedule and data position)."""
    async_save: bool = False
    """Write checkpoints in a background thread (training continues once the state is staged in host memory);
    the checkpoint is finalised, and marked complete, at the next save or at the end of the run."""


@dataclass
class _Pending:
    step: int
    tmp: Path
    meta: dict[str, Any]
    future: Future | None


class Checkpointer:
    """Saves and finds the checkpoints of one run. Every method is called on every rank."""

    def __init__(self, cfg: CheckpointConfig, run_dir: str | Path, rank: int, tokenizer: Any = None):
        self.cfg = cfg
        self.root = Path(run_dir) / CHECKPOINTS
        self.rank = rank
        self.tokenizer = tokenizer
        self._pending: _Pending | None = None
        # DCP's asynchronous save finishes (gathers metadata) in a background thread over a CPU-capable group; it
        # must be its own group, or its collectives race the training loop's on the world group.
        self._async_group = distributed.cpu_group(dedicated=True) if cfg.async_save else None

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        rank_state: dict[str, Any],
        meta: dict[str, Any],
    ) -> None:
        """Write step-N (finishing any earlier asynchronous save first)."""
        self.finish()
        tmp = self.root / f".step-{step}.tmp"

        def prepare() -> None:
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)  # the leftovers of a save that crashed
                tmp.mkdir(parents=True)

        distributed.together(prepare)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        future = None
        if self.cfg.async_save:
            future = dcp.async_save(
                state, checkpoint_id=str(tmp), no_dist=not distributed.is_distributed(), process_group=self._async_group
            )
        else:
            dcp.save(state, checkpoint_id=str(tmp), no_dist=not distributed.is_distributed())
        self._pending = _Pending(step, tmp, meta, future)
        distributed.together(lambda: torch.save(rank_state, tmp / f"rank-{self.rank}.pt"))
        if future is None:
            self.finish()

    def finish(self) -> None:
        """Wait for the pending save on every rank, then mark it complete and publish it under its final name."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        distributed.together(lambda: pending.future.result() if pending.future is not None else None)
        distributed.together(lambda: self._publish(pending) if self.rank == 0 else None)

    def _publish(self, pending: _Pending) -> None:
        final = publish(pending.tmp, self.root / f"step-{pending.step}", pending.step, pending.meta, self.tokenizer)
        log.info("checkpoint saved: %s", final)
        self._prune(keep=final)

    def _prune(self, keep: Path) -> None:
        if self.cfg.keep_last <= 0:
            return
        for old in complete_checkpoints(self.root, warn=False)[self.cfg.keep_last :]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)


def restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load model (and optimizer, when given) from a checkpoint into the live, possibly sharded, objects."""
    model_sd, optim_sd = get_state_dict(model, optimizer if optimizer is not None else [])
    state = {"model": model_sd}
    if optimizer is not None:
        state["optim"] = optim_sd
    try:
        dcp.load(state, checkpoint_id=str(path), no_dist=not distributed.is_distributed())
    except Exception as e:  # DCP raises many kinds on truncated or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    else:
        set_state_dict(model, [], model_state_dict=model_sd, optim_state_dict={})
