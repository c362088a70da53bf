"""Each default lives in one place, its dataclass: the option files of configs/ hold only what differs from it.

Two kinds of file may pin values on purpose: model presets (a preset spells out its whole architecture, so that it
never changes when a default moves) and experiments (a study or a speedrun pins what it compares)."""

from dataclasses import asdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data.config import DataConfig
from optim import ScheduleConfig, config_class
from trainer.checkpointing import CheckpointConfig
from trainer.cluster.launcher import LauncherConfig
from trainer.config import LoggerConfig, TrainerConfig, to_train_config
from trainer.distributed.parallel import ParallelConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SCHEMAS = {
    "data": lambda stem: DataConfig(),
    "optim": lambda stem: config_class(stem)(),
    "schedule": lambda stem: ScheduleConfig(),
    "trainer": lambda stem: TrainerConfig(),
    "parallel": lambda stem: ParallelConfig(),
    "checkpoint": lambda stem: CheckpointConfig(),
    "logger": lambda stem: LoggerConfig(),
    "launcher": lambda stem: LauncherConfig(),
}
OPTION_FILES = sorted(p for group in SCHEMAS for p in (CONFIGS / group).glob("*.yaml"))


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), node


def _default(defaults: dict, dotted: str):
    node = defaults
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return KeyError
        node = node[key]
    return node


def test_every_group_but_the_model_presets_is_checked():
    groups = {p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert groups - set(SCHEMAS) == {"model", "experiment"}


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_an_option_file_repeats_no_default_of_its_dataclass(path):
    """A value equal to the dataclass default is a second home for it, and the two drift apart (they did: 200 vs
    150 steps, micro-batch 8 vs 16, lr 3e-4 vs 1e-3, checkpoints every 0 vs 100). The one exception is the field
    that names the option (name: wsd in wsd.yaml, plan: ddp in ddp.yaml)."""
    raw = OmegaConf.to_container(OmegaConf.load(path))
    raw.pop("defaults", None)
    defaults = asdict(SCHEMAS[path.parent.name](path.stem))
    repeated = [
        f"{key}: {value!r}" for key, value in _leaves(raw) if value == _default(defaults, key) and value != path.stem
    ]
    assert not repeated, f"{path.relative_to(CONFIGS)} repeats its dataclass defaults: {repeated} (delete them)"


def test_the_entry_config_sets_no_group_values():
    raw = OmegaConf.to_container(OmegaConf.load(CONFIGS / "train.yaml"))
    assert set(raw) <= {"defaults", "hydra"}, "configs/train.yaml: values belong in a dataclass or a group option"


def test_the_embedded_default_is_the_dataclass_defaults(compose):
    """`train` with no overrides runs on the dataclass defaults, except for what its default options change."""
    cfg = to_train_config(compose())
    assert cfg.trainer == TrainerConfig() and cfg.schedule == ScheduleConfig()
    assert cfg.checkpoint == CheckpointConfig() and cfg.parallel == ParallelConfig()
    assert cfg.optim == config_class("adamw")() and cfg.logger == LoggerConfig() and cfg.launcher == LauncherConfig()
    assert cfg.data.seq_len == DataConfig().seq_len and cfg.data.tokenizer == DataConfig().tokenizer
