"""Optimizer construction with parameter groups: one builder per optim.name in a table."""

from collections.abc import Callable

import torch
from torch import nn

from .config import OptimConfig
from .lion import Lion
from .muon import Muon


def param_groups(model: nn.Module, weight_decay: float, exclude: set[int] = frozenset()) -> list[dict]:
    """Matrices decay; norms, biases (ndim < 2) and embedding tables do not. A tied table counts once. Parameters
    whose id is in `exclude` are left out (another optimizer part owns them)."""
    no_decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() already skips shared (tied) tensors
        if not p.requires_grad or id(p) in exclude:
            continue
        (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _name_matches(name: str, entry: str) -> bool:
    """`entry` is the module's dotted name or a suffix of it made of whole components ("output" matches
    "module.output" under DDP)."""
    return name == entry or name.endswith("." + entry)


def muon_params(model: nn.Module, exclude: list[str]) -> list[nn.Parameter]:
    """The hidden 2-D matrices Muon owns: weights of nn.Linear modules, unless the module's name matches an entry
    of `exclude` or the weight is an embedding table (a tied head). Decided by module type, not by model class."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    used, found, seen = set(), [], set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        hits = [e for e in exclude if _name_matches(name, e)]
        used.update(hits)
        w = module.weight
        if hits or not w.requires_grad or w.ndim != 2 or id(w) in embedding_ids or id(w) in seen:
            continue
        seen.add(id(w))
        found.append(w)
    unknown = [e for e in exclude if e not in used]
    if unknown:
        raise ValueError(
            f"optim.muon_exclude names no nn.Linear module of the model: {unknown} (give module names such as "
            f"'output', as in model.named_modules())"
        )
    return found


def _fused_supported(model: nn.Module) -> bool:
    # The fused kernel also honours a `found_inf` flag, which lets the trainer skip a spike without a host sync.
    p = next(model.parameters())
    return p.device.type in ("cuda", "xpu", "cpu")


def _fused(cfg: OptimConfig, model: nn.Module) -> bool:
    return _fused_supported(model) if cfg.fused is None else bool(cfg.fused)


def _adamw(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=_fused(cfg, model) or None,
    )


def _muon(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.muon_lr <= 0:
        raise ValueError(f"optim.muon_lr must be positive, got {cfg.muon_lr}")
    if cfg.muon_ns_steps < 1:
        raise ValueError(f"optim.muon_ns_steps must be >= 1, got {cfg.muon_ns_steps}")
    ns_dtype = cfg.muon_ns_dtype
    if ns_dtype == "auto":
        ns_dtype = "fp32" if next(model.parameters()).device.type == "cpu" else "bf16"
    matrices = muon_params(model, list(cfg.muon_exclude))
    # The Muon group comes first, so the trainer's logged lr (the first group's) is muon_lr's schedule.
    muon_group = {
        "params": matrices,
        "use_muon": True,
        "lr": cfg.muon_lr,
        "weight_decay": cfg.muon_weight_decay,
        "momentum": cfg.muon_momentum,
        "nesterov": cfg.muon_nesterov,
        "ns_steps": cfg.muon_ns_steps,
        "ns_dtype": ns_dtype,
        "adjust_lr": cfg.muon_adjust_lr,
    }
    rest = param_groups(model, cfg.weight_decay, exclude={id(p) for p in matrices})
    groups = ([muon_group] if matrices else []) + rest
    return Muon(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=_fused(cfg, model))


def _lion(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    return Lion(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))


BUILDERS: dict[str, Callable[[OptimConfig, nn.Module], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "muon": _muon,
    "lion": _lion,
}
OPTIMIZERS = tuple(BUILDERS)


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer named by cfg.name over the (possibly DDP-wrapped or FSDP-sharded) model."""
    if cfg.name not in BUILDERS:
        raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {cfg.name!r}")
    if cfg.lr <= 0:
        raise ValueError(f"optim.lr must be positive, got {cfg.lr}")
    if len(cfg.betas) != 2:
        raise ValueError(f"optim.betas must hold two values, got {list(cfg.betas)}")
    return BUILDERS[cfg.name](cfg, model)
