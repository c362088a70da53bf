"""`anytrain bench`: the throughput of one training configuration, measured on the trainer's own step.

The step is `loop.train_step` as `train` runs it (autocast, parallel plan, compile, clipping, spike guard, fused
optimizer), fed from a small pool of synthetic batches on the device or from the configured data stream. Step times
come from device events recorded after every step, with no host sync between steps, so what is measured is the
pipeline the trainer runs. The CPU data path (tokenisation + packing of the configured corpus in this process) is
timed on its own, before the model exists, and compared with what one device consumes.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer

import data
import models

from .. import distributed
from ..build import build_training, resolve_eos, resolve_vocab, shared_tokenizer
from ..config import TrainConfig, validate
from ..loop import train_step
from ..run import Run
from . import kernel_shares

DATA_MODES = ("synthetic", "real")


@dataclass
class BenchOptions:
    steps: int = 20
    """Steady-state steps measured (after the warm-up)."""
    warmup: int = 5
    """Steps run first and left out of the medians: compile, autotuning, allocator growth."""
    data: str = "synthetic"
    """synthetic: a pool of random token batches made on the device; real: the configured data stream."""
    accum: int = 1
    """Micro-batches per step (gradient accumulation); the global batch becomes micro x ranks x accum."""
    data_seconds: float = 3.0
    """How long to time the CPU data path; 0 skips it (and the tokenizer it needs)."""
    profile: int = 0
    """Steps to run under torch.profiler after the measured ones; their top operators by device time are reported."""


def _synthetic(cfg: TrainConfig, device: torch.device, rank: int, pool: int = 8) -> Iterator[torch.Tensor]:
    """A cycled pool of random batches: no host work per step, and a loss that falls as the pool is memorised."""
    g = torch.Generator(device=device).manual_seed(cfg.trainer.seed + 1000 * rank)
    shape = (cfg.trainer.micro_batch, cfg.data.seq_len + 1)
    batches = [torch.randint(0, cfg.model.vocab_size, shape, device=device, generator=g) for _ in range(pool)]
    return itertools.cycle(batches)


def measure_data_path(cfg: TrainConfig, tokenizer: Tokenizer, seconds: float) -> float:
    """Tokens per second that this process's train stream yields (tokenise + pack), read for about `seconds`."""
    stream = iter(data.build_stream(cfg.data, tokenizer, "train", cfg.trainer.micro_batch))
    next(stream)  # opening the files is not throughput
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tokens += next(stream)[:, :-1].numel()
    return tokens / (time.perf_counter() - start)


class _Clock:
    """Marks the end of each step: device events (no host sync) on accelerators, the wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.marks: list = []

    def mark(self) -> None:
        if self.device.type == "cpu":
            self.marks.append(time.perf_counter())
        else:
            event = torch.Event(device=self.device, enable_timing=True)
            event.record()
            self.marks.append(event)

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks (call after a synchronize)."""
        if self.device.type == "cpu":
            return [b - a for a, b in itertools.pairwise(self.marks)]
        return [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(self.marks)]


