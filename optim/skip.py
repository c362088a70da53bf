"""Skipping an update on a device-side flag (the `found_inf` protocol of torch's fused optimizers).

The trainer sets `optimizer.found_inf` to a 0-d tensor (1: skip this step) before `step()`. Reading it on the host
would stall an accelerator, so the optimizers below compute the update and keep the old values where the flag is
set, with `torch.where` on the local shards (DTensor shards under FSDP hold their own rows).
"""

import torch
from torch.distributed.tensor import DTensor


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def keep_unless(skip: torch.Tensor | None, target: torch.Tensor, new: torch.Tensor) -> None:
    """target = new, except where skip is set (then target stays bit-identical, even if new holds NaN)."""
    if skip is None:
        local(target).copy_(local(new))
    else:
        local(target).copy_(torch.where(skip.to(torch.bool), local(target), local(new)))
