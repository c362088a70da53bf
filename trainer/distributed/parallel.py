"""Turn a model into its parallel form, as ordered in-place steps: activation checkpointing, compile per block,
then DDP or FSDP2 / HSDP on a device mesh."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from .config import ParallelConfig

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def apply_activation_checkpointing(model: nn.Module, every: int) -> None:
    """Recompute every `every`-th block in backward. The wrapper keeps state-dict keys unchanged."""
    for i, block in enumerate(model.layers):
        if i % every == 0:
            model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """Compile each block on its own, so compile time stays short and does not grow with depth, and the loss's
    per-chunk softmax."""
    for block in model.layers:
        block.compile()
    model.compile_loss()


def apply_fsdp(
    model: nn.Module, cfg: ParallelConfig, device: torch.device, world_size: int, param_dtype: torch.dtype | None
) -> None:
    shape = (cfg.dp_replicate, world_size // cfg.dp_replicate) if cfg.plan == "hsdp" else (world_size,)
    names = ("replicate", "shard") if cfg.plan == "hsdp" else ("shard",)
    mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=DTYPES[cfg.mp_reduce_dtype])
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward)
    # The root holds embedding, final norm and head; they are used last, so never reshard them after forward.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)


def parallelize(
    model: nn.Module,
    cfg: ParallelConfig,
    device: torch.device,
    world_size: int,
    compile: bool,
    param_dtype: torch.dtype | None,
) -> nn.Module:
    """Apply the plan and return the module to call (DDP wraps; the others change the model in place)."""
    if cfg.activation_checkpoint == "full":
        apply_activation_checkpointing(model, cfg.ac_every)
    if compile:
        apply_compile(model)
    if cfg.plan == "ddp":
        return DistributedDataParallel(model, device_ids=[device.index] if device.type != "cpu" else None)
    if cfg.plan in ("fsdp", "hsdp"):
        apply_fsdp(model, cfg, device, world_size, param_dtype)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients only on the last micro-step of an accumulation: DDP's no_sync, FSDP2's requires-sync flag."""
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Global gradient norm (over all shards), clipped to max_norm unless it is 0."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
