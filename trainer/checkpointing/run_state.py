"""What a run saves besides weights and optimizer (the schedule, RNG, data position, spike state, counters), where a
run resumes from, and how that state is put back. The only place that knows which parts of a run are checkpointed."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import distributed
from ..config import TrainConfig, config_to_yaml
from .checkpointer import restore
from .files import CHECKPOINTS, complete_checkpoints, load_rank_states, resolve_load_path

if TYPE_CHECKING:
    from ..run import Run


def resume_source(cfg: TrainConfig, run_dir: Path, is_main: bool) -> tuple[Path | None, bool]:
    """(checkpoint to start from, whether to restore everything). The run's own checkpoints win over
    checkpoint.load."""
    own = complete_checkpoints(run_dir / CHECKPOINTS, warn=is_main)
    if own:
        return own[0], True
    if cfg.checkpoint.load:
        return resolve_load_path(cfg.checkpoint.load), cfg.checkpoint.load_state == "all"
    return None, False


def save_run(run: Run, step: int) -> None:
    """Checkpoint the run at `step` (a collective: every rank calls it)."""
    cfg = run.cfg
    rank_state = {
        "step": step,
        "rng": distributed.rng_state(run.device),
        "data": run.train_stream.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "spikes": run.spikes.state_dict(),
    }
    meta: dict[str, Any] = {
        "world_size": run.ranks.world_size,
        "data_streams": cfg.data.streams or run.ranks.world_size,
        "model": asdict(cfg.model),
        "rope_style": cfg.model.rope_style,
        "tokenizer": {**asdict(cfg.data.tokenizer), "vocab_size_actual": run.train_stream.vocab_size},
        "tokens_seen": step * cfg.trainer.global_batch * cfg.data.seq_len,
        "config": config_to_yaml(cfg),
    }
    run.checkpointer.save(step, run.model, run.optimizer, rank_state, meta)


def restore_run(run: Run, source: Path, meta: dict[str, Any], full: bool) -> None:
    """Load the weights (and, when `full`, the optimizer and every rank's state) of `source` into the built run."""
    restore(source, run.model, run.optimizer if full else None)
    if not full:
        return
    states = load_rank_states(source)
    same_layout = meta["world_size"] == run.ranks.world_size and len(states) == run.ranks.world_size
    mine = states[run.ranks.rank] if same_layout else states[0]
    run.scheduler.load_state_dict(mine["scheduler"])
    distributed.set_rng_state(mine["rng"], run.device)
    if "spikes" in mine:
        run.spikes.load_state_dict(mine["spikes"])
    merged = {k: v for s in states for k, v in s["data"]["streams"].items()}
    run.train_stream.load_state_dict({"next": 0, "streams": merged})
    run.start_step = int(meta["step"])
