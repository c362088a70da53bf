"""Optimizers and LR schedules. Knows nothing of the trainer, the models or the data."""

from .build import OPTIMIZERS, build_optimizer, muon_params, param_groups
from .config import OptimConfig, ScheduleConfig
from .lion import Lion
from .muon import Muon, zeropower_newton_schulz
from .schedules import Phases, build_scheduler, lr_factor, schedule_phases

__all__ = [
    "OPTIMIZERS",
    "Lion",
    "Muon",
    "OptimConfig",
    "Phases",
    "ScheduleConfig",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "muon_params",
    "param_groups",
    "schedule_phases",
    "zeropower_newton_schulz",
]
