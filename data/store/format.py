"""The on-disk layout of a token store, its manifest, and the errors that name a bad store.

A store is a directory written by `anytrain tokenize`:

    .anytrain-store               a marker, written first: this directory is a token store (complete or not)
    plan.json                     what is being tokenized (inputs, tokenizer fingerprint): written first
    tokenizer.json                the tokenizer the ids belong to
    shards/UNIT.SPLIT.bin         token ids of one input unit's documents, each followed by EOS (uint16 | uint32)
    shards/UNIT.SPLIT.idx         int64 document offsets into the .bin (n_docs + 1 values, from 0), numpy .npy
    shards/UNIT.done.json         that unit's record (input size, content hash, counts): written after its shards
    manifest.json                 everything above, summed up: written LAST, so its presence means "complete"

SPLIT is train or val, chosen per document by the same stable hash as the on-the-fly path (sources.is_val).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PLAN = "plan.json"
MARKER = ".anytrain-store"  # a corpus directory may hold its own manifest.json: only this marks a store
TOKENIZER = "tokenizer.json"
SHARDS = "shards"
SPLITS = ("train", "val")
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


class StoreError(ValueError):
    """A token store that cannot be used as it is; the message names the file and the fix."""


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """A digest of everything that decides the ids (model, merges, normalizer, added tokens), key order aside."""
    canonical = json.dumps(json.loads(tok.to_str()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def token_dtype(vocab_size: int, wanted: str = "auto") -> str:
    """uint16 when every id fits, else uint32; an explicit uint16 that cannot hold the vocabulary is an error."""
    if wanted not in ("auto", *DTYPES):
        raise StoreError(f"--dtype={wanted!r} is not one of auto, uint16, uint32")
    if wanted == "uint16" and vocab_size > 1 << 16:
        raise StoreError(
            f"the tokenizer has {vocab_size} ids, more than a uint16 store holds (65536): use --dtype uint32 (or auto)"
        )
    if wanted != "auto":
        return wanted
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def file_digest(path: str | Path) -> str:
    """blake2b of a file's bytes (about 1 GB/s: small next to tokenizing it)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def shard_path(root: Path, unit: int, split: str, ext: str) -> Path:
    return root / SHARDS / f"{unit:06d}.{split}.{ext}"


def done_path(root: Path, unit: int) -> Path:
    return root / SHARDS / f"{unit:06d}.done.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temp file beside `path`, fsync, rename: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_store(path: str | os.PathLike) -> bool:
    """A directory that `anytrain tokenize` wrote (complete or not)."""
    p = Path(path).expanduser()
    return (p / MARKER).is_file()


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete store, checked for version; one-line errors for incomplete or foreign stores."""
    root = Path(path).expanduser()
    manifest = root / MANIFEST
    if not manifest.is_file() or not (root / MARKER).is_file():
        if (root / MARKER).is_file():
            raise StoreError(
                f"{root} is an unfinished token store (no {MANIFEST}: its `anytrain tokenize` was stopped): run the "
                f"same tokenize command again to complete it"
            )
        raise StoreError(f"{root} is not a token store (no {MANIFEST}): make one with `anytrain tokenize {root}`")
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StoreError(f"{manifest} cannot be read ({e}): tokenize the store again") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"{manifest} has format_version={meta.get('format_version')!r}, this anytrain reads {FORMAT_VERSION}: "
            f"tokenize the store again with this version"
        )
    if meta["documents"]["train"] == 0:
        raise StoreError(f"{manifest}: the store holds no training documents; tokenize a corpus that has text")
    return meta
