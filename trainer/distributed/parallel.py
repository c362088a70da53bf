"""Turn a model into its parallel form, as ordered in-place steps: activation checkpointing, compile per block,
then DDP or FSDP2 / HSDP on a device mesh."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

PLANS = ("single", "ddp", "fsdp", "hsdp")

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class ParallelConfig:
    plan: str = "single"
    """"single" (one process), "ddp" (replicated model, gradients all-reduced), "fsdp" (FSDP2 fully_shard per block
    and at the root) or "hsdp" (fully_shard on a replicate x shard device mesh)."""
    backend: str = "auto"
    """Collective backend: "auto" (nccl on CUDA and ROCm, xccl on XPU, gloo on CPU) or a name torch knows."""
    dp_replicate: int = 1
    """hsdp only: number of replicas; each shards the model over world_size / dp_replicate ranks."""
    reshard_after_forward: bool = True
    """fsdp/hsdp: free gathered parameters after forward (less memory, one more all-gather in backward)."""
    mp_param_dtype: str | None = None
    """fsdp/hsdp: dtype parameters are gathered and computed in ("bf16" or "fp32"). None follows trainer.precision
    (bf16 on accelerators). Master weights and optimizer state stay fp32 either way."""
    mp_reduce_dtype: str = "fp32"
    """fsdp/hsdp: dtype of the gradient reduce-scatter."""
    activation_checkpoint: str = "none"
    """"none", or "full": recompute whole blocks in backward (every `ac_every`-th block)."""
    ac_every: int = 1
    """With activation_checkpoint=full: checkpoint blocks 0, k, 2k, ... (1 checkpoints all)."""
    timeout_s: float = 600.0
    """Seconds a collective may wait for the other ranks once the first step is done: a stopped or hung rank
    fails the job after this long. Raise it if a step, an evaluation or a checkpoint save can keep one rank this
    far behind the others."""
    startup_timeout_s: float = 1800.0
    """Seconds a collective may wait until the first step is done: the process group's start, loading a
    checkpoint, compiling and the first step itself."""


def validate_parallel(p: ParallelConfig, world_size: int) -> None:
    """The plan fits the job's ranks and its fields are in range; raises ValueError naming the field and the fix."""
    if p.plan not in PLANS:
        raise ValueError(f"parallel.plan must be one of {PLANS}, got {p.plan!r}")
    if p.plan == "single" and world_size > 1:
        raise ValueError(f"parallel.plan=single cannot run on {world_size} ranks: choose parallel=ddp, fsdp or hsdp")
    if p.plan == "hsdp" and (p.dp_replicate < 1 or world_size % p.dp_replicate):
        raise ValueError(
            f"parallel.dp_replicate={p.dp_replicate} must divide the {world_size} ranks for hsdp (replicate x shard)"
        )
    if p.activation_checkpoint not in ("none", "full") or p.ac_every < 1:
        raise ValueError(
            f"parallel.activation_checkpoint must be none or full and parallel.ac_every >= 1, got "
            f"{p.activation_checkpoint!r}, {p.ac_every}"
        )
    if p.timeout_s <= 0 or p.startup_timeout_s <= 0:
        raise ValueError(
            f"parallel.timeout_s and parallel.startup_timeout_s must be > 0 seconds, got {p.timeout_s:g} and "
            f"{p.startup_timeout_s:g}"
        )
    for name in ("mp_param_dtype", "mp_reduce_dtype"):
        if getattr(p, name) not in (None, "bf16", "fp32"):
            raise ValueError(f"parallel.{name} must be bf16 or fp32, got {getattr(p, name)!r}")


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


def clip_grad_norm(
    model: nn.Module, max_norm: float, in_optimizer: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(global gradient norm over all shards, grad_scale). The gradients are clipped to max_norm unless it is 0.
    With in_optimizer (a fused Adam/AdamW, which divides each gradient by its `grad_scale` as it reads it) and plain
    tensor parameters, the clip is left to the optimizer: grad_scale = 1 / clip coefficient, to be handed to its
    step, which saves a read and a write of every gradient. Otherwise the gradients are scaled here and grad_scale
    is None."""
    if in_optimizer and max_norm > 0:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not any(isinstance(g, DTensor) for g in grads):  # sharded gradients: the norm needs their reduction
            norm = torch.nn.utils.get_total_norm(grads)
            return norm, ((norm + 1e-6) / max_norm).clamp(min=1.0)  # clip_grad_norm_'s coefficient, inverted
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))
    return (norm.full_tensor() if isinstance(norm, DTensor) else norm), None
