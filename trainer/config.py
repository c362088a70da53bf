"""The run's configuration: one dataclass per config group, registered as Hydra's schema.

Group configs live with their builders (`models.ModelConfig`, `data.DataConfig`, one config class per optimizer in
`optim/`, `optim.ScheduleConfig`, and the trainer's own next to the code that reads them). Every field is documented
once, in its dataclass, and every default lives there: the YAML files of configs/ hold only what differs.
"""

import logging
from dataclasses import dataclass, field, fields, is_dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from data.config import DataConfig, validate_data_config
from models.config import ModelConfig, validate_model_config
from optim import OPTIMIZERS, OptimConfig, ScheduleConfig, config_class, schedule_phases

from .checkpointing import CheckpointConfig
from .cluster.launcher import LauncherConfig
from .distributed.devices import ATTENTION_KERNELS
from .distributed.parallel import ParallelConfig, validate_parallel
from .lr_finder import LRFinderConfig, validate_finder
from .spikes import SpikeConfig, validate_skip_ranges, validate_spikes

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    max_steps: int = 150
    """Optimizer steps of the run."""
    global_batch: int = 16
    """Sequences per optimizer step, summed over all data-parallel ranks."""
    micro_batch: int = 16
    """Sequences per rank per micro-step; gradient accumulation = global_batch / (micro_batch * data-parallel ranks)."""
    eval_every: int = 50
    """Evaluate the held-out loss every this many steps and at the last step; 0 evaluates only at the end (and, on a
    fresh start, at step 0: the curve's starting point)."""
    eval_batches: int = 10
    """Micro-batches of held-out data per evaluation (the same ones every time)."""
    log_every: int = 10
    """Read metrics back from the device and log them every this many steps (reading them forces a sync)."""
    compile: bool = False
    """torch.compile each transformer block (short compile times, also at scale)."""
    attention_kernels: list[str] | None = None
    """The only scaled-dot-product-attention kernels allowed, tried in this order, from cudnn, flash, efficient,
    math (e.g. [cudnn, flash, math] on Hopper); a kernel that cannot take a call falls through to the next listed
    one, and none left is an error, so end with math to keep a fallback. None keeps torch's own choice. Numerics
    are the same up to float rounding."""
    device: str = "auto"
    """"auto" picks xpu > cuda > mps > cpu; or name one ("cuda", "cpu", ...)."""
    precision: str = "auto"
    """"auto": bf16 autocast on accelerators with fp32 master weights, fp32 on the CPU; or "bf16" / "fp32"."""
    seed: int = 0
    """Seeds model init and every random choice of the trainer."""
    init_device: str = "cpu"
    """Where the initial weights are drawn: "cpu" gives the same weights on every kind of device (a laptop run and a
    GPU run start equal); "device" draws them on the accelerator, faster for large models and light on host memory."""
    run_dir: str | None = None
    """Run directory (config, metrics, checkpoints). None: runs/<date>_<time>, or the sweep folder under -m."""
    progress_bar: bool = True
    """Show a progress bar with ETA on the console (log lines are printed either way)."""
    skip_steps: list[list[int]] = field(default_factory=list)
    """Steps whose update never happens, as inclusive [first, last] ranges (e.g. [[1200, 1210]]): their batches are
    drawn and discarded (the data order afterwards is unchanged) and the schedule advances."""
    spikes: SpikeConfig = field(default_factory=SpikeConfig)
    """Automatic skipping of NaN/inf and loss or grad-norm spikes."""
    max_consecutive_skips: int = 8
    """Stop the run when more automatic skips than this happen in a row."""
    frozen_check_steps: int = 100
    """After this many steps, warn naming every parameter tensor still bit-identical to its initial value, and log
    their count as `frozen_params` (trainer/sanity.py; e.g. bf16 master weights that freeze the norms). 0 disables
    it; a run resumed from a checkpoint, or shorter than this, is not checked."""


@dataclass
class LoggerConfig:
    name: str = "none"
    """"wandb" logs to Weights & Biases as well as the console and metrics.jsonl; "none" does not."""
    project: str = "anytrain"
    """wandb project."""
    entity: str | None = None
    """wandb entity (team or user); None uses the account's default."""
    mode: str | None = None
    """wandb mode: "online", "offline" or "disabled"; None means online with WANDB_API_KEY set, else offline."""
    tags: list[str] = field(default_factory=list)
    """wandb tags."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = MISSING
    """The optimizer group's config class (AdamWConfig, MuonConfig, ...): picked by `optim=NAME`, adamw by default."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    lr_find: LRFinderConfig = field(default_factory=LRFinderConfig)

    def __post_init__(self) -> None:
        # Built in Python rather than composed (TrainConfig()): the optimizer group's default. The schema itself
        # keeps optim typed as the base class, so that Hydra merges any optimizer's class into it.
        if self.optim == MISSING:
            self.optim = config_class("adamw")()


