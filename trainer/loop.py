"""Train a run: the step, the evaluation, and `fit()`, which builds (or resumes) the run and trains it to
trainer.max_steps (or sweeps the LR range test instead)."""

import hashlib
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist

import models
import optim

from . import distributed, lr_finder, sanity
from .build import build_run
from .checkpointing.run_state import no_save_advice, save_run
from .config import TrainConfig
from .distributed import parallel
from .metrics import MetricsLogger, truncate_metrics
from .preemption import Preemption
from .run import Run
from .run_lock import hold
from .spikes import guarded_step, in_ranges, supports_grad_scale

DONE = "DONE"  # written into the run directory when trainer.max_steps is reached


def _fingerprint(batches: list[torch.Tensor]) -> str:
    """A short hash of the global batch of one step, over all ranks (a collective): each sequence is hashed, and
    the hashes are summed in 16-bit limbs, so the fingerprint is the same however the batch is split over ranks and
    micro-batches. Equal fingerprints mean the same sequences were trained on."""
    limbs = [0, 0, 0, 0]
    for b in batches:
        for row in b.numpy():
            h = int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
            for i in range(4):
                limbs[i] += (h >> (16 * i)) & 0xFFFF
    total = distributed.sum_ints_over_ranks(limbs)
    return hashlib.blake2b(repr(total).encode(), digest_size=8).hexdigest()


