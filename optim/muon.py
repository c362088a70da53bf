"""Muon for the hidden 2-D matrices, AdamW for everything else, as ONE torch.optim.Optimizer.

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/) keeps a momentum buffer per matrix and
replaces the update by its orthogonalisation: five steps of a quintic Newton–Schulz iteration map the (Nesterov)
momentum M = U S V^T to roughly U S' V^T with S' in about [0.7, 1.2] (not exactly U V^T: the coefficients trade
accuracy for speed, which does not hurt training). Embeddings, the output head, norms and biases are not "hidden
matrices" and get AdamW with its own LR (`lr`), while the matrices use `muon_lr`.

Each param group carries `use_muon`; groups keep the standard `param_groups` / `state` layout so that
`torch.distributed.checkpoint.state_dict.get_state_dict` / `set_state_dict` save and restore it like AdamW:
state of a Muon matrix is {"momentum_buffer"}, of an AdamW tensor {"step", "exp_avg", "exp_avg_sq"}.

Why not `torch.optim.Muon` as is: it rejects every non-2-D parameter (so it cannot be the single optimizer the
trainer and DCP expect), always runs Newton–Schulz in bf16 (no fp32 path for exact CPU tests), and knows nothing
of DTensor shards. We reuse its coefficients and its LR-adjustment rule (checked equal in the tests), and the
AdamW part calls torch's own functional AdamW (foreach / fused kernels included).

FSDP2 (and HSDP): a hidden matrix is a DTensor sharded on dim 0, and so are its gradient and momentum. The
momentum update stays local; the Nesterov update is all-gathered (`full_tensor()`), orthogonalised on every rank
(replicated), and each rank keeps its own rows (`distribute_tensor(..., src_data_rank=None)`: no communication).
Cost per step: one all-gather of every hidden matrix's update in fp32 (about the bytes of one fp32 copy of the
hidden weights: comparable to FSDP's own parameter all-gathers, which move bf16) plus the Newton–Schulz FLOPs
(~ ns_steps * (4 m^2 n + 2 m^3) per m x n matrix, m <= n) on every rank instead of once: they do not shrink as
ranks are added. DDP: parameters are whole on every rank; each rank orthogonalises the same all-reduced gradient's
momentum (replicated FLOPs, no extra communication). A step with lr = 0 leaves every parameter unchanged.
"""

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.adamw import adamw as _functional_adamw

from .adamw import AdamWConfig
from .groups import muon_params, param_groups
from .registry import register
from .skip import keep_unless

try:  # torch >= 2.9 ships Muon; reuse its constants where it exists
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C
    from torch.optim._muon import EPS as NS_EPS
except ImportError:  # pragma: no cover - older torch
    DEFAULT_A, DEFAULT_B, DEFAULT_C, NS_EPS = 3.4445, -4.7750, 2.0315, 1e-7

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover
    DTensor, distribute_tensor = (), None

NS_COEFFICIENTS = (DEFAULT_A, DEFAULT_B, DEFAULT_C)
NS_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
ADJUST_LR = ("original", "match_rms_adamw", "none")


