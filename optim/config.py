"""Optimizer and LR-schedule configuration: every field documented once."""

from dataclasses import dataclass, field


@dataclass
class OptimConfig:
    name: str = "adamw"
    """Optimizer: "adamw", "muon" (Muon for hidden 2-D matrices, AdamW for the rest) or "lion"."""
    lr: float = 3e-4
    """Peak learning rate (the schedule multiplies it). Under muon: the LR of the AdamW part (embeddings, head,
    norms, biases); the matrices use muon_lr."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """Adam's (beta1, beta2); under muon those of the AdamW part; Lion's (interpolation beta1, momentum beta2)."""
    eps: float = 1e-8
    """Adam's epsilon (Lion has none)."""
    weight_decay: float = 0.1
    """Decoupled weight decay (multiplied by the LR) for matrices; norms, biases and embeddings never decay.
    Under muon it applies to the AdamW part's matrices only (see muon_weight_decay)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""
    fused: bool | None = None
    """Fused kernel: None uses it where the device supports it (CUDA, XPU, CPU), false never. Fused AdamW skips a
    spike without a host sync."""
    muon_lr: float = 0.02
    """muon: peak LR of the hidden matrices (scaled per matrix by muon_adjust_lr; the schedule multiplies it)."""
    muon_momentum: float = 0.95
    """muon: momentum of the gradient EMA that is orthogonalised."""
    muon_nesterov: bool = True
    """muon: orthogonalise the Nesterov look-ahead (g lerp'ed towards the momentum) instead of the momentum."""
    muon_ns_steps: int = 5
    """muon: Newton–Schulz steps (5 gives singular values in about [0.7, 1.2]; more cost more FLOPs)."""
    muon_ns_dtype: str = "auto"
    """muon: dtype of the Newton–Schulz iteration: "bf16", "fp32", or "auto" (bf16 on accelerators, fp32 on CPU)."""
    muon_weight_decay: float = 0.0
    """muon: decoupled weight decay of the hidden matrices, multiplied by muon_lr (0.02 x 0.1 would shrink them
    0.2% per step, far more than AdamW's lr x weight_decay)."""
    muon_adjust_lr: str = "original"
    """muon: per-matrix LR scale for an (A, B) matrix: "original" sqrt(max(1, A/B)), "match_rms_adamw"
    0.2 sqrt(max(A, B)) (then muon_lr and muon_weight_decay can be AdamW's values), or "none"."""
    muon_exclude: list[str] = field(default_factory=lambda: ["output"])
    """muon: names of nn.Linear modules (a dotted name or any suffix of one, e.g. "output", "lm_head") whose weights
    go to AdamW instead; embedding tables, tied heads, norms and biases always do. A name matching nothing is an
    error."""


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
