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
from .store import StoreError, StoreStream, build_store, corpora, uses_stores
from .tokenizer import build_tokenizer, eos_id, tokenizer_vocab_size


def build_stream(
    cfg: Any, tokenizer: Tokenizer, split: str, batch_size: int, rank: int = 0, world_size: int = 1
) -> RoundRobin | StoreStream:
    """Batches of `split` ("train" | "val") for one rank. Token stores: this rank's share of the global sample
    sequence (data/store/stream.py). Text: its own sub-streams (see DataConfig.streams), in turn."""
    validate_data_config(cfg)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) (got rank={rank}, world_size={world_size})")
    if uses_stores(cfg):
        if cfg.streams is not None:
            raise ValueError(
                f"data.streams={cfg.streams} applies to text sources; token stores are read by global sample "
                f"position on any world size: remove data.streams"
            )
        return StoreStream(
            corpora(cfg), split=split, seq_len=cfg.seq_len, batch_size=batch_size, seed=cfg.seed,
            eos_id=eos_id(tokenizer, cfg.tokenizer.eos_token), vocab_size=tokenizer_vocab_size(tokenizer),
            rank=rank, world_size=world_size, allow_change=cfg.allow_data_change,
        )  # fmt: skip
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
            shuffle_docs=cfg.shuffle_docs,
            seed=cfg.seed * 1_000_003 + s,
            announce=s == 0,
            sources=cfg.sources,
        )
        for s in range(rank, n, world_size)
    ]
    return RoundRobin(local, first_index=rank, step=world_size)


def merge_rank_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One data position from every rank's saved one, for a stream of any world size: stores share one global
    position; text streams are keyed by global stream index."""
    if states and states[0].get("kind") == "store":
        if len({s["samples"] for s in states}) != 1:
            raise ValueError("the checkpoint's ranks stopped at different data positions: it is damaged")
        return states[0]
    if any("streams" not in s for s in states):
        raise ValueError("the checkpoint's data position cannot be read: resume with the data it was saved with")
    return {"next": 0, "streams": {k: v for s in states for k, v in s["streams"].items()}}


__all__ = [
    "DataConfig",
    "Packer",
    "Prefetcher",
    "RoundRobin",
    "SourceConfig",
    "StoreError",
    "StoreStream",
    "TokenStream",
    "TokenizerConfig",
    "build_dataset",
    "build_store",
    "build_stream",
    "build_tokenizer",
    "eos_id",
    "is_val",
    "load_source",
    "merge_rank_states",
    "resolve_files",
    "tokenizer_vocab_size",
    "uses_stores",
    "validate_data_config",
]
