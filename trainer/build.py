"""Build a run from its config: data, model in its parallel form, optimizer, schedule, and the checkpoint it
resumes from. `build_run` for training; `build_training` for the parts the step needs (the benchmark feeds its own
tokens)."""

import itertools
import logging
import math
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer

import data
import models
import optim

from . import distributed
from .checkpointing import CHECKPOINTS, Checkpointer, check_architecture, read_meta
from .checkpointing.changes import compare
from .checkpointing.resume import resume_source
from .checkpointing.run_state import check_tokenizer, restore_run
from .config import TrainConfig, grad_accum_steps, validate
from .distributed import parallel
from .run import Run
from .spikes import SpikeDetector

log = logging.getLogger(__name__)


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


def resolve_eos(cfg: TrainConfig, tokenizer: Tokenizer) -> TrainConfig:
    """Fill a null model.eos_id from the tokenizer when documents matter (model.attention/positions=document),
    or check that it is the tokenizer's EOS: the model finds document boundaries by it."""
    if not cfg.model.per_document:
        return cfg
    eos = data.eos_id(tokenizer, cfg.data.tokenizer.eos_token)
    if cfg.model.eos_id is not None and cfg.model.eos_id != eos:
        raise ValueError(
            f"model.eos_id={cfg.model.eos_id} is not the tokenizer's EOS ({cfg.data.tokenizer.eos_token!r} = {eos}): "
            f"set model.eos_id={eos}, or null to take it from the tokenizer"
        )
    return replace(cfg, model=replace(cfg.model, eos_id=eos))


def _model_for(cfg: TrainConfig, device: torch.device) -> models.ModelConfig:
    """The model config as built on this device: attention=document's kernel chosen for it, and checked (never a
    quiet fall back to causal attention)."""
    m = cfg.model
    if m.attention != "document":
        return m
    kernel = distributed.document_kernel(device, m.document_kernel)
    kernels = cfg.trainer.attention_kernels
    if kernel == "sdpa" and kernels and not set(kernels) & {"efficient", "math"}:
        raise ValueError(
            f"model.attention=document computes a masked attention (document_kernel=sdpa on {device.type}), which "
            f"trainer.attention_kernels={kernels} cannot: add efficient or math to it, or set it to null"
        )
    return replace(m, document_kernel=kernel)  # a null eos_id is the model's own error


def shared_tokenizer(cfg: TrainConfig, ranks: distributed.Ranks) -> Tokenizer:
    """Rank 0 trains or loads the tokenizer first; the others then read its cache instead of all training it."""
    first = distributed.together(lambda: data.build_tokenizer(cfg.data) if ranks.is_main else None)
    return distributed.together(lambda: first if ranks.is_main else data.build_tokenizer(cfg.data))


def _read_val_batches(cfg: TrainConfig, tokenizer: Tokenizer, ranks: distributed.Ranks) -> list[torch.Tensor]:
    """The held-out set: the first eval_batches of each rank's val split, read once and reused at every evaluation.
    Every rank must hold as many, or one rank would wait forever in evaluation: a split smaller than asked for (a
    single book, say) is evaluated on what it holds, with a warning; an empty one is an error."""
    t = cfg.trainer
    stream = data.build_stream(cfg.data, tokenizer, "val", t.micro_batch, ranks.rank, ranks.world_size)
    batches = list(itertools.islice(stream, t.eval_batches))
    fewest = int(distributed.min_over_ranks(len(batches)))
    if fewest == 0:
        raise ValueError(
            f"the held-out split holds no micro-batch of trainer.micro_batch={t.micro_batch} x data.seq_len="
            f"{cfg.data.seq_len} tokens on some rank: raise data.val_fraction (now {cfg.data.val_fraction}), or lower "
            f"trainer.micro_batch or data.seq_len"
        )
    if fewest < t.eval_batches:
        if ranks.is_main:
            log.warning(
                "the held-out split holds only %d of trainer.eval_batches=%d micro-batches%s: evaluating on %d (raise "
                "data.val_fraction=%s for a larger held-out set, or set trainer.eval_batches=%d to silence this)",
                fewest, t.eval_batches, " on some rank" if ranks.world_size > 1 else "", fewest,
                cfg.data.val_fraction, fewest,
            )  # fmt: skip
        batches = batches[:fewest]
    return batches


