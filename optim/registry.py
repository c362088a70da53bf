"""The optimizer configs, one dataclass per optimizer, registered by name.

Each optimizer's file holds its config class, decorated with `@register("name")`: the class documents and checks
its own fields (`validate()`, before any model exists) and builds its optimizer (`build(model)`). Hydra stores each
registered class as the schema of its `configs/optim/NAME.yaml`, so `optim=muon` accepts Muon's fields and rejects
Lion's. A new optimizer is one file here (config + builder, plus the algorithm when torch has none), its import in
`optim/__init__.py`, and a two-line YAML file.
"""

from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn


@dataclass
class OptimConfig:
    """What every optimizer config has, and all the trainer reads of one."""

    name: str = MISSING
    """The optimizer, chosen by the group (optim=adamw); set by each class, never by hand."""
    lr: float = MISSING
    """Peak learning rate (the schedule multiplies it). Each optimizer's class sets its default."""
    weight_decay: float = MISSING
    """Decoupled weight decay (multiplied by the LR) for matrices; norms, biases and embeddings never decay. Each
    optimizer's class sets its default."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""

    def validate(self) -> None:
        """Field rules; raises ValueError naming `optim.<field>` and the fix. Subclasses extend it."""
        registered = next((n for n, c in OPTIMIZERS.items() if c is type(self)), None)
        if self.name != registered:
            raise ValueError(
                f"optim.name={self.name!r} does not match the optimizer config {type(self).__name__}: choose the "
                f"optimizer with the group (optim={self.name}), not with optim.name"
            )
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError


OPTIMIZERS: dict[str, type[OptimConfig]] = {}


def register(name: str):
    """Class decorator: make the config class the one behind `optim=name`."""

    def add(cls: type[OptimConfig]) -> type[OptimConfig]:
        if name in OPTIMIZERS:
            raise ValueError(f"optimizer {name!r} is registered twice ({OPTIMIZERS[name].__name__}, {cls.__name__})")
        OPTIMIZERS[name] = cls
        return cls

    return add


def config_class(name: str) -> type[OptimConfig]:
    """The config class of an optimizer name (as recorded in a run's config.yaml)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {tuple(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name]


def validate_betas(betas: list[float]) -> None:
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"optim.betas must be two values in [0, 1), got {list(betas)}")


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Check cfg, then build its optimizer over the (possibly DDP-wrapped or FSDP-sharded) model."""
    cfg.validate()
    return cfg.build(model)
