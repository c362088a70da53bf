"""What a run saves besides weights and optimizer (the schedule, RNG, data position, spike state, counters), where a
run resumes from, and how that state is put back. The only place that knows which parts of a run are checkpointed."""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

import data

from .. import distributed, run_lock
from ..config import TrainConfig, config_to_yaml
from .changes import Changes
from .checkpointer import PoisonedWeights, restore
from .files import (
    ARCH_FIELDS,
    CHECKPOINTS,
    TOKENIZER,
    CheckpointError,
    complete_checkpoints,
    load_rank_states,
    newest_healthy,
    override,
    read_meta,
    resolve_load_path,
)

if TYPE_CHECKING:
    from ..run import Run

log = logging.getLogger(__name__)


# Model fields a checkpoint fixes: its architecture, and the RoPE table length it was made for.
ADOPTED_MODEL_FIELDS = (*ARCH_FIELDS, "max_seq_len")


def adopt_checkpoint(cfg: TrainConfig, run_dir: Path, given: set[str]) -> tuple[TrainConfig, list[str]]:
    """What checkpoint.load's checkpoint knows and the command line did not set: the model's architecture and the
    tokenizer it was trained with, so that `train checkpoint.load=DIR` needs no hand-typed fields. `given`: the
    keys set on the command line ("model" for a model=... choice, "model.dim", ...); a given field is kept, and
    build_run lists every disagreement. Returns the config and the overrides it took.

    The tokenizer.json is copied into the run directory and the config points there: a step-N directory of
    another run is pruned sooner or later, and an import directory may move. Rerunning the same command to resume
    takes the same fields again, from the run's own newest checkpoint, which wins over checkpoint.load."""
    if not cfg.checkpoint.load:
        return cfg, []
    own = complete_checkpoints(run_dir / CHECKPOINTS, warn=False)
    source = own[0] if own else resolve_load_path(cfg.checkpoint.load)
    meta, taken, model = read_meta(source), [], cfg.model
    if "model" not in given:
        saved = meta.get("model", {})
        changes = {
            n: saved[n]
            for n in ADOPTED_MODEL_FIELDS
            if n in saved and f"model.{n}" not in given and saved[n] != getattr(model, n)
        }
        model = replace(model, **changes)
        taken += [override(n, v) for n, v in changes.items()]
    tok = cfg.data.tokenizer
    if not given & {"data.tokenizer.kind", "data.tokenizer.path"}:  # the user did not choose one
        if not (source / TOKENIZER).is_file():
            raise CheckpointError(
                f"checkpoint {source} holds no {TOKENIZER}, so its tokenizer is unknown: name the one its weights "
                f"were trained with (data.tokenizer.kind=file data.tokenizer.path=.../tokenizer.json, or kind=gpt2)"
            )
        copy = run_dir / TOKENIZER
        if not copy.is_file() or (not own and copy.read_bytes() != (source / TOKENIZER).read_bytes()):
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / TOKENIZER, copy)
        eos = tok.eos_token if "data.tokenizer.eos_token" in given else (meta.get("tokenizer") or {}).get("eos_token")
        new = replace(tok, kind="file", path=str(copy.resolve()), eos_token=eos or tok.eos_token)
        if new != tok:
            tok = new
            taken.append(f"data.tokenizer.kind=file data.tokenizer.path={new.path} (a copy of {source / TOKENIZER})")
    return replace(cfg, model=model, data=replace(cfg.data, tokenizer=tok)), taken


def check_tokenizer(source: Path, tokenizer: Tokenizer) -> None:
    """The configured tokenizer must be the one the checkpoint's weights were trained with (same token -> id map):
    embedding rows belong to ids, and another tokenizer would quietly scramble them."""
    saved = source / TOKENIZER
    if saved.is_file() and Tokenizer.from_file(str(saved)).get_vocab() != tokenizer.get_vocab():
        raise CheckpointError(
            f"the configured tokenizer is not the one checkpoint {source} was trained with (its {TOKENIZER} maps "
            f"tokens to other ids): use data.tokenizer.kind=file data.tokenizer.path={saved} (or leave data.tokenizer "
            f"unset with checkpoint.load, and it is taken from the checkpoint), or name the change: "
            f"checkpoint.allow_changes=[tokenizer]"
        )