def zeropower_newton_schulz(
    g: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = NS_EPS,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Approximate U V^T of g = U S V^T (the orthogonal polar factor) by `steps` quintic Newton–Schulz steps,
    computed in `dtype`; returns that dtype. Works on the smaller Gram matrix (transposes tall matrices)."""
    if g.ndim != 2:
        raise ValueError(f"Newton–Schulz needs a 2-D matrix, got shape {tuple(g.shape)}")
    a, b, c = coefficients
    x = g.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # Frobenius norm >= spectral norm: singular values in [0, 1]
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b G + c G^2) X
    return x.T if tall else x


def adjusted_lr(lr: float, shape: torch.Size, rule: str) -> float:
    """Scale of the orthogonalised update for an (A, B) matrix: "original" (Keller Jordan's sqrt(max(1, A/B))),
    "match_rms_adamw" (Moonshot's 0.2 sqrt(max(A, B)): the update's RMS matches AdamW's, so AdamW's LR and weight
    decay carry over) or "none". The same rules as torch.optim.Muon's adjust_lr_fn."""
    rows, cols = shape[0], shape[1]
    if rule == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    if rule == "none":
        return lr
    raise ValueError(f"optim.muon_adjust_lr must be one of {ADJUST_LR}, got {rule!r}")


def _orthogonalise(update: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """Newton–Schulz of a plain tensor, or of the full matrix behind a DTensor shard (gather, compute, keep ours)."""
    if isinstance(update, DTensor):
        full = update.full_tensor()  # all-gather over the shard dims of the mesh
        ortho = zeropower_newton_schulz(full, steps, dtype=dtype).to(update.dtype)
        # Every rank holds the same result: take the local piece without communication.
        return distribute_tensor(ortho, update.device_mesh, update.placements, src_data_rank=None)
    return zeropower_newton_schulz(update, steps, dtype=dtype).to(update.dtype)


class Muon(Optimizer):
    """Groups with use_muon=True hold 2-D matrices (keys lr, weight_decay, momentum, nesterov, ns_steps,
    adjust_lr, ns_dtype); the others are AdamW groups (lr, betas, eps, weight_decay, fused)."""

    def __init__(self, param_groups: list[dict], **defaults):
        base = {
            "lr": 0.02,
            "weight_decay": 0.0,
            "use_muon": False,
            "momentum": 0.95,
            "nesterov": True,
            "ns_steps": 5,
            "adjust_lr": "original",
            "ns_dtype": "bf16",
            "betas": (0.9, 0.95),
            "eps": 1e-8,
            "fused": None,
        }
        base.update(defaults)
        super().__init__(param_groups, base)
        for group in self.param_groups:
            if group["use_muon"]:
                for p in group["params"]:
                    if p.ndim != 2:
                        raise ValueError(f"Muon groups take 2-D matrices only, got a tensor of shape {tuple(p.shape)}")
                if group["ns_dtype"] not in NS_DTYPES:
                    raise ValueError(
                        f"optim.muon_ns_dtype must be one of {tuple(NS_DTYPES)}, got {group['ns_dtype']!r}"
                    )
                adjusted_lr(1.0, torch.Size([1, 1]), group["adjust_lr"])  # validates the rule

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        skip = getattr(self, "found_inf", None)  # a device flag from the trainer: 1 leaves everything unchanged
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group, skip)
            else:
                self._adamw_step(group, skip)
        return loss

    @property
    def supports_found_inf(self) -> bool:
        """The AdamW groups pass the flag to the fused kernel, so every one of them must be fused."""
        return all(g["use_muon"] or g["fused"] for g in self.param_groups)

    def _muon_step(self, group: dict, skip: torch.Tensor | None = None) -> None:
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        dtype = NS_DTYPES[group["ns_dtype"]]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            new_buf = buf.lerp(p.grad, 1 - mu)  # an EMA of gradients (torch.optim.Muon's convention)
            update = p.grad.lerp(new_buf, mu) if group["nesterov"] else new_buf
            update = _orthogonalise(update, group["ns_steps"], dtype)
            new_p = p * (1 - lr * wd) - adjusted_lr(lr, p.shape, group["adjust_lr"]) * update
            keep_unless(skip, buf, new_buf)
            keep_unless(skip, p, new_p)

    def _adamw_step(self, group: dict, skip: torch.Tensor | None = None) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        fused = bool(group["fused"])
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "step" not in state:
                # As torch.optim.AdamW: the step count lives on the device for the fused kernel, else on the CPU.
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if fused else "cpu")
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        _functional_adamw(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            fused=fused or None,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
            found_inf=skip if fused else None,  # the fused kernel skips params and state on the flag
        )


ADJUST_LR = ("original", "match_rms_adamw", "none")


@register("muon")
@dataclass
class MuonConfig(AdamWConfig):
    """Muon for the hidden matrices; AdamW (lr, betas, eps, weight_decay, fused) for embeddings, the output head,
    norms and biases."""

    name: str = "muon"
    lr: float = 3e-4  # the AdamW part's
    muon_lr: float = 0.02
    """Peak LR of the hidden matrices (scaled per matrix by muon_adjust_lr; the schedule multiplies it)."""
    muon_momentum: float = 0.95
    """Momentum of the gradient EMA that is orthogonalised."""
    muon_nesterov: bool = True
    """Orthogonalise the Nesterov look-ahead (g lerp'ed towards the momentum) instead of the momentum."""
    muon_ns_steps: int = 5
    """Newton–Schulz steps (5 gives singular values in about [0.7, 1.2]; more cost more FLOPs)."""
    muon_ns_dtype: str = "auto"
    """Dtype of the Newton–Schulz iteration: "bf16", "fp32", or "auto" (bf16 on accelerators, fp32 on CPU)."""
    muon_weight_decay: float = 0.0
    """Decoupled weight decay of the hidden matrices, multiplied by muon_lr (0.02 x 0.1 would shrink them 0.2% per
    step, far more than AdamW's lr x weight_decay). weight_decay applies to the AdamW part's matrices only."""
    muon_adjust_lr: str = "original"
    """Per-matrix LR scale for an (A, B) matrix: "original" sqrt(max(1, A/B)), "match_rms_adamw" 0.2 sqrt(max(A, B))
    (then muon_lr and muon_weight_decay can be AdamW's values), or "none"."""
    muon_exclude: list[str] = field(default_factory=lambda: ["output"])
    """Names of nn.Linear modules (a dotted name or any suffix of one, e.g. "output", "lm_head") whose weights go to
    AdamW instead; embedding tables, tied heads, norms and biases always do. A name matching nothing is an error."""

    def validate(self) -> None:
        super().validate()
        if self.muon_lr <= 0:
            raise ValueError(f"optim.muon_lr must be positive, got {self.muon_lr}")
        if self.muon_ns_steps < 1:
            raise ValueError(f"optim.muon_ns_steps must be >= 1, got {self.muon_ns_steps}")
        if self.muon_ns_dtype not in ("auto", *NS_DTYPES):
            raise ValueError(f"optim.muon_ns_dtype must be auto, bf16 or fp32, got {self.muon_ns_dtype!r}")
        if self.muon_adjust_lr not in ADJUST_LR:
            raise ValueError(f"optim.muon_adjust_lr must be one of {ADJUST_LR}, got {self.muon_adjust_lr!r}")
        if not 0.0 <= self.muon_momentum < 1.0 or self.muon_weight_decay < 0:
            raise ValueError(
                f"optim.muon_momentum must be in [0, 1) and optim.muon_weight_decay >= 0, got {self.muon_momentum} "
                f"and {self.muon_weight_decay}"
            )

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        ns_dtype = self.muon_ns_dtype
        if ns_dtype == "auto":
            ns_dtype = "fp32" if next(model.parameters()).device.type == "cpu" else "bf16"
        matrices = muon_params(model, list(self.muon_exclude))
        # The Muon group comes first, so the trainer's logged lr (the first group's) is muon_lr's schedule.
        muon_group = {
            "params": matrices,
            "use_muon": True,
            "lr": self.muon_lr,
            "weight_decay": self.muon_weight_decay,
            "momentum": self.muon_momentum,
            "nesterov": self.muon_nesterov,
            "ns_steps": self.muon_ns_steps,
            "ns_dtype": ns_dtype,
            "adjust_lr": self.muon_adjust_lr,
        }
        rest = param_groups(model, self.weight_decay, exclude={id(p) for p in matrices})
        groups = ([muon_group] if matrices else []) + rest
        return Muon(groups, lr=self.lr, betas=tuple(self.betas), eps=self.eps, fused=self.use_fused(model))
