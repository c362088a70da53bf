"""Build a run from its config, resume it if it has checkpoints, and train it: `fit()`."""

import hashlib
import itertools
import math
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from tokenizers import Tokenizer

import data
import models
import optim

from . import checkpoint as ckpt
from . import env, lr_finder, parallel
from .config import TrainConfig, config_to_yaml, grad_accum_steps, validate
from .metrics import MetricsLogger, truncate_metrics
from .preemption import Preemption
from .spikes import SpikeDetector, guarded_step, in_ranges

DONE = "DONE"  # written into the run directory when trainer.max_steps is reached


@dataclass
class Run:
    """Everything fit() works with, built once from the config."""

    cfg: TrainConfig
    run_dir: Path
    ranks: env.Ranks
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
    checkpointer: ckpt.Checkpointer | None = None
    start_step: int = 0


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


def _all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (gloo has no AVG, so SUM then divide)."""
    if env.distributed():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def shared_tokenizer(cfg: TrainConfig, ranks: env.Ranks) -> Tokenizer:
    """Rank 0 trains or loads the tokenizer first; the others then read its cache instead of all training it."""
    first = env.together(lambda: data.build_tokenizer(cfg.data) if ranks.is_main else None)
    return env.together(lambda: first if ranks.is_main else data.build_tokenizer(cfg.data))


def _read_val_batches(
    cfg: TrainConfig, tokenizer: Tokenizer, ranks: env.Ranks, device: torch.device
) -> list[torch.Tensor]:
    """The held-out set: the first eval_batches of each rank's val split, read once and reused at every evaluation.
    Every rank must have them all, or one rank would wait forever in evaluation."""
    t = cfg.trainer
    stream = data.build_stream(cfg.data, tokenizer, "val", t.micro_batch, ranks.rank, ranks.world_size)
    batches = list(itertools.islice(stream, t.eval_batches))
    fewest = torch.tensor(len(batches), device=device)
    if env.distributed():
        dist.all_reduce(fewest, op=dist.ReduceOp.MIN)
    if fewest.item() < t.eval_batches:
        raise ValueError(
            f"the held-out split yields only {fewest.item()} of trainer.eval_batches={t.eval_batches} batches on "
            f"some rank: lower trainer.eval_batches or trainer.micro_batch, or raise data.val_fraction"
        )
    return batches


def _resume_source(cfg: TrainConfig, run_dir: Path, ranks: env.Ranks) -> tuple[Path | None, bool]:
    """(checkpoint to start from, whether to restore everything). The run's own checkpoints win over
    checkpoint.load."""
    own = ckpt.complete_checkpoints(run_dir / "checkpoints", warn=ranks.is_main)
    if own:
        return own[0], True
    if cfg.checkpoint.load:
        return ckpt.resolve_load_path(cfg.checkpoint.load), cfg.checkpoint.load_state == "all"
    return None, False


def build_run(cfg: TrainConfig, run_dir: str | Path, ranks: env.Ranks, device: torch.device) -> Run:
    """Validate, then build data, model and optimizer, restoring a checkpoint when there is one. Every config
    error surfaces before the model exists."""
    run_dir = Path(run_dir)
    if cfg.checkpoint.load_state not in ("model", "all"):
        raise ValueError(f"checkpoint.load_state must be model or all, got {cfg.checkpoint.load_state!r}")
    source, full = _resume_source(cfg, run_dir, ranks)
    meta = ckpt.read_meta(source) if source else None
    if full and cfg.data.streams is None:  # keep the saved stream layout, so data resumes exactly on any world size
        cfg = replace(cfg, data=replace(cfg.data, streams=meta.get("data_streams")))
    validate(cfg, ranks.world_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.trainer
    tokenizer = shared_tokenizer(cfg, ranks)
    cfg = resolve_vocab(cfg, tokenizer.get_vocab_size())
    if meta:
        ckpt.check_architecture(meta, cfg.model, source)
    train_stream = data.build_stream(cfg.data, tokenizer, "train", t.micro_batch, ranks.rank, ranks.world_size)
    val_batches = _read_val_batches(cfg, tokenizer, ranks, device)

    run = build_training(cfg, run_dir, ranks, device)
    run.train_stream = data.Prefetcher(train_stream, cfg.data.prefetch, pin=env.can_pin_memory(device))
    run.val_batches = val_batches
    run.checkpointer = ckpt.Checkpointer(cfg.checkpoint, run_dir, ranks.rank, tokenizer)
    if source:
        _restore(run, source, meta, full)
    env.together(lambda: ranks.is_main and OmegaConf.save(OmegaConf.structured(cfg), run_dir / "config.yaml"))
    return run


def build_training(cfg: TrainConfig, run_dir: Path, ranks: env.Ranks, device: torch.device) -> Run:
    """The parts train_step needs (model in its parallel form, optimizer, schedule, spike detector), without data
    or checkpoints: build_run adds those, the benchmark feeds its own tokens. model.vocab_size must be resolved."""
    t = cfg.trainer
    amp_dtype = env.autocast_dtype(device, t.precision)
    sharded = cfg.parallel.plan in ("fsdp", "hsdp")
    param_dtype = parallel.DTYPES.get(cfg.parallel.mp_param_dtype) if cfg.parallel.mp_param_dtype else amp_dtype
    torch.manual_seed(t.seed)  # the same init on every rank; DDP and FSDP then replicate or shard it
    model = models.build_model(cfg.model, device="cpu" if t.init_device == "cpu" else device).to(device)
    model = parallel.parallelize(model, cfg.parallel, device, ranks.world_size, t.compile, param_dtype)
    optimizer = optim.build_optimizer(cfg.optim, model)
    return Run(
        cfg=cfg,
        run_dir=run_dir,
        ranks=ranks,
        device=device,
        amp_dtype=None if sharded else amp_dtype,  # FSDP's mixed-precision policy already computes in param_dtype
        model=model,
        optimizer=optimizer,
        scheduler=optim.build_scheduler(optimizer, cfg.schedule, t.max_steps),
        accum=grad_accum_steps(cfg, ranks.world_size),
        flops_per_token=models.flops_per_token(cfg.model, cfg.data.seq_len),
        spikes=SpikeDetector(cfg.trainer.spikes, device),
    )


def _restore(run: Run, source: Path, meta: dict, full: bool) -> None:
    ckpt.restore(source, run.model, run.optimizer if full else None)
    if not full:
        return
    states = ckpt.load_rank_states(source)
    same_layout = meta["world_size"] == run.ranks.world_size and len(states) == run.ranks.world_size
    mine = states[run.ranks.rank] if same_layout else states[0]
    run.scheduler.load_state_dict(mine["scheduler"])
    env.set_rng_state(mine["rng"], run.device)
    if "spikes" in mine:
        run.spikes.load_state_dict(mine["spikes"])
    merged = {k: v for s in states for k, v in s["data"]["streams"].items()}
    run.train_stream.load_state_dict({"next": 0, "streams": merged})
    run.start_step = int(meta["step"])


def _fingerprint(batches: list[torch.Tensor]) -> str:
    """A short hash of the tokens of one step: equal fingerprints mean the same data in the same order."""
    h = hashlib.blake2b(digest_size=8)
    for b in batches:
        h.update(b.numpy().tobytes())
    return h.hexdigest()


def train_step(run: Run, micro_batches: list[torch.Tensor], schedule: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer update over the micro-batches, unless the spike detector vetoes it. Returns (global mean loss,
    global grad norm) as device tensors: reading them forces a host sync, so callers do that on log steps only."""
    model, loss_sum, last = run.model, torch.zeros((), device=run.device), len(micro_batches) - 1
    for i, batch in enumerate(micro_batches):
        batch = batch.to(run.device, non_blocking=True)
        with parallel.gradient_sync(model, enabled=i == last), env.autocast(run.device, run.amp_dtype):
            loss = model(batch[:, :-1], batch[:, 1:])
            (loss / len(micro_batches)).backward()
        loss_sum += loss.detach()
    grad_norm = parallel.clip_grad_norm(model, run.cfg.optim.grad_clip)
    loss = _all_reduce_mean(loss_sum / len(micro_batches))  # the same value, and so the same decision, everywhere
    guarded_step(run.optimizer, run.spikes.decide(loss, grad_norm))
    if schedule:
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm


