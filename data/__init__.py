"""Data pipeline: sources -> train/val split -> tokenizer -> packed, resumable batches.

Depends only on torch, datasets and tokenizers (never on trainer/models/optim).
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer

from .config import DataConfig, SourceConfig, TokenizerConfig, validate_data_config
from .loader import TokenStream
from .packing import Packer
from .sources import build_dataset, is_val, load_source, resolve_files
from .tokenizer import build_tokenizer, eos_id, tokenizer_vocab_size


def build_stream(
    cfg: Any, tokenizer: Tokenizer, split: str, batch_size: int, rank: int = 0, world_size: int = 1
) -> TokenStream:
    """Batches of `split` ("train" | "val") for one rank; each rank reads its own share of every source."""
    validate_data_config(cfg)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) (got rank={rank}, world_size={world_size})")
    return TokenStream(
        build_dataset(cfg, rank=rank, world_size=world_size),
        tokenizer,
        split=split,
        batch_size=batch_size,
        seq_len=cfg.seq_len,
        eos_token=cfg.tokenizer.eos_token,
        val_fraction=cfg.val_fraction,
    )


__all__ = [
    "DataConfig",
    "Packer",
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
