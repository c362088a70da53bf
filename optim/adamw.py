"""AdamW (torch's, fused where the device has the kernel), with no decay on norms, biases and embeddings."""

from dataclasses import dataclass, field

import torch
from torch import nn

from .groups import param_groups
from .registry import OptimConfig, register, validate_betas


def fused_supported(model: nn.Module) -> bool:
    # The fused kernel also honours a `found_inf` flag, which lets the trainer skip a spike without a host sync.
    return next(model.parameters()).device.type in ("cuda", "xpu", "cpu")


@register("adamw")
@dataclass
class AdamWConfig(OptimConfig):
    name: str = "adamw"
    lr: float = 1e-3  # suits the small presets; large runs set their own (2b_scaling: 1.3e-3, from the LR finder)
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """Adam's (beta1, beta2)."""
    eps: float = 1e-8
    """Adam's epsilon."""
    fused: bool | None = None
    """Fused kernel: None uses it where the device supports it (CUDA, XPU, CPU), false never. Fused AdamW skips a
    spike without a host sync."""

    def validate(self) -> None:
        super().validate()
        validate_betas(self.betas)
        if self.eps <= 0:
            raise ValueError(f"optim.eps must be positive, got {self.eps}")

    def use_fused(self, model: nn.Module) -> bool:
        return fused_supported(model) if self.fused is None else bool(self.fused)

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            param_groups(model, self.weight_decay),
            lr=self.lr,
            betas=tuple(self.betas),
            eps=self.eps,
            fused=self.use_fused(model) or None,
        )