def bench(cfg: TrainConfig, opts: BenchOptions, ranks: distributed.Ranks | None = None) -> dict:
    """Run warmup + steps training steps and return the figures (every rank returns the same dict)."""
    job_start = distributed.process_start_time()
    if opts.data not in DATA_MODES:
        raise ValueError(f"bench data must be one of {DATA_MODES}, got {opts.data!r}")
    if opts.steps < 2 or opts.warmup < 1 or opts.accum < 1:
        raise ValueError("bench needs steps >= 2, warmup >= 1 and accum >= 1")
    ranks = ranks or distributed.discover_ranks()
    t = cfg.trainer
    total = opts.warmup + opts.steps
    cfg = replace(
        cfg,
        trainer=replace(t, global_batch=t.micro_batch * ranks.world_size * opts.accum, max_steps=total + opts.profile),
        schedule=replace(cfg.schedule, warmup_steps=min(cfg.schedule.warmup_steps, total // 2)),  # LR: no speed effect
    )
    validate(cfg, ranks.world_size)
    if opts.data == "synthetic" and not opts.data_seconds and cfg.model.vocab_size is None:
        raise ValueError(
            "synthetic tokens need a model.vocab_size: set model.vocab_size=N, or keep --data-seconds above 0 so the "
            "tokenizer it builds sets it"
        )
    p = cfg.parallel
    with distributed.process_group(ranks, cfg.trainer.device, p.backend, p.startup_timeout_s) as device:
        return _bench(cfg, opts, ranks, device, job_start)


def _bench(cfg: TrainConfig, opts: BenchOptions, ranks: distributed.Ranks, device: torch.device, job_start: float):
    total, t = opts.warmup + opts.steps, cfg.trainer
    data_tok_s, tokenizer = None, None
    if opts.data == "real" or opts.data_seconds > 0:
        tokenizer = shared_tokenizer(cfg, ranks)
        if opts.data == "real" or cfg.model.vocab_size is None:  # synthetic tokens fit any model vocabulary
            cfg = resolve_vocab(cfg, tokenizer.get_vocab_size())
        cfg = resolve_eos(cfg, tokenizer)
        if opts.data_seconds > 0:
            timing_start = time.time()
            data_tok_s = measure_data_path(cfg, tokenizer, opts.data_seconds)
            job_start += time.time() - timing_start  # the measurement is not part of a training job's start
    if ranks.is_main:  # a large model takes a while to build and compile: say what is going on
        first = " (the first compiles)" if cfg.trainer.compile else ""
        where = f"{ranks.world_size} x {distributed.device_name(device)}"
        size = f"{models.num_params(cfg.model) / 1e6:,.1f}M"
        msg = f"bench: building {size} parameters on {where}, then {total} steps"
        print(msg + first, file=sys.stderr, flush=True)
    run = build_training(cfg, Path(os.devnull), ranks, device)
    prefetcher = None
    if opts.data == "synthetic":
        batches = _synthetic(cfg, device, ranks.rank)
    else:
        stream = data.build_stream(cfg.data, tokenizer, "train", t.micro_batch, ranks.rank, ranks.world_size)
        prefetcher = data.Prefetcher(stream, cfg.data.prefetch, pin=distributed.can_pin_memory(device))
        batches = iter(prefetcher)
    try:
        with distributed.attention_kernels(cfg.trainer.attention_kernels):
            return _measure(run, batches, opts, job_start, data_tok_s)
    finally:
        if prefetcher is not None:
            prefetcher.close()


def _measure(
    run: Run, batches: Iterator[torch.Tensor], opts: BenchOptions, job_start: float, data_tok_s: float | None
) -> dict:
    cfg, device, world = run.cfg, run.device, run.ranks.world_size
    clock, losses = _Clock(device), []
    first = [next(batches) for _ in range(opts.accum)]  # opening the data is not compile time
    first_start = time.perf_counter()
    losses.append(train_step(run, first)[0])
    distributed.synchronize(device)
    first_step_s, time_to_first_step_s = time.perf_counter() - first_start, time.time() - job_start
    distributed.steady_timeouts(cfg.parallel.timeout_s)  # compile is done: a hung rank now fails in minutes
    clock.mark()
    for _ in range(opts.warmup + opts.steps - 1):
        losses.append(train_step(run, [next(batches) for _ in range(opts.accum)])[0])
        clock.mark()
    distributed.synchronize(device)
    profile = _profile(run, batches, opts) if opts.profile else None
    steady = clock.intervals()[opts.warmup - 1 :]
    step_s = distributed.max_over_ranks(statistics.median(steady))  # the slowest rank sets the pace
    tokens_per_step = cfg.trainer.micro_batch * opts.accum * cfg.data.seq_len
    tok_s = tokens_per_step / step_s
    peak = distributed.peak_flops(device)
    mem = distributed.peak_memory_gib(device)
    return {
        "model_params": models.num_params(cfg.model),
        "device": distributed.device_name(device),
        "world_size": world,
        "plan": cfg.parallel.plan,
        "activation_checkpoint": cfg.parallel.activation_checkpoint,
        "compile": cfg.trainer.compile,
        "loss_chunk": cfg.model.loss_chunk,
        "attention_kernels": cfg.trainer.attention_kernels,
        "precision": str(distributed.autocast_dtype(device, cfg.trainer.precision) or torch.float32).removeprefix(
            "torch."
        ),
        "micro_batch": cfg.trainer.micro_batch,
        "accum": opts.accum,
        "seq_len": cfg.data.seq_len,
        "data": opts.data,
        "torch": torch.__version__,
        "steps_measured": len(steady),
        "tokens_per_s_per_device": tok_s,
        "tokens_per_s": tok_s * world,
        "mfu": run.flops_per_token * tok_s / peak if peak else None,
        "step_time_s": step_s,
        "step_time_spread": (max(steady) - min(steady)) / step_s,
        "peak_memory_gib": distributed.max_over_ranks(mem) if mem is not None else None,
        "first_step_s": first_step_s,
        "compile_s": max(first_step_s - step_s, 0.0) if cfg.trainer.compile else 0.0,
        "time_to_first_step_s": distributed.max_over_ranks(time_to_first_step_s),
        "data_path_tokens_per_s": data_tok_s,
        "data_path_vs_device": data_tok_s / tok_s if data_tok_s else None,
        "cpu_cores": os.cpu_count(),
        "losses": [x.item() for x in losses],
        "profile": profile,
    }


def _profile(run: Run, batches: Iterator[torch.Tensor], opts: BenchOptions, rows: int = 25) -> str:
    """The operators that take the most time over opts.profile more steps: where to look for the next speed-up."""
    from torch.profiler import ProfilerActivity, profile

    device = run.device
    activities = [ProfilerActivity.CPU]
    if device.type != "cpu" and hasattr(ProfilerActivity, device.type.upper()):
        activities.append(getattr(ProfilerActivity, device.type.upper()))
    with profile(activities=activities) as prof:
        for _ in range(opts.profile):
            train_step(run, [next(batches) for _ in range(opts.accum)])
        distributed.synchronize(device)
    key = "self_cpu_time_total" if len(activities) == 1 else "self_device_time_total"
    events = prof.key_averages()
    table = events.table(sort_by=key, row_limit=rows)
    return table if len(activities) == 1 else f"{table}\n{kernel_shares.shares(events, opts.profile)}"


def format_table(r: dict) -> str:
    """The human-readable report of one bench result."""

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    head = (
        f"anytrain bench | {r['model_params'] / 1e6:,.1f}M params | {r['world_size']} x {r['device']} | "
        f"plan {r['plan']} | micro-batch {r['micro_batch']} x accum {r['accum']} x seq {r['seq_len']} | "
        f"{r['precision']} | compile {'on' if r['compile'] else 'off'} | AC {r['activation_checkpoint']} | "
        f"loss chunk {r['loss_chunk'] or 'off'} | SDPA {','.join(r['attention_kernels'] or ['default'])} | "
        f"{r['data']} tokens | torch {r['torch']}"
    )
    mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    rows = [
        ("tokens/s per device (median)", f"{r['tokens_per_s_per_device']:,.0f}"),
        ("tokens/s, all devices", f"{r['tokens_per_s']:,.0f}"),
        ("MFU", mfu),
        ("step time", f"{1e3 * r['step_time_s']:.1f} ms (spread {100 * r['step_time_spread']:.1f}%)"),
        ("peak memory", "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f} GiB"),
        ("compile (first step minus a steady one)", f"{r['compile_s']:.1f} s" if r["compile"] else "- (off)"),
        ("time to first step", f"{r['time_to_first_step_s']:.1f} s"),
        (
            "data path, CPU, this process",
            "-"
            if r["data_path_tokens_per_s"] is None
            else f"{r['data_path_tokens_per_s']:,.0f} tok/s = {r['data_path_vs_device']:.1f}x one device's use",
        ),
        ("loss, first -> last step", f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join([head, *(f"  {k:<{width}}  {v}" for k, v in rows)])