def save_run(run: Run, step: int, eval_pending: bool = False) -> None:
    """Checkpoint the run at `step` (a collective: every rank calls it). `eval_pending`: the step's evaluation was
    cut short by a preemption, and the resumed run does it first. Weights that are not finite are never saved."""
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
        "tokens_seen": run.tokens_seen,
        # healthy: finite weights (else no save at all) and no run of automatic skips in progress
        "healthy": int(run.spikes.consecutive.item()) == 0,
        "eval_pending": eval_pending,
        "config": config_to_yaml(cfg),
    }
    distributed.together(lambda: run_lock.check_held(run.run_dir) if run.ranks.is_main else None)
    try:
        run.checkpointer.save(step, run.model, run.optimizer, rank_state, meta)
    except PoisonedWeights as e:
        raise PoisonedWeights(f"{e}: not saved; {no_save_advice(run.run_dir)}") from None


def no_save_advice(run_dir: Path) -> str:
    """What to do when the weights went bad: the newest checkpoint saved healthy, and how to resume from it."""
    good = newest_healthy(complete_checkpoints(run_dir / CHECKPOINTS, warn=False))
    if good is None:
        return "no checkpoint of this run was saved healthy: start again with a lower optim.lr or other data"
    return (
        f"the newest healthy checkpoint is {good} (step {read_meta(good)['step']}): resume from it with "
        f"trainer.skip_steps covering the steps after it that went wrong, or with a lower optim.lr"
    )


def restore_run(run: Run, source: Path, meta: dict[str, Any], full: bool, changes: Changes | None) -> None:
    """Load the weights (and, when `full`, the optimizer and every rank's state) of `source` into the built run.
    `changes`: what the resume changes (changes.compare); those allowed decide what starts afresh."""
    allowed = changes.allowed if changes else {}
    fresh_optim = "optim" in allowed
    settings = [{k: v for k, v in g.items() if k != "params"} for g in run.optimizer.param_groups]  # the config's
    restore(source, run.model, run.optimizer if full and not fresh_optim else None)
    if not full:
        return
    states = load_rank_states(source)
    same_layout = meta["world_size"] == run.ranks.world_size and len(states) == run.ranks.world_size
    mine = states[run.ranks.rank] if same_layout else states[0]
    run.scheduler.load_state_dict(mine["scheduler"])
    distributed.set_rng_state(mine["rng"], run.device)
    if "spikes" in mine:
        run.spikes.load_state_dict(mine["spikes"])
    text_data_changed = bool(allowed.keys() & {"data", "seq_len"}) and not data.uses_stores(run.cfg.data)
    if not text_data_changed:  # token stores go on from the same global position (data.allow_data_change)
        run.train_stream.load_state_dict(data.merge_rank_states([s["data"] for s in states]))
    run.start_step = int(meta["step"])
    run.tokens_seen = int(meta.get("tokens_seen", 0))
    run.eval_pending = bool(meta.get("eval_pending", False))
    lr_before = run.optimizer.param_groups[0]["lr"]
    apply_settings(run, settings)
    if run.ranks.is_main and changes:
        _log_changes(run, changes, lr_before, fresh_optim, text_data_changed)


def apply_settings(run: Run, settings: list[dict[str, Any]]) -> None:
    """The configured optimizer settings (LR, betas, weight decay, ...) over those loaded with its state, and the
    LR the schedule gives now: set_state_dict would otherwise keep the checkpoint's, and a changed optim.lr or
    schedule would be recorded but not applied. Unchanged settings give bit-identical values."""
    sched = run.scheduler
    for group, mine in zip(run.optimizer.param_groups, settings, strict=True):
        group.update(mine)
    sched.base_lrs = [g["initial_lr"] for g in run.optimizer.param_groups]
    for group, base, fn in zip(run.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
        group["lr"] = base * fn(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in run.optimizer.param_groups]


def _log_changes(run: Run, changes: Changes, lr_before: float, fresh_optim: bool, fresh_data: bool) -> None:
    lines = changes.applied + [c for group in changes.allowed.values() for c in group]
    lr_after = run.optimizer.param_groups[0]["lr"]
    if lr_after != lr_before:
        lines.append(f"LR of step {run.start_step + 1}: {lr_before:.4g} -> {lr_after:.4g}")
    if fresh_optim:
        lines.append("optimizer state starts afresh (checkpoint.allow_changes has optim)")
    if fresh_data:
        lines.append("data position starts afresh (the text data changed, as checkpoint.allow_changes allows)")
    if lines:
        log.warning("resuming with changed: %s", "; ".join(lines))