def train_step(run: Run, micro_batches: list[torch.Tensor], schedule: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer update over the micro-batches, unless the spike detector vetoes it. Returns (global mean loss,
    global grad norm) as device tensors: reading them forces a host sync, so callers do that on log steps only."""
    model, loss_sum, last = run.model, torch.zeros((), device=run.device), len(micro_batches) - 1
    for i, batch in enumerate(micro_batches):
        batch = batch.to(run.device, non_blocking=True)
        with parallel.gradient_sync(model, enabled=i == last), distributed.autocast(run.device, run.amp_dtype):
            loss = model(batch[:, :-1], batch[:, 1:])
            (loss / len(micro_batches)).backward()
        loss_sum += loss.detach()
    fused_clip = supports_grad_scale(run.optimizer)  # the clip rides on the fused update: one pass less
    grad_norm, grad_scale = parallel.clip_grad_norm(model, run.cfg.optim.grad_clip, fused_clip)
    loss = distributed.mean_over_ranks(loss_sum / len(micro_batches))  # the same value, so the same decision
    guarded_step(run.optimizer, run.spikes.decide(loss, grad_norm), grad_scale)
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
            with distributed.autocast(run.device, run.amp_dtype):
                total += run.model(batch[:, :-1], batch[:, 1:])
    finally:
        run.model.train()
    return distributed.mean_over_ranks(total / len(run.val_batches)).item()


def fit(
    cfg: TrainConfig, run_dir: str | Path, ranks: distributed.Ranks | None = None, store: dist.Store | None = None
) -> dict:
    """Train (or resume) until trainer.max_steps and return the last logged metrics. With several ranks, start the
    process group on the rank's device first (`store`: the rendezvous the launcher entry already made). One job at
    a time: rank 0 holds the run directory's lock (run_lock) before anything is written into it, until the end."""
    job_start = distributed.process_start_time()
    ranks = ranks or distributed.Ranks()
    p = cfg.parallel
    with distributed.process_group(ranks, cfg.trainer.device, p.backend, p.startup_timeout_s, store) as device:
        with hold(run_dir, ranks):
            return _fit(cfg, Path(run_dir), ranks, device, job_start)


def _fit(cfg: TrainConfig, run_dir: Path, ranks: distributed.Ranks, device: torch.device, job_start: float) -> dict:
    with distributed.attention_kernels(cfg.trainer.attention_kernels):
        run = build_run(cfg, run_dir, ranks, device)
        try:
            if cfg.lr_find.enabled:
                return find_lr(run)
            with Preemption() as preemption:
                return _train(run, job_start, preemption)
        finally:
            run.train_stream.close()  # the read-ahead thread, also when a multirun goes on to its next job


def find_lr(run: Run) -> dict:
    """The LR range test on this run's model, data, optimizer and parallel plan (the schedule stays off)."""
    cfg = run.cfg.lr_find
    run.spikes.cfg = replace(run.spikes.cfg, enabled=False)  # the blow-up is what the sweep measures: never veto it
    log = distributed.together(
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
    tokens_per_step = t.global_batch * cfg.data.seq_len
    peak = distributed.peak_flops(run.device)
    log = distributed.together(lambda: _open_metrics(run))
    plan = "evaluation only (trainer.max_steps=0)"
    if t.max_steps:
        plan = f"effective schedule ({cfg.schedule.name}): {optim.schedule_phases(cfg.schedule, t.max_steps)}"
    log.message(
        f"run dir {run.run_dir} | {models.num_params(cfg.model) / 1e6:.1f}M params | {world} x "
        f"{distributed.device_name(run.device)} | plan {cfg.parallel.plan} | accumulation {run.accum} x micro-batch "
        f"{t.micro_batch} x {world} ranks | {plan}"
    )
    if run.source is not None:
        what = f"resumed at step {start}" if run.restored_all else "model weights only (step, optimizer, data fresh)"
        log.message(f"weights loaded from {run.source}: {what}")
    last: dict = {}
    try:
        if t.max_steps == 0:  # evaluate the (loaded) weights on the held-out set and stop
            last = {"step": start, "val_loss": evaluate(run)}
            log.log(last)
            return last
        if start >= t.max_steps:
            log.message(f"the run is complete: step {start} >= trainer.max_steps={t.max_steps}")
            return last
        if run.ranks.is_main:  # a finished run extended with a larger max_steps is not done any more
            (run.run_dir / DONE).unlink(missing_ok=True)
        if start == 0 or run.eval_pending:  # the curve's starting point, or the evaluation a preemption cut short
            log.log({"step": start, "val_loss": evaluate(run)})
        stream = iter(run.train_stream)
        frozen = sanity.FrozenCheck.start(run.model, t.frozen_check_steps, start, t.max_steps)  # digests of step 0
        window_start, window_steps = time.perf_counter(), 0
        steady_start, steady_step = None, None  # set at the first trained step's log: the ETA's clock
        for step in range(start + 1, t.max_steps + 1):
            lr = run.scheduler.get_last_lr()[0]
            batches = [next(stream) for _ in range(run.accum)]
            if in_ranges(step, t.skip_steps):  # drawn and discarded: the data order afterwards is unchanged
                skip_start = time.perf_counter()
                run.scheduler.step()
                run.tokens_seen += tokens_per_step
                log.advance()
                log.log({"step": step, "lr": lr, "skipped": "manual", "batch_hash": _fingerprint(batches)})
                window_start += time.perf_counter() - skip_start  # left out of tokens/s and MFU
                continue
            loss, grad_norm = train_step(run, batches)
            run.tokens_seen += tokens_per_step
            run.spikes.note_limit(step, t.max_consecutive_skips, loss, grad_norm)
            window_steps += 1
            log.advance()
            is_last = step == t.max_steps
            do_eval = is_last or (t.eval_every > 0 and step % t.eval_every == 0)
            stop = eval_cut = False
            check_frozen = frozen is not None and frozen.due(step)  # a log step, whatever log_every says
            if not (step % t.log_every and not do_eval and step != start + 1 and not check_frozen):
                distributed.synchronize(run.device)
                elapsed = time.perf_counter() - window_start
                tokens_per_s = window_steps * tokens_per_step / elapsed
                metrics = {"step": step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item()}
                metrics["tokens_per_s"] = tokens_per_s
                metrics["tokens_per_s_per_device"] = tokens_per_s / world
                metrics["mfu"] = run.flops_per_token * tokens_per_s / world / peak if peak else None
                metrics["peak_mem_gib"] = distributed.peak_memory_gib(run.device)
                if steady_start is not None:  # from steady steps only: the first trained one also warms up
                    rate = (time.perf_counter() - steady_start) / (step - steady_step)
                    metrics["eta_s"] = rate * (t.max_steps - step)
                metrics["batch_hash"] = _fingerprint(batches)
                metrics["skipped_steps"], too_many = run.spikes.read()
                if too_many:
                    s_step, s_loss, s_norm = too_many
                    raise TooManySkips(
                        f"more than trainer.max_consecutive_skips={t.max_consecutive_skips} updates in a row were "
                        f"skipped as spikes or NaN, first passing the limit at step {int(s_step)} (loss {s_loss:.4g}, "
                        f"grad norm {s_norm:.4g}): inspect the data around that step; "
                        f"{no_save_advice(run.run_dir)}"
                    )
                if step == start + 1:
                    metrics["time_to_first_step_s"] = time.time() - job_start
                    sanity.check_first_loss(run, metrics["loss"])
                if check_frozen:
                    metrics["frozen_params"], frozen = frozen.check(run.model, step, run.ranks.is_main), None
                if do_eval:
                    val = evaluate(run, preemption)
                    stop = eval_cut = val is None
                    if val is not None:
                        metrics["val_loss"] = val
                log.log(metrics)
                last = metrics
                window_start, window_steps = time.perf_counter(), 0
                if steady_start is None:
                    steady_start, steady_step = window_start, step
                    distributed.steady_timeouts(cfg.parallel.timeout_s)  # start-up is over: hangs fail in minutes
            stop = stop or preemption.agreed()
            if stop or (cfg.checkpoint.every > 0 and (step % cfg.checkpoint.every == 0 or is_last)):
                save_run(run, step, eval_pending=eval_cut)
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
