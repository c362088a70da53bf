"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of an interpolation of
momentum and gradient, with decoupled weight decay. One state tensor per parameter (half of AdamW's).

    u = sign(beta1 * m + (1 - beta1) * g)
    p = p * (1 - lr * weight_decay) - lr * u
    m = beta2 * m + (1 - beta2) * g

Elementwise only, so it works unchanged on DTensor shards (FSDP2) and replicated tensors (DDP). A step with lr = 0
leaves every parameter unchanged (the decay is multiplied by lr too).
"""

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim import Optimizer

from .groups import param_groups
from .registry import OptimConfig, register, validate_betas
from .skip import keep_unless


class Lion(Optimizer):
    supports_found_inf = True  # step() honours a device-side skip flag (see optim/skip.py)

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if lr < 0:
            raise ValueError(f"Lion lr must be >= 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion betas must be in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        skip = getattr(self, "found_inf", None)  # a device flag from the trainer: 1 leaves everything unchanged
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                update = m.lerp(p.grad, 1 - beta1).sign_()
                if skip is None:
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-lr)
                    m.lerp_(p.grad, 1 - beta2)
                else:
                    keep_unless(skip, p, p * (1 - lr * wd) - lr * update)
                    keep_unless(skip, m, m.lerp(p.grad, 1 - beta2))
        return loss


@register("lion")
@dataclass
class LionConfig(OptimConfig):
    """LR about 3x below AdamW's and weight decay 3x above it, so that lr x weight_decay (the per-step shrink)
    stays the same. No epsilon and no fused kernel."""

    name: str = "lion"
    lr: float = 1e-4
    weight_decay: float = 0.3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    """(interpolation beta1, momentum beta2)."""

    def validate(self) -> None:
        super().validate()
        validate_betas(self.betas)

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        return Lion(param_groups(model, self.weight_decay), lr=self.lr, betas=tuple(self.betas))
