"""Checkpoints: the file layout and its checks (files), saving and loading them on every rank (checkpointer), and
the run state that goes with them and resume discovery (run_state)."""

from .checkpointer import CheckpointConfig, Checkpointer, restore
from .files import (
    CHECKPOINTS,
    COMPLETE,
    META,
    TOKENIZER,
    CheckpointError,
    check_architecture,
    complete_checkpoints,
    load_model_state,
    load_rank_states,
    publish,
    read_meta,
    resolve_load_path,
    step_of,
    verify,
    write_model_checkpoint,
)

__all__ = [
    "CHECKPOINTS",
    "COMPLETE",
    "META",
    "TOKENIZER",
    "CheckpointConfig",
    "CheckpointError",
    "Checkpointer",
    "check_architecture",
    "complete_checkpoints",
    "load_model_state",
    "load_rank_states",
    "publish",
    "read_meta",
    "resolve_load_path",
    "restore",
    "step_of",
    "verify",
    "write_model_checkpoint",
]