def register_schemas() -> None:
    """Make the dataclasses the schema of configs/train.yaml, so that unknown keys and wrong types are rejected.
    Each optimizer's class becomes the schema of configs/optim/NAME.yaml (its defaults list names schema/NAME)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for name, cls in OPTIMIZERS.items():
        store.store(group="optim/schema", name=name, node=cls)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """Resolve interpolations and turn the composed config into dataclasses. A key the schema does not have is an
    error here too: Hydra takes `+optim.eps=1e-6` (its own hint after it refused `optim.eps=1e-6`) and the key
    would otherwise be carried along and never read."""
    train_cfg = OmegaConf.to_object(cfg)
    unknown = _unknown_keys(train_cfg)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(unknown)}: no such field in the schema (a `+` adds a key, it does not "
            f"make the trainer read it); check the spelling against `train --cfg job`"
        )
    return train_cfg


def _unknown_keys(obj: object, prefix: str = "") -> list[str]:
    """Dotted names of attributes a dataclass instance holds beyond its fields, at any depth."""
    if not is_dataclass(obj):
        return []
    names = {f.name for f in fields(obj)}
    found = [f"{prefix}{k}" for k in vars(obj) if k not in names]
    for name in names:
        value = getattr(obj, name)
        for item in value if isinstance(value, list) else [value]:
            found += _unknown_keys(item, f"{prefix}{name}.")
    return found


def config_to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# Fields that existed and were removed: a config.yaml that holds them still loads. Any other unknown key is an error.
RETIRED = {"lr_find.slope_window": "the LR finder's analysis no longer uses it"}


def config_from_yaml(text: str) -> TrainConfig:
    """Parse a resolved config (config.yaml of a run) against the schema, the optimizer's class chosen by its name.
    A config.yaml written before optimizers had a class each holds every optimizer's fields: the ones the chosen
    class lacks are dropped (with a warning), so that such a run still resumes."""
    saved = OmegaConf.create(text)
    for key, why in RETIRED.items():  # written by an earlier version into every config.yaml: still resumes
        group, name = key.rsplit(".", 1)
        node = OmegaConf.select(saved, group)
        if node is not None and name in node:
            log.warning("config.yaml: dropped %s (%s)", key, why)
            del node[name]
    cls = config_class(OmegaConf.select(saved, "optim.name", default="adamw"))
    known = {f.name for f in fields(cls)}
    foreign = [k for k in saved.get("optim", {}) if k not in known]
    if foreign:
        log.warning("config.yaml: dropped optim.%s (not fields of %s)", ", optim.".join(foreign), cls.__name__)
        for key in foreign:
            del saved.optim[key]
    typed = {"optim": OmegaConf.structured(cls)}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), typed, saved))


def validate(cfg: TrainConfig, world_size: int = 1) -> None:
    """Cross-field rules that a schema cannot express. Raises ValueError naming the field and the fix."""
    validate_model_config(cfg.model)
    validate_data_config(cfg.data)
    cfg.optim.validate()
    t = cfg.trainer
    if t.max_steps < 0:
        raise ValueError(f"trainer.max_steps must be >= 0 (0 evaluates and exits), got {t.max_steps}")
    if t.max_steps == 0 and cfg.launcher.chain:
        raise ValueError("trainer.max_steps=0 evaluates once: set launcher.chain=0 (a chain would evaluate again)")
    for name in ("global_batch", "micro_batch", "log_every", "eval_batches"):
        if getattr(t, name) <= 0:
            raise ValueError(f"trainer.{name} must be positive, got {getattr(t, name)}")
    if t.eval_every < 0:
        raise ValueError(f"trainer.eval_every must be >= 0, got {t.eval_every}")
    if t.frozen_check_steps < 0:
        raise ValueError(f"trainer.frozen_check_steps must be >= 0 (0 disables the check), got {t.frozen_check_steps}")
    per_step = t.micro_batch * world_size
    if t.global_batch % per_step:
        raise ValueError(
            f"trainer.global_batch={t.global_batch} is not divisible by trainer.micro_batch={t.micro_batch} x "
            f"{world_size} data-parallel rank(s) = {per_step}: set trainer.global_batch to a multiple of {per_step}"
        )
    if t.init_device not in ("cpu", "device"):
        raise ValueError(f"trainer.init_device must be cpu or device, got {t.init_device!r}")
    unknown = [k for k in t.attention_kernels or [] if k not in ATTENTION_KERNELS]
    if unknown:
        raise ValueError(f"trainer.attention_kernels has {unknown}: choose from {list(ATTENTION_KERNELS)}")
    if t.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"trainer.precision must be auto, bf16 or fp32, got {t.precision!r}")
    if cfg.data.seq_len > cfg.model.max_seq_len:
        raise ValueError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}: raise the latter"
        )
    validate_parallel(cfg.parallel, world_size)
    streams = cfg.data.streams or world_size
    if streams % world_size == 0 and grad_accum_steps(cfg, world_size) % (streams // world_size):
        raise ValueError(
            f"each rank reads {streams // world_size} data streams (data.streams={streams} over {world_size} ranks) "
            f"but makes {grad_accum_steps(cfg, world_size)} micro-steps per step: make the micro-steps a multiple of "
            f"the streams per rank (trainer.global_batch / trainer.micro_batch / ranks), or change data.streams"
        )
    validate_skip_ranges(t.skip_steps)
    validate_spikes(t.spikes, t.max_consecutive_skips)
    if cfg.checkpoint.every < 0 or cfg.checkpoint.keep_last < 0:
        raise ValueError(
            f"checkpoint.every and checkpoint.keep_last must be >= 0 (0: never / keep all), got "
            f"{cfg.checkpoint.every} and {cfg.checkpoint.keep_last}"
        )
    if cfg.lr_find.enabled:
        validate_finder(cfg.lr_find)
    if cfg.logger.name not in ("none", "wandb"):
        raise ValueError(f"logger.name must be 'none' or 'wandb', got {cfg.logger.name!r}")
    if t.max_steps:  # 0 evaluates only: no schedule runs
        schedule_phases(cfg.schedule, t.max_steps)


def grad_accum_steps(cfg: TrainConfig, world_size: int = 1) -> int:
    return cfg.trainer.global_batch // (cfg.trainer.micro_batch * world_size)