@torch.no_grad()
def evaluate(run: Run, preemption: Preemption | None = None) -> float | None:
    """Mean loss over the fixed held-out batches of all ranks; None when a preemption interrupted it."""
    run.model.eval()
    total = torch.zeros((), device=run.device)
    try:
        for batch in run.val_batches:
            if preemption is not None and preemption.agreed():
                return None
            batch = batch.to(run.device, non_blocking=True)
            with env.autocast(run.device, run.amp_dtype):
                total += run.model(batch[:, :-1], batch[:, 1:])
    finally:
        run.model.train()
    return _all_reduce_mean(total / len(run.val_batches)).item()


def save_checkpoint(run: Run, step: int) -> None:
    cfg = run.cfg
    rank_state = {
        "step": step,
        "rng": env.rng_state(run.device),
        "data": run.train_stream.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "spikes": run.spikes.state_dict(),
    }
    meta = {
        "world_size": run.ranks.world_size,
        "data_streams": cfg.data.streams or run.ranks.world_size,
        "model": asdict(cfg.model),
        "rope_style": cfg.model.rope_style,
        "tokenizer": {**asdict(cfg.data.tokenizer), "vocab_size_actual": run.train_stream.vocab_size},
        "tokens_seen": step * cfg.trainer.global_batch * cfg.data.seq_len,
        "config": config_to_yaml(cfg),
    }
    run.checkpointer.save(step, run.model, run.optimizer, rank_state, meta)


