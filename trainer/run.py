"""The Run: everything the training step, the evaluation and the checkpoints work with, built once from the
config (build.py builds it)."""

from dataclasses import dataclass, field
from pathlib import Path

import torch

import data

from . import distributed
from .checkpointing import Checkpointer
from .config import TrainConfig
from .spikes import SpikeDetector


@dataclass
class Run:
    """Everything fit() works with, built once from the config."""

    cfg: TrainConfig
    run_dir: Path
    ranks: distributed.Ranks
    device: torch.device
    amp_dtype: torch.dtype | None
    model: torch.nn.Module  # what to call: the parallel wrapper where there is one
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    accum: int
    flops_per_token: float
    spikes: SpikeDetector
    train_stream: data.Prefetcher | None = None  # None in a benchmark, which feeds its own batches
    val_batches: list[torch.Tensor] = field(default_factory=list)
    checkpointer: Checkpointer | None = None
    start_step: int = 0
    source: Path | None = None  # the checkpoint the weights came from, if any
    restored_all: bool = False  # whether optimizer, schedule, data position and step came with them
    tokens_seen: int = 0  # training tokens drawn so far, over every start (true across global_batch changes)
    eval_pending: bool = False  # the checkpoint's own evaluation was cut short: do it first
