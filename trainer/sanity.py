"""Sanity gates: two cheap checks, from the field notes' failure list, that catch a broken run early.

- Step-1 loss. At init the logits of a healthy model are nearly uniform, so the first step's loss (computed before
  its update) is about ln(vocab_size): plus var(logits) / 2, 0.1 to 0.2 nats with the default init. A warning,
  with the figures, when it is outside ln V ± max(1.0, 0.25 ln V): a logit scale far from the init's (model.init_std,
  an init not applied), a loss reduced wrongly (summed instead of averaged over ranks or micro-batches: off by a
  factor >= 2, which the band always catches), or targets that leak into the inputs (far below ln V).
- Frozen parameters. After trainer.frozen_check_steps steps, a warning naming every parameter tensor still
  bit-identical to its value at step 0, and the metric `frozen_params` (their count): bf16 master weights froze every
  RMSNorm at 1.0 for 17K steps in one campaign while the loss looked normal.
"""

import logging
import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from . import distributed
from .run import Run

log = logging.getLogger(__name__)

_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-width integer view of the bits
_CHUNK = 1 << 22  # elements hashed at once: bounds the int64 temporaries (32 MiB) for a vocabulary-sized table
_WRAPPERS = ("module.", "_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


def first_loss_band(vocab_size: int, z_loss: float = 0.0) -> tuple[float, float]:
    """(expected step-1 loss, tolerance): ln V (plus the z-loss of a uniform softmax) and max(1.0, 0.25 ln V)."""
    ln_v = math.log(vocab_size)
    return ln_v + z_loss * ln_v**2, max(1.0, 0.25 * ln_v)


def first_loss_warning(loss: float, vocab_size: int, z_loss: float = 0.0) -> str | None:
    """The warning for a step-1 loss outside the band around ln(vocab_size), or None when it is inside."""
    expected, tol = first_loss_band(vocab_size, z_loss)
    if abs(loss - expected) <= tol:  # False for NaN/inf too: those warn
        return None
    return (
        f"step-1 loss {loss:.4f} is far from ln(vocab_size={vocab_size}) = {math.log(vocab_size):.4f}: a freshly "
        f"initialised model should give {expected:.2f} ± {tol:.2f}. Check the init (model.init_std), the vocabulary "
        f"(model.vocab_size against the tokenizer), the targets (inputs leaking into them) and that the loss is a "
        f"mean over ranks and micro-batches"
    )


def check_first_loss(run: Run, loss: float) -> None:
    """Warn (rank 0) when the first step's loss is far from ln V. Only for a fresh model: a resumed run or weights
    loaded from a checkpoint (checkpoint.load, an HF import) have learned, so their loss is meant to be lower."""
    if run.start_step or run.source is not None:
        return
    text = first_loss_warning(loss, run.cfg.model.vocab_size, run.cfg.model.z_loss)
    if text and run.ranks.is_main:
        log.warning(text)


def _clean(name: str) -> str:
    for prefix in _WRAPPERS:  # DDP, compile and activation-checkpoint wrappers add these
        name = name.replace(prefix, "")
    return name


@torch.no_grad()
def digest(t: torch.Tensor) -> torch.Tensor:
    """Two int64 checksums of a tensor's bits (this rank's shard of a DTensor): their sum and a position-weighted
    sum, so a change of any element, or a permutation, changes it. Equal bits give equal digests: a frozen tensor is
    never missed; a changed one is taken for frozen only if both sums collide exactly (wrapping int64)."""
    flat = (t.to_local() if isinstance(t, DTensor) else t).detach().reshape(-1)
    bits = flat.view(_INT[flat.element_size()])
    out = torch.zeros(2, dtype=torch.int64, device=flat.device)
    for i in range(0, bits.numel(), _CHUNK):
        b = bits[i : i + _CHUNK].to(torch.int64)
        weight = torch.arange(2 * i + 1, 2 * (i + b.numel()), 2, dtype=torch.int64, device=b.device)  # odd
        out[0] += b.sum()
        out[1] += (b * weight).sum()
    return out


class FrozenCheck:
    """Digests of every parameter tensor taken before the first step, compared once at trainer.frozen_check_steps.
    Costs two passes over the parameters (now and at the check) and 16 bytes per tensor on the device; nothing on
    the steps between. Under DDP/FSDP each rank digests its local shard, and a tensor is frozen when no rank's shard
    changed (a sum over ranks: the same list of names on every rank)."""

    def __init__(self, model: nn.Module, at_step: int):
        self.at_step = at_step
        params = list(model.named_parameters())
        self.names = [_clean(n) for n, _ in params]
        self.initial = torch.stack([digest(p) for _, p in params])

    @classmethod
    def start(cls, model: nn.Module, at_step: int, start_step: int, max_steps: int) -> "FrozenCheck | None":
        """The check of this run, or None: off (at_step 0), a run too short to reach it, or a resumed run (start_step
        > 0): its initial weights are gone, and a run preempted before the check is not checked after its resume."""
        if at_step <= 0 or start_step > 0 or at_step > max_steps:
            return None
        return cls(model, at_step)

    def due(self, step: int) -> bool:
        """At the check step, or at the first trained step after it (the check step may be a skipped one)."""
        return step >= self.at_step

    def check(self, model: nn.Module, step: int, is_main: bool) -> int:
        """How many parameter tensors are bit-identical to their initial values (a collective: every rank calls it);
        rank 0 warns naming them."""
        now = torch.stack([digest(p) for _, p in model.named_parameters()])
        changed = (now != self.initial).any(dim=1).to(torch.int64).tolist()
        changed = distributed.sum_ints_over_ranks(changed)
        frozen = [name for name, c in zip(self.names, changed) if c == 0]
        if frozen and is_main:
            log.warning(
                "%d of %d parameter tensors are bit-identical to their initial values after %d steps: %s. Updates "
                "smaller than the weights' precision vanish (bf16 master weights freeze norms at 1.0); check also "
                "for requires_grad=False, a parameter missing from the optimizer, or an LR of 0",
                len(frozen), len(self.names), step, ", ".join(frozen),
            )  # fmt: skip
        return len(frozen)