def start_process_group(cfg: TrainConfig, ranks: env.Ranks, store: dist.Store | None = None) -> torch.device:
    """This rank's device, with the process group started on it when there are several ranks."""
    device = env.resolve_device(cfg.trainer.device, ranks.local_rank)
    if ranks.world_size > 1:
        backend = env.choose_backend(device.type, cfg.parallel.backend)
        env.init_distributed(ranks, device, backend, store or env.make_store(ranks), cfg.parallel.timeout_s)
    return device


def fit(cfg: TrainConfig, run_dir: str | Path, ranks: env.Ranks | None = None, store: dist.Store | None = None) -> dict:
    """Train (or resume) until trainer.max_steps and return the last logged metrics. With several ranks, start the
    process group on the rank's device first (`store`: the rendezvous the launcher entry already made)."""
    job_start = env.process_start_time()
    ranks = ranks or env.Ranks()
    device = start_process_group(cfg, ranks, store)
    run = None
    try:
        with env.attention_kernels(cfg.trainer.attention_kernels):
            run = build_run(cfg, run_dir, ranks, device)
            if cfg.lr_find.enabled:
                return find_lr(run)
            with Preemption() as preemption:
                return _train(run, job_start, preemption)
    except BaseException as e:
        traceback.clear_frames(e.__traceback__)  # the failed frames hold the model: it goes before the process group
        raise
    finally:
        if run is not None and run.train_stream is not None:
            run.train_stream.close()  # the read-ahead thread, also when a multirun goes on to its next job
        run = None  # the model goes before the process group: see env.end_distributed
        env.end_distributed()


def find_lr(run: Run) -> dict:
    """The LR range test on this run's model, data, optimizer and parallel plan (the schedule stays off)."""
    cfg = run.cfg.lr_find
    run.spikes.cfg = replace(run.spikes.cfg, enabled=False)  # the blow-up is what the sweep measures: never veto it
    log = env.together(
        lambda: MetricsLogger(run.run_dir, run.cfg.logger, asdict(run.cfg), cfg.steps, enabled=run.ranks.is_main)
    )
    stream = iter(run.train_stream)

    def step() -> float:
        loss, _ = train_step(run, [next(stream) for _ in range(run.accum)], schedule=False)
        return loss.item()

    def on_step(i: int, lr: float, loss: float) -> None:
        log.log({"step": i, "loss": loss, "lr": run.optimizer.param_groups[0]["lr"], "swept_lr": lr})

    try:
        lrs, losses = lr_finder.sweep(cfg, run.cfg.optim.lr, run.optimizer.param_groups, step, on_step)
        smoothed, suggestion = lr_finder.analyse(lrs, losses, cfg)
        if run.ranks.is_main:
            lr_finder.write_results(run.run_dir, lrs, losses, smoothed, suggestion)
        log.message(
            f"lr finder: suggested optim.lr={suggestion.suggested_lr:.3g} (blow-up at {suggestion.blowup_lr:.3g}, "
            f"lowest loss at {suggestion.min_loss_lr:.3g}, {suggestion.steps_run} steps); files in {run.run_dir}"
        )
    finally:
        log.close()
    return asdict(suggestion)


class TooManySkips(ValueError):
    """More consecutive automatic skips than trainer.max_consecutive_skips."""


def _open_metrics(run: Run) -> MetricsLogger:
    t, main, metrics_file = run.cfg.trainer, run.ranks.is_main, run.run_dir / "metrics.jsonl"
    if main and run.start_step:
        truncate_metrics(metrics_file, run.start_step)
    elif main and metrics_file.exists():  # a fresh start in a used run dir: keep, don't mix, the old curve
        metrics_file.rename(run.run_dir / f"metrics.before-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    return MetricsLogger(
        run.run_dir, run.cfg.logger, asdict(run.cfg), t.max_steps, run.start_step, t.progress_bar, enabled=main
    )


