"""Optimizers and LR schedules. Knows nothing of the trainer, the models or the data.

One file per optimizer (adamw.py, muon.py, lion.py): its config class, registered by name (registry.py), and its
builder; groups.py decides which parameters decay and which Muon owns; schedules.py holds the LR schedules.
"""

from .adamw import AdamWConfig
from .groups import muon_params, param_groups
from .lion import Lion, LionConfig
from .muon import Muon, MuonConfig, zeropower_newton_schulz
from .registry import OPTIMIZERS, OptimConfig, build_optimizer, config_class, register
from .schedules import Phases, ScheduleConfig, build_scheduler, lr_factor, schedule_phases

__all__ = [
    "OPTIMIZERS",
    "AdamWConfig",
    "Lion",
    "LionConfig",
    "Muon",
    "MuonConfig",
    "OptimConfig",
    "Phases",
    "ScheduleConfig",
    "build_optimizer",
    "build_scheduler",
    "config_class",
    "lr_factor",
    "muon_params",
    "param_groups",
    "register",
    "schedule_phases",
    "zeropower_newton_schulz",
]
