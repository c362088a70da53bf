"""What a resume changes: the resolved config against the checkpoint's, in one list.

Changes to what is trained (the model's function, the data, the sequence length, the global batch, the optimizer)
are refused unless checkpoint.allow_changes names them. Everything else (the LR and the optimizer's other settings,
the schedule and its horizon, cadences, parallelism) is applied for real and listed. The tokenizer is judged by its
vocabulary, not by its settings (run_state.check_tokenizer): the same tokenizer is found at another path when a run
directory moves or adopts another run's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from data import uses_stores

from ..config import TrainConfig, config_from_yaml

log = logging.getLogger(__name__)

# Groups a resume may not change silently, each with the dotted keys (or key prefixes) it covers.
GUARDED = {
    "model": ("model.",),
    "tokenizer": (),  # by vocabulary (check_tokenizer); named here so that allow_changes can let it change
    "seq_len": ("data.seq_len",),
    "data": ("data.",),
    "global_batch": ("trainer.global_batch",),
    "optim": ("optim.name",),
}
# Keys that may differ freely: where the run is and how it is watched, and the settings of these checks themselves.
IGNORED = (
    "trainer.run_dir",
    "trainer.progress_bar",
    "checkpoint.load",
    "checkpoint.load_state",
    "checkpoint.allow_changes",
    "checkpoint.start_over",
    "data.allow_data_change",
    "data.streams",  # null in config.yaml, the saved layout once resumed (build_run takes it from the checkpoint)
    "data.tokenizer.",  # judged by its vocabulary instead
    "trainer.seed",  # seeds the initial weights only, which a resume does not draw
    "logger.",
    "launcher.",
    "lr_find.",
)
# Model fields that do not change the function of the weights; data fields that do not change what is read.
FREE = ("model.max_seq_len", "model.document_kernel", "model.loss_chunk", "model.init_std", "model.z_loss",
        "data.prefetch", "data.max_repeat", "optim.")  # fmt: skip


@dataclass
class Changes:
    applied: list[str]  # "optim.lr 0.001 -> 0.003"
    allowed: dict[str, list[str]]  # guarded group -> its changes, named in checkpoint.allow_changes


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


# Settings that token stores do not read at train time (the split was made by `anytrain tokenize`).
UNUSED_WITH_STORES = ("data.val_fraction", "data.shuffle_docs")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _group(key: str) -> str | None:
    if key.startswith(FREE) and not key.startswith("optim.name"):
        return None
    return next((g for g, keys in GUARDED.items() if key.startswith(keys)), None)


def compare(cfg: TrainConfig, saved_yaml: str, where: str) -> Changes:
    """The differences between `cfg` and the checkpoint's resolved config. Raises ValueError listing every guarded
    change that checkpoint.allow_changes does not name."""
    unknown = sorted(set(cfg.checkpoint.allow_changes) - set(GUARDED))
    if unknown:
        raise ValueError(f"checkpoint.allow_changes has {unknown}: choose from {list(GUARDED)}")
    try:
        saved = config_from_yaml(saved_yaml)
    except Exception as e:  # a config of another version the schema cannot take: say so, don't stop the resume
        log.warning("cannot compare the config with checkpoint %s's (%s): resuming without the list of changes", where,
                    str(e).splitlines()[0])  # fmt: skip
        return Changes([], {})
    new = _flat(OmegaConf.to_container(OmegaConf.structured(cfg)))
    old = _flat(OmegaConf.to_container(OmegaConf.structured(saved)))
    diffs = {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}
    stores = uses_stores(cfg.data) and uses_stores(saved.data)
    applied, guarded = [], {}
    for key, (a, b) in diffs.items():
        if key.startswith(IGNORED) or (stores and key in UNUSED_WITH_STORES):
            continue
        text = f"{key} {_short(a)} -> {_short(b)}"
        group = _group(key)
        if group is None:
            applied.append(text)
        else:
            guarded.setdefault(group, []).append(text)
    allowed = set(cfg.checkpoint.allow_changes)
    if cfg.data.allow_data_change:  # the token stores' own switch for the same thing
        allowed |= {"data", "seq_len"}
    refused = {g: c for g, c in guarded.items() if g not in allowed}
    if refused:
        listed = "; ".join(c for changes in refused.values() for c in changes)
        raise ValueError(
            f"the config changes what checkpoint {where} was trained with: {listed}. Resume with its values, or name "
            f"the change: checkpoint.allow_changes=[{','.join(refused)}] (with data or seq_len the data position of "
            f"text sources starts afresh, with optim the optimizer state does)"
        )
    return Changes(applied, guarded)
