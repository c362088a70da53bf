"""Build a run from its config and train it: `fit()`."""

import itertools
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

import data
import models
import optim

from . import env
from .config import TrainConfig, grad_accum_steps, validate
from .metrics import MetricsLogger


@dataclass
class Run:
    """Everything fit() works with, built once from the config."""

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    model: models.Llama
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_stream: data.TokenStream
    val_batches: list[torch.Tensor]
    accum: int
    flops_per_token: float


def resolve_vocab(cfg: TrainConfig, tokenizer_vocab: int) -> TrainConfig:
    """Fill a null model.vocab_size from the tokenizer (padded to a multiple of 64), or check that it fits."""
    vocab = cfg.model.vocab_size
    if vocab is None:
        vocab = 64 * math.ceil(tokenizer_vocab / 64)
    elif tokenizer_vocab > vocab:
        raise ValueError(
            f"the tokenizer has {tokenizer_vocab} tokens but model.vocab_size={vocab}: set model.vocab_size >= "
            f"{tokenizer_vocab} (or null to follow the tokenizer), or use a smaller tokenizer"
        )
    return replace(cfg, model=replace(cfg.model, vocab_size=vocab))


def build_run(cfg: TrainConfig, run_dir: str | Path) -> Run:
    """Validate, then build data, model and optimizer. Every config error surfaces before the model exists."""
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.trainer
    tokenizer = data.build_tokenizer(cfg.data)
    cfg = resolve_vocab(cfg, tokenizer.get_vocab_size())
    train_stream = data.build_stream(cfg.data, tokenizer, "train", t.micro_batch)
    val_stream = data.build_stream(cfg.data, tokenizer, "val", t.micro_batch)
    # The held-out set is the first eval_batches of the val split, read once and reused at every evaluation.
    val_batches = list(itertools.islice(val_stream, t.eval_batches))
    if len(val_batches) < t.eval_batches:
        raise ValueError(
            f"the held-out split yields only {len(val_batches)} of trainer.eval_batches={t.eval_batches} batches: "
            f"lower trainer.eval_batches or raise data.val_fraction"
        )

    device = env.resolve_device(t.device)
    torch.manual_seed(t.seed)
    model = models.build_model(cfg.model, device=device)
    if t.compile:
        for block in model.layers:  # per block: compile time stays short and independent of depth
            block.compile()
    optimizer = optim.build_optimizer(cfg.optim, model)
    scheduler = optim.build_scheduler(optimizer, cfg.schedule, t.max_steps)
    OmegaConf.save(OmegaConf.structured(cfg), run_dir / "config.yaml")
    return Run(
        cfg=cfg,
        run_dir=run_dir,
        device=device,
        amp_dtype=env.autocast_dtype(device, t.precision),
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_stream=train_stream,
        val_batches=val_batches,
        accum=grad_accum_steps(cfg),
        flops_per_token=models.flops_per_token(cfg.model, cfg.data.seq_len),
    )


def train_step(run: Run, micro_batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer update over the micro-batches. Returns (mean loss, grad norm) as device tensors: reading them
    would force a host sync, so the caller does that only on log steps."""
    model, loss_sum = run.model, torch.zeros((), device=run.device)
    for batch in micro_batches:
        batch = batch.to(run.device, non_blocking=True)
        with env.autocast(run.device, run.amp_dtype):
            loss = model(batch[:, :-1], batch[:, 1:])
        (loss / len(micro_batches)).backward()
        loss_sum += loss.detach()
    clip = run.cfg.optim.grad_clip
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else float("inf"))
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum / len(micro_batches), grad_norm


@torch.no_grad()
def evaluate(run: Run) -> float:
    """Mean loss over the fixed held-out batches."""
    run.model.eval()
    total = torch.zeros((), device=run.device)
    for batch in run.val_batches:
        batch = batch.to(run.device, non_blocking=True)
        with env.autocast(run.device, run.amp_dtype):
            total += run.model(batch[:, :-1], batch[:, 1:])
    run.model.train()
    return (total / len(run.val_batches)).item()


def fit(cfg: TrainConfig, run_dir: str | Path) -> dict:
    """Train for trainer.max_steps and return the last logged metrics."""
    job_start = env.process_start_time()
    run = build_run(cfg, run_dir)
    t, cfg = run.cfg.trainer, run.cfg
    phases = optim.schedule_phases(cfg.schedule, t.max_steps)
    tokens_per_step = t.global_batch * cfg.data.seq_len
    peak = env.peak_flops(run.device)
    log = MetricsLogger(run.run_dir, cfg.logger, asdict(cfg), t.max_steps, progress_bar=t.progress_bar)
    log.message(
        f"run dir {run.run_dir} | {models.num_params(cfg.model) / 1e6:.1f}M params | device "
        f"{env.device_name(run.device)} | accumulation {run.accum} x micro-batch {t.micro_batch} | "
        f"effective schedule ({cfg.schedule.name}): {phases}"
    )
    log.log({"step": 0, "val_loss": evaluate(run)})  # the starting point of the held-out curve
    stream = iter(run.train_stream)
    last: dict = {}
    window_start, window_steps = time.perf_counter(), 0
    run_start = time.perf_counter()
    try:
        for step in range(1, t.max_steps + 1):
            lr = run.scheduler.get_last_lr()[0]
            loss, grad_norm = train_step(run, [next(stream) for _ in range(run.accum)])
            window_steps += 1
            log.advance()
            is_last = step == t.max_steps
            do_eval = is_last or (t.eval_every > 0 and step % t.eval_every == 0)
            if step % t.log_every and not do_eval and step != 1:
                continue
            env.synchronize(run.device)
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_steps * tokens_per_step / elapsed
            metrics = {"step": step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item()}
            metrics["tokens_per_s"] = tokens_per_s
            metrics["mfu"] = run.flops_per_token * tokens_per_s / peak if peak else None
            metrics["peak_mem_gib"] = env.peak_memory_gib(run.device)
            metrics["eta_s"] = (time.perf_counter() - run_start) / step * (t.max_steps - step)
            if step == 1:
                metrics["time_to_first_step_s"] = time.time() - job_start
            if do_eval:
                metrics["val_loss"] = evaluate(run)
            log.log(metrics)
            last = metrics
            window_start, window_steps = time.perf_counter(), 0
    finally:
        log.close()
    return last
