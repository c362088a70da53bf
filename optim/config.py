"""Optimizer and LR-schedule configuration: every field documented once."""

from dataclasses import dataclass, field


@dataclass
class OptimConfig:
    name: str = "adamw"
    """Optimizer: "adamw"."""
    lr: float = 3e-4
    """Peak learning rate (the schedule multiplies it)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """Adam's (beta1, beta2)."""
    eps: float = 1e-8
    """Adam's epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay for matrices; norms, biases and embeddings never decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""
    fused: bool | None = None
    """Fused kernel: None uses it where the parameters' device supports it (CUDA, XPU), false never."""


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    """LR schedule after linear warmup: "cosine", "linear" (decay to the floor over the rest of the run),
    "wsd" (warmup, stable, then linear decay over the final `decay_ratio` of the steps) or "constant"."""
    warmup_steps: int = 100
    """Steps of linear warmup from lr / warmup_steps to lr. Longer than the run is an error, never clamped."""
    decay_ratio: float = 0.2
    """wsd only: fraction of all steps spent in the final decay."""
    min_lr_factor: float = 0.1
    """Floor of the decay as a fraction of the peak lr."""