def _train(run: Run, job_start: float, preemption: Preemption) -> dict:
    t, cfg, world, start = run.cfg.trainer, run.cfg, run.ranks.world_size, run.start_step
    phases = optim.schedule_phases(cfg.schedule, t.max_steps)
    tokens_per_step = t.global_batch * cfg.data.seq_len
    peak = env.peak_flops(run.device)
    log = env.together(lambda: _open_metrics(run))
    resumed = f" | resumed at step {start}" if start else ""
    log.message(
        f"run dir {run.run_dir} | {models.num_params(cfg.model) / 1e6:.1f}M params | {world} x "
        f"{env.device_name(run.device)} | plan {cfg.parallel.plan} | accumulation {run.accum} x micro-batch "
        f"{t.micro_batch} x {world} ranks | effective schedule ({cfg.schedule.name}): {phases}{resumed}"
    )
    last: dict = {}
    try:
        if start >= t.max_steps:
            log.message(f"the run is complete: step {start} >= trainer.max_steps={t.max_steps}")
            return last
        if run.ranks.is_main:  # a finished run extended with a larger max_steps is not done any more
            (run.run_dir / DONE).unlink(missing_ok=True)
        if start == 0:
            log.log({"step": 0, "val_loss": evaluate(run)})  # the starting point of the held-out curve
        stream = iter(run.train_stream)
        window_start, window_steps, run_start = time.perf_counter(), 0, time.perf_counter()
        for step in range(start + 1, t.max_steps + 1):
            lr = run.scheduler.get_last_lr()[0]
            batches = [next(stream) for _ in range(run.accum)]
            if in_ranges(step, t.skip_steps):  # drawn and discarded: the data order afterwards is unchanged
                skip_start = time.perf_counter()
                run.scheduler.step()
                log.advance()
                log.log({"step": step, "lr": lr, "skipped": "manual", "batch_hash": _fingerprint(batches)})
                window_start += time.perf_counter() - skip_start  # left out of tokens/s and MFU
                continue
            loss, grad_norm = train_step(run, batches)
            run.spikes.note_limit(step, t.max_consecutive_skips, loss, grad_norm)
            window_steps += 1
            log.advance()
            is_last = step == t.max_steps
            do_eval = is_last or (t.eval_every > 0 and step % t.eval_every == 0)
            stop = False
            if not (step % t.log_every and not do_eval and step != start + 1):
                env.synchronize(run.device)
                elapsed = time.perf_counter() - window_start
                tokens_per_s = window_steps * tokens_per_step / elapsed
                metrics = {"step": step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item()}
                metrics["tokens_per_s"] = tokens_per_s
                metrics["tokens_per_s_per_device"] = tokens_per_s / world
                metrics["mfu"] = run.flops_per_token * tokens_per_s / world / peak if peak else None
                metrics["peak_mem_gib"] = env.peak_memory_gib(run.device)
                metrics["eta_s"] = (time.perf_counter() - run_start) / (step - start) * (t.max_steps - step)
                metrics["batch_hash"] = _fingerprint(batches)
                metrics["skipped_steps"], too_many = run.spikes.read()
                if too_many:
                    s_step, s_loss, s_norm = too_many
                    raise TooManySkips(
                        f"more than trainer.max_consecutive_skips={t.max_consecutive_skips} updates in a row were "
                        f"skipped as spikes or NaN, first passing the limit at step {int(s_step)} (loss {s_loss:.4g}, "
                        f"grad norm {s_norm:.4g}): inspect the data around that step, lower optim.lr, or resume from "
                        f"an earlier checkpoint with trainer.skip_steps covering the bad batches"
                    )
                if step == start + 1:
                    metrics["time_to_first_step_s"] = time.time() - job_start
                if do_eval:
                    val = evaluate(run, preemption)
                    stop = val is None
                    if val is not None:
                        metrics["val_loss"] = val
                log.log(metrics)
                last = metrics
                window_start, window_steps = time.perf_counter(), 0
            stop = stop or preemption.agreed()
            if stop or (cfg.checkpoint.every > 0 and (step % cfg.checkpoint.every == 0 or is_last)):
                save_checkpoint(run, step)
            if stop:
                run.checkpointer.finish()
                log.message(f"preempted by signal {preemption.received or 'on another rank'}: saved step {step}")
                return {**last, "preempted": True}
        run.checkpointer.finish()
        if run.ranks.is_main:
            (run.run_dir / DONE).write_text(f"{t.max_steps}\n")
    finally:
        log.close()
    return last
