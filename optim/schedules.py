"""Learning-rate schedules as pure functions of the step, wrapped in a LambdaLR."""

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("cosine", "linear", "wsd", "constant")


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    """LR schedule after linear warmup: "cosine", "linear" (decay to the floor over the rest of the run),
    "wsd" (warmup, stable, then linear decay over the final `decay_ratio` of the steps) or "constant"."""
    warmup_steps: int = 20
    """Steps of linear warmup from lr / warmup_steps to lr. Longer than the run is an error, never clamped."""
    decay_ratio: float = 0.2
    """wsd only: fraction of all steps spent in the final decay."""
    min_lr_factor: float = 0.1
    """Floor of the decay as a fraction of the peak lr."""


@dataclass(frozen=True)
class Phases:
    """Steps spent in each phase; they add up to the run's steps."""

    warmup: int
    stable: int
    decay: int

    def __str__(self) -> str:
        return f"warmup {self.warmup} steps, stable {self.stable} steps, decay {self.decay} steps"


def schedule_phases(cfg: ScheduleConfig, total_steps: int) -> Phases:
    """Split total_steps into phases, or raise if the schedule does not fit the run (never clamp silently)."""
    if cfg.name not in SCHEDULES:
        raise ValueError(f"schedule.name must be one of {SCHEDULES}, got {cfg.name!r}")
    if total_steps <= 0:
        raise ValueError(f"trainer.max_steps must be positive, got {total_steps}")
    if cfg.warmup_steps < 0:
        raise ValueError(f"schedule.warmup_steps must be >= 0, got {cfg.warmup_steps}")
    if not 0.0 <= cfg.min_lr_factor <= 1.0:
        raise ValueError(f"schedule.min_lr_factor must be in [0, 1], got {cfg.min_lr_factor}")
    if cfg.warmup_steps > total_steps:
        raise ValueError(
            f"schedule.warmup_steps={cfg.warmup_steps} is longer than the run (trainer.max_steps={total_steps}): "
            f"lower schedule.warmup_steps or raise trainer.max_steps"
        )
    rest = total_steps - cfg.warmup_steps
    if cfg.name == "constant":
        return Phases(cfg.warmup_steps, rest, 0)
    if cfg.name in ("cosine", "linear"):
        if rest == 0:
            raise ValueError(
                f"schedule.name={cfg.name} leaves no steps to decay after {cfg.warmup_steps} warmup steps: "
                f"lower schedule.warmup_steps or raise trainer.max_steps"
            )
        return Phases(cfg.warmup_steps, 0, rest)
    if not 0.0 < cfg.decay_ratio <= 1.0:
        raise ValueError(f"schedule.decay_ratio must be in (0, 1], got {cfg.decay_ratio}")
    decay = max(1, round(cfg.decay_ratio * total_steps))
    if decay > rest:
        raise ValueError(
            f"wsd does not fit: {cfg.warmup_steps} warmup + {decay} decay steps (schedule.decay_ratio="
            f"{cfg.decay_ratio}) exceed trainer.max_steps={total_steps}; lower one of them"
        )
    return Phases(cfg.warmup_steps, rest - decay, decay)


def lr_factor(step: int, cfg: ScheduleConfig, phases: Phases) -> float:
    """Multiplier of the peak LR for the update made at 0-based `step`. Warmup reaches 1 on its last step; the
    decay reaches min_lr_factor on the run's last step."""
    if step < phases.warmup:
        return (step + 1) / phases.warmup
    decay_start = phases.warmup + phases.stable
    if step < decay_start or phases.decay == 0:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / phases.decay)
    floor = cfg.min_lr_factor
    if cfg.name == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * (1.0 - progress)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose step() after update s sets the LR for update s + 1."""
    phases = schedule_phases(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, phases))
