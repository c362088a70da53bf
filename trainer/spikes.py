"""Loss-spike skipping and NaN guards.

Manual: `trainer.skip_steps` lists inclusive step ranges whose updates never happen (their data is drawn and
discarded, so the data order afterwards is unchanged).

Automatic: the update is skipped when the global loss or the grad norm is not finite, or exceeds mean + k * std of a
rolling window of recent accepted steps. The decision is computed on the device from values every rank shares, so it
is the same everywhere, and it reaches the optimizer as its `found_inf` tensor: fused AdamW (and the optimizers that
declare `supports_found_inf`) then leave parameters and state untouched without the host ever reading the flag.
"""

from dataclasses import dataclass, field

import torch


@dataclass
class SpikeConfig:
    enabled: bool = True
    """Skip updates automatically on NaN/inf or a loss/grad-norm spike."""
    window: int = 128
    """Accepted steps in the rolling window of loss and grad-norm statistics."""
    threshold: float = 6.0
    """k: a value above mean + k * std of the window is a spike."""
    warmup: int = 32
    """Accepted steps the window needs before spikes (not NaN/inf) are judged."""


def in_ranges(step: int, ranges: list[list[int]]) -> bool:
    return any(lo <= step <= hi for lo, hi in ranges)


def validate_spikes(cfg: SpikeConfig, max_consecutive: int) -> None:
    if cfg.window < 2 or cfg.threshold <= 0 or not 0 <= cfg.warmup <= cfg.window or max_consecutive < 0:
        raise ValueError(
            f"trainer.spikes needs window >= 2, threshold > 0 and 0 <= warmup <= window (a warmup above the window "
            f"would never end), and trainer.max_consecutive_skips >= 0; got window={cfg.window}, threshold="
            f"{cfg.threshold}, warmup={cfg.warmup}, max_consecutive_skips={max_consecutive}"
        )


def validate_skip_ranges(ranges: list[list[int]]) -> None:
    for r in ranges:
        if len(r) != 2 or r[0] > r[1] or r[0] < 1:
            raise ValueError(
                f"trainer.skip_steps entries are inclusive [first, last] step ranges with 1 <= first <= last, got {r}"
            )


@dataclass
class SpikeDetector:
    """Device-side rolling statistics and the skip decision; nothing here reads a value back to the host."""

    cfg: SpikeConfig
    device: torch.device
    history: torch.Tensor = field(init=False)  # [2, window]: loss, grad norm of accepted steps
    count: torch.Tensor = field(init=False)  # accepted steps seen (saturates at window)
    head: torch.Tensor = field(init=False)  # next slot to write
    skipped: torch.Tensor = field(init=False)  # skips since the last read
    consecutive: torch.Tensor = field(init=False)  # current run of skipped steps
    worst: torch.Tensor = field(init=False)  # [step, loss, grad norm] where the consecutive limit was first passed

    def __post_init__(self) -> None:
        d = self.device
        self.history = torch.zeros(2, self.cfg.window, device=d)
        self.count = torch.zeros((), dtype=torch.long, device=d)
        self.head = torch.zeros((), dtype=torch.long, device=d)
        self.skipped = torch.zeros((), dtype=torch.long, device=d)
        self.consecutive = torch.zeros((), dtype=torch.long, device=d)
        self.worst = torch.full((3,), -1.0, device=d)

    def decide(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """A 0-d float tensor, 1.0 to skip this update. Accepted values enter the window."""
        values = torch.stack([loss.float(), grad_norm.float()])
        skip = ~torch.isfinite(values).all()
        if self.cfg.enabled:
            n = self.count.clamp(min=1)
            valid = (torch.arange(self.cfg.window, device=self.device) < self.count).float()
            mean = (self.history * valid).sum(1) / n
            var = (((self.history - mean[:, None]) * valid) ** 2).sum(1) / n
            spike = (values > mean + self.cfg.threshold * var.sqrt()).any() & (self.count >= self.cfg.warmup)
            skip = skip | spike
        keep = ~skip
        # A one-hot mask, not history[:, head]: indexing with a device scalar would read it back to the host.
        hot = (torch.arange(self.cfg.window, device=self.device) == self.head) & keep
        self.history = torch.where(hot, values[:, None], self.history)
        self.head = (self.head + keep.long()) % self.cfg.window
        self.count = torch.clamp(self.count + keep.long(), max=self.cfg.window)
        self.skipped += skip.long()
        self.consecutive = (self.consecutive + 1) * skip.long()
        return skip.float()

    def note_limit(self, step: int, limit: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Remember (on the device) the first step where the consecutive skips passed the limit."""
        first = (self.consecutive > limit) & (self.worst[0] < 0)
        here = torch.stack([torch.full((), float(step), device=self.device), loss.float(), grad_norm.float()])
        self.worst = torch.where(first, here, self.worst)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The window and counters, so a resumed run judges spikes exactly as an uninterrupted one would."""
        return {k: getattr(self, k).cpu() for k in ("history", "count", "head", "skipped", "consecutive", "worst")}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            setattr(self, k, v.to(self.device))

    def read(self) -> tuple[int, list[float] | None]:
        """(skips since the last read, [step, loss, grad norm] if the consecutive limit was passed). Syncs: call on
        log steps only."""
        skipped = int(self.skipped.item())
        self.skipped.zero_()
        worst = self.worst.tolist()
        return skipped, (worst if worst[0] >= 0 else None)


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether optimizer.step() honours a `found_inf` tensor (skip without a host sync)."""
    if getattr(optimizer, "supports_found_inf", False):
        return True
    fused = all(g.get("fused") for g in optimizer.param_groups)
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and fused


def supports_grad_scale(optimizer: torch.optim.Optimizer) -> bool:
    """Whether optimizer.step() divides the gradients by a `grad_scale` tensor as it reads them (torch's fused
    Adam/AdamW): the gradient clip can then ride on the update (parallel.clip_grad_norm)."""
    fused = all(g.get("fused") for g in optimizer.param_groups)
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and fused


def guarded_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor, grad_scale: torch.Tensor | None = None) -> None:
    """optimizer.step() unless skip is 1, dividing the gradients by grad_scale (only where supports_grad_scale).
    Optimizers without found_inf support cost one host read here."""
    if grad_scale is not None and not supports_grad_scale(optimizer):
        raise ValueError(f"{type(optimizer).__name__} does not take a grad_scale: clip the gradients before step")
    if supports_found_inf(optimizer):
        optimizer.found_inf, optimizer.grad_scale = skip, grad_scale
        try:
            optimizer.step()
        finally:
            optimizer.found_inf = optimizer.grad_scale = None
    elif not skip.item():
        optimizer.step()
