"""Optimizers and LR schedules. Knows nothing of the trainer, the models or the data."""

from .build import build_optimizer, param_groups
from .config import OptimConfig, ScheduleConfig
from .schedules import Phases, build_scheduler, lr_factor, schedule_phases

__all__ = [
    "OptimConfig",
    "Phases",
    "ScheduleConfig",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "param_groups",
    "schedule_phases",
]
