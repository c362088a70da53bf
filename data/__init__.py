"""Data pipeline: sources -> train/val split -> tokenizer -> packed, resumable batches.

Depends only on torch, datasets and tokenizers (never on trainer/models/optim).
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer

from .config import DataConfig, SourceConfig, TokenizerConfig, validate_data_config
from .loader import RoundRobin, TokenStream
from .packing import Packer
from .prefetch import Prefetcher
from .sources import build_dataset, is_val, load_source, resolve_files
from .tokenizer import build_tokenizer, eos_id, tokenizer_vocab_size


def build_stream(
    cfg: Any, tokenizer: Tokenizer, split: str, batch_size: int, rank: int = 0, world_size: int = 1
) -> RoundRobin:
    """Batches of `split` ("train" | "val") for one rank: its own sub-streams (see DataConfig.streams), in turn."""
    validate_data_config(cfg)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) (got rank={rank}, world_size={world_size})")
    n = cfg.streams or world_size
    if n % world_size:
        raise ValueError(
            f"data.streams={n} is not a multiple of the {world_size} data-parallel ranks: set data.streams to a "
            f"multiple of {world_size} (or null for one stream per rank)"
        )
    local = [
        TokenStream(
            build_dataset(cfg, rank=s, world_size=n),
            tokenizer,
            split=split,
            batch_size=batch_size,
            seq_len=cfg.seq_len,
            eos_token=cfg.tokenizer.eos_token,
            val_fraction=cfg.val_fraction,
        )
        for s in range(rank, n, world_size)
    ]
    return RoundRobin(local, first_index=rank, step=world_size)


__all__ = [
    "DataConfig",
    "Packer",
    "Prefetcher",
    "RoundRobin",
    "SourceConfig",
    "TokenStream",
    "TokenizerConfig",
    "build_dataset",
    "build_stream",
    "build_tokenizer",
    "eos_id",
    "is_val",
    "load_source",
    "resolve_files",
    "tokenizer_vocab_size",
    "validate_data_config",
]
