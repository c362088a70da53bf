"""Saving a run's checkpoints on every rank (synchronously or in the background), pruning old ones, and loading
one into the live, possibly sharded, model and optimizer. The file layout is in files.py.

Never poison, never lose the last good one: a save whose weights are not finite is refused (checked at the save,
which synchronises anyway, not in the step), each checkpoint records whether it was saved healthy (finite weights,
no automatic skip in progress), and pruning keeps the newest healthy checkpoint whatever keep_last says. A save that
fails for want of disk space says so in one line and leaves the previous checkpoints as they were."""

import errno
import logging
import shutil
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .. import distributed
from .files import (
    CHECKPOINTS,
    CheckpointError,
    complete_checkpoints,
    load_dcp,
    newest_healthy,
    publish,
    write_rank_digests,
)

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
    allow_changes: list[str] = field(default_factory=list)
    """What a resume may change that alters what is trained (refused otherwise): any of model, tokenizer, data,
    seq_len, global_batch, optim. Other changes (LR, schedule, max_steps, cadences, ...) are applied and
    listed. With data, the data position starts afresh; with optim, the optimizer state does."""
    start_over: bool = False
    """Start from step 0 although the run directory holds checkpoints of which none verifies (they are moved aside to
    checkpoints.broken-<time>/, never deleted). Without it such a run refuses to start."""


class PoisonedWeights(CheckpointError):
    """The weights hold NaN or Inf at a save: the checkpoint is not written."""


class DiskFull(CheckpointError):
    """A save ran out of disk space."""


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
        """Write step-N (finishing any earlier asynchronous save first). Raises PoisonedWeights, and writes nothing,
        when the weights are not finite on any rank."""
        self.finish()
        if not weights_finite(model):
            raise PoisonedWeights(f"the weights hold NaN or Inf at step {step}")
        tmp = self.root / f".step-{step}.tmp"
        try:
            self._save(step, tmp, model, optimizer, rank_state, meta)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # DCP's CheckpointException is a BaseException
            self._pending = None
            raise self._explain(e, step, tmp) from None

    def _save(
        self,
        step: int,
        tmp: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        rank_state: dict[str, Any],
        meta: dict[str, Any],
    ) -> None:

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
        try:
            distributed.together(lambda: pending.future.result() if pending.future is not None else None)
            distributed.together(lambda: write_rank_digests(pending.tmp, self.rank))
            distributed.together(lambda: self._publish(pending) if self.rank == 0 else None)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            raise self._explain(e, pending.step, pending.tmp) from None

    def _explain(self, e: BaseException, step: int, tmp: Path) -> BaseException:
        """A failed save as one line when the disk is full (the partial save removed), else the error itself.
        torch's writers often hide ENOSPC ("unexpected pos 704 vs 598"), so free space decides too."""
        needed = _checkpoint_bytes(self.root, tmp)
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(self.root).free if self.root.exists() else 0
        if isinstance(e, (distributed.PeerFailed, distributed.CollectiveTimeout)) or not (
            _is_enospc(e) or free < needed
        ):
            return e  # free space only explains an error of this rank's own writes (torch often hides the errno)
        previous = complete_checkpoints(self.root, warn=False)
        kept = f"the previous checkpoint {previous[0]} is intact" if previous else "no earlier checkpoint exists"
        return DiskFull(
            f"no space left on the device of {self.root} while saving step {step}: a checkpoint needs about "
            f"{needed / 2**30:.2f} GiB and {free / 2**30:.2f} GiB are free ({kept}; the partial save was removed): "
            f"free space there, lower checkpoint.keep_last, or move trainer.run_dir"
        )

    def _publish(self, pending: _Pending) -> None:
        final = publish(pending.tmp, self.root / f"step-{pending.step}", pending.step, pending.meta, self.tokenizer)
        log.info("checkpoint saved: %s", final)
        self._prune(keep=final)

    def _prune(self, keep: Path) -> None:
        """Delete all but the keep_last newest, never `keep` (just saved) nor the newest healthy checkpoint."""
        if self.cfg.keep_last <= 0:
            return
        found = complete_checkpoints(self.root, warn=False)
        safe = {keep, newest_healthy(found)}
        for old in found[self.cfg.keep_last :]:
            if old not in safe:
                shutil.rmtree(old, ignore_errors=True)


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every weight is finite on every rank: one reduction on the device, one host read."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    flags = [torch.isfinite(t).all() for t in local if t.numel()]  # a rank may hold no shard at all
    ok = torch.stack(flags).all().float() if flags else torch.ones(())
    return distributed.min_over_ranks(float(ok.item())) > 0


def _is_enospc(e: BaseException) -> bool:
    seen: list[BaseException] = [e]
    for failure in getattr(e, "failures", {}).values():  # DCP: {rank: (exception, stack)}
        seen.append(failure[0] if isinstance(failure, tuple) else failure)
    full = (errno.ENOSPC, errno.EDQUOT)  # EDQUOT: a quota, the usual limit on a cluster's shared filesystem
    text = str(e).lower()
    return any(isinstance(x, OSError) and x.errno in full for x in seen) or "no space left" in text or "quota" in text


def _checkpoint_bytes(root: Path, tmp: Path) -> int:
    """The size of the newest complete checkpoint (what the next one will need), or what the partial one holds."""
    found = complete_checkpoints(root, warn=False)
    where = found[0] if found else tmp
    return sum(f.stat().st_size for f in where.iterdir() if f.is_file()) if where.is_dir() else 0


def restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load model (and optimizer, when given) from a checkpoint into the live, possibly sharded, objects."""
    model_sd, optim_sd = get_state_dict(model, optimizer if optimizer is not None else [])
    state = {"model": model_sd}
    if optimizer is not None:
        state["optim"] = optim_sd
    load_dcp(state, path, no_dist=not distributed.is_distributed())
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    else:
        set_state_dict(model, [], model_state_dict=model_sd, optim_state_dict={})
