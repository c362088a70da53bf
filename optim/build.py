"""Optimizer construction with parameter groups."""

import torch
from torch import nn

from .config import OptimConfig

OPTIMIZERS = ("adamw",)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices decay; norms, biases (ndim < 2) and embedding tables do not. A tied table counts once."""
    no_decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() already skips shared (tied) tensors
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _fused_supported(model: nn.Module) -> bool:
    p = next(model.parameters())
    return p.device.type in ("cuda", "xpu")


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {cfg.name!r}")
    if cfg.lr <= 0:
        raise ValueError(f"optim.lr must be positive, got {cfg.lr}")
    if len(cfg.betas) != 2:
        raise ValueError(f"optim.betas must hold two values, got {list(cfg.betas)}")
    fused = _fused_supported(model) if cfg.fused is None else cfg.fused
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=fused or None,
    )