def build_run(cfg: TrainConfig, run_dir: str | Path, ranks: distributed.Ranks, device: torch.device) -> Run:
    """Validate, then build data, model and optimizer, restoring a checkpoint when there is one. Every config
    error surfaces before the model exists."""
    run_dir = Path(run_dir)
    if cfg.checkpoint.load_state not in ("model", "all"):
        raise ValueError(f"checkpoint.load_state must be model or all, got {cfg.checkpoint.load_state!r}")
    source, full = resume_source(cfg, run_dir, ranks)
    if cfg.trainer.max_steps == 0 and source is not None and source.parent == run_dir / CHECKPOINTS:  # its own
        raise ValueError(
            f"trainer.max_steps=0 evaluates in a run directory of its own, and {run_dir} holds a run's checkpoints "
            f"(its config and metrics would be overwritten): use checkpoint.load={run_dir} with another "
            f"trainer.run_dir"
        )
    meta = read_meta(source) if source else None
    if full and cfg.data.streams is None and not data.uses_stores(cfg.data):
        # keep the saved stream layout, so text data resumes exactly on any world size (stores need no layout)
        cfg = replace(cfg, data=replace(cfg.data, streams=meta.get("data_streams")))
    validate(cfg, ranks.world_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.trainer
    tokenizer = shared_tokenizer(cfg, ranks)
    cfg = resolve_eos(resolve_vocab(cfg, tokenizer.get_vocab_size()), tokenizer)
    changes = None
    if meta:
        check_architecture(meta, cfg.model, source)
        changes = compare(cfg, meta["config"], str(source)) if full and "config" in meta else None
        if not (changes and "tokenizer" in changes.allowed):
            check_tokenizer(source, tokenizer)
        if changes and changes.allowed.keys() & {"data", "seq_len"}:  # stores go on from the same position
            cfg = replace(cfg, data=replace(cfg.data, allow_data_change=True))
    train_stream = data.build_stream(cfg.data, tokenizer, "train", t.micro_batch, ranks.rank, ranks.world_size)
    if isinstance(train_stream, data.StoreStream):  # how often each store is read: an error past data.max_repeat
        for line in train_stream.plan(t.max_steps * t.global_batch, cfg.data.max_repeat):
            ranks.is_main and log.info("data: %s", line)
    val_batches = _read_val_batches(cfg, tokenizer, ranks)

    run = build_training(cfg, run_dir, ranks, device)
    run.train_stream = data.Prefetcher(train_stream, cfg.data.prefetch, pin=distributed.can_pin_memory(device))
    run.val_batches = val_batches
    run.checkpointer = Checkpointer(cfg.checkpoint, run_dir, ranks.rank, tokenizer)
    if source:
        restore_run(run, source, meta, full, changes)
        run.source, run.restored_all = source, full
    distributed.together(lambda: ranks.is_main and OmegaConf.save(OmegaConf.structured(cfg), run_dir / "config.yaml"))
    return run


def build_training(cfg: TrainConfig, run_dir: Path, ranks: distributed.Ranks, device: torch.device) -> Run:
    """The parts train_step needs (model in its parallel form, optimizer, schedule, spike detector), without data
    or checkpoints: build_run adds those, the benchmark feeds its own tokens. model.vocab_size must be resolved."""
    t = cfg.trainer
    amp_dtype = distributed.autocast_dtype(device, t.precision)
    sharded = cfg.parallel.plan in ("fsdp", "hsdp")
    param_dtype = parallel.DTYPES.get(cfg.parallel.mp_param_dtype) if cfg.parallel.mp_param_dtype else amp_dtype
    torch.manual_seed(t.seed)  # the same init on every rank; DDP and FSDP then replicate or shard it
    model_cfg = _model_for(cfg, device)
    model = models.build_model(model_cfg, device="cpu" if t.init_device == "cpu" else device).to(device)
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
        scheduler=_scheduler(cfg, optimizer),
        accum=grad_accum_steps(cfg, ranks.world_size),
        flops_per_token=models.flops_per_token(cfg.model, cfg.data.seq_len),
        spikes=SpikeDetector(cfg.trainer.spikes, device),
    )


def _scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.trainer.max_steps == 0:  # evaluation only: a schedule that is never stepped
        return optim.build_scheduler(optimizer, replace(cfg.schedule, name="constant", warmup_steps=0), 1)
    return optim.build_scheduler(optimizer, cfg.schedule, cfg.trainer.max_steps)
