"""Tokenize a corpus once into a token store (see format.py): one unit of work per input file, each written to
temp names and renamed, its record last, so a killed run redoes only the units it had not finished."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ..config import SourceConfig
from ..diagnose import doc_text, explained
from ..sources import is_val, load_source, resolve_files, source_format
from ..tokenizer import eos_id, tokenizer_vocab_size
from . import format as fmt
from .fast_gpt2 import Mismatch

PULL_DOCS = 512  # documents tokenised per encode_batch call
log = logging.getLogger(__name__)


def _plain_source(src: Any) -> dict[str, Any]:
    """A source's settings as a plain dict (a DictConfig or a dataclass in; picklable, JSON-able out)."""
    return {f.name: getattr(src, f.name) for f in dataclasses.fields(SourceConfig)}


def plan_units(cfg: Any) -> list[dict[str, Any]]:
    """The units of work: every local file of every source, in source then path order (a unit's number is its
    place in this list, so the same inputs always give the same shard names)."""
    units = []
    weighted = [f"data.sources[{i}]" for i, s in enumerate(cfg.sources) if float(s.weight) != 1.0]
    if weighted:
        raise fmt.StoreError(
            f"{', '.join(weighted)} have weights, which a store does not keep (it holds each input once): tokenize "
            f"each source into a store of its own and blend the stores by weight (data.sources or data.blend)"
        )
    for i, src in enumerate(cfg.sources):
        files = resolve_files(src, i)
        if files is None:
            raise fmt.StoreError(
                f"data.sources[{i}].path={src.path!r} is a hub dataset: download it to local files first (e.g. "
                f"`datasets.load_dataset(...).to_parquet(...)`), then tokenize those"
            )
        kind = source_format(src, files, i)
        for path in files:
            st = os.stat(path)
            units.append({
                "source": i, "path": os.path.abspath(path), "format": kind, "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            })  # fmt: skip
    for u, unit in enumerate(units):
        unit["unit"] = u
    return units


def make_plan(cfg: Any, tok: Tokenizer, dtype: str) -> dict[str, Any]:
    """What a store holds, decided before any token is written; a rerun must produce the same plan to resume."""
    return {
        "format_version": fmt.FORMAT_VERSION,
        "tokenizer": {
            "fingerprint": fmt.tokenizer_fingerprint(tok),
            "config": {k: getattr(cfg.tokenizer, k) for k in ("kind", "path", "vocab_size", "train_docs", "eos_token")},
            "vocab_size": tokenizer_vocab_size(tok),
            "eos_id": eos_id(tok, cfg.tokenizer.eos_token),
        },
        "dtype": dtype,
        "val_fraction": float(cfg.val_fraction),
        "sources": [_plain_source(s) for s in cfg.sources],
        "units": plan_units(cfg),
    }


def unit_done(root: Path, unit: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a finished unit, if it is there and still describes the same input file."""
    path = fmt.done_path(root, unit["unit"])
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    # ctime too: a copy that keeps size and mtime (cp -p, rsync -a) still changes it
    same = all(rec.get(k) == unit[k] for k in ("path", "size", "mtime_ns", "ctime_ns"))
    complete = same and all(
        fmt.shard_path(root, unit["unit"], s, e).is_file() for s in fmt.SPLITS for e in ("bin", "idx")
    )
    return rec if complete else None


class _SplitWriter:
    """Appends documents (+ EOS) of one split to a temp .bin and keeps their offsets; `close` renames both."""

    def __init__(self, root: Path, unit: int, split: str, dtype: str) -> None:
        self.bin, self.idx = fmt.shard_path(root, unit, split, "bin"), fmt.shard_path(root, unit, split, "idx")
        self.tmp_bin = self.bin.with_name(f".{self.bin.name}.tmp")
        self.dtype = fmt.DTYPES[dtype]
        self.file = open(self.tmp_bin, "wb")
        self.offsets = [0]

    def add(self, docs: list[list[int]], eos: int) -> int:
        if not docs:
            return 0
        ids: list[int] = []
        end = self.offsets[-1]
        for d in docs:  # list appends, then one conversion: several times faster than a generator into numpy
            ids += d
            ids.append(eos)
            end += len(d) + 1
            self.offsets.append(end)
        np.array(ids, dtype=self.dtype).tofile(self.file)
        return len(ids)

    def close(self) -> dict[str, int]:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        tmp_idx = self.idx.with_name(f".{self.idx.name}.tmp")
        with open(tmp_idx, "wb") as f:
            np.save(f, np.asarray(self.offsets, dtype=np.int64))
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.tmp_bin, self.bin)
        os.replace(tmp_idx, self.idx)
        return {"documents": len(self.offsets) - 1, "tokens": self.offsets[-1]}


def _documents(plan: dict[str, Any], unit: dict[str, Any]) -> Iterator[str]:
    src = SourceConfig(**{**plan["sources"][unit["source"]], "path": unit["path"], "format": unit["format"]})
    with explained({unit["source"]: src}):  # a decode error or a number for a text: one line naming the file
        for ex in load_source(src, unit["source"]):
            text = doc_text(ex)
            if text is not None and text.strip():  # empty documents belong to no split (as on the fly)
                yield text


def tokenize_unit(
    root: Path,
    plan: dict[str, Any],
    unit: dict[str, Any],
    tok: Tokenizer,
    progress: Callable[[int, int], None],
    fast: Callable[[list[str]], list[list[int]]] | None = None,
) -> dict[str, Any]:
    """Tokenize one input file into its train and val shards, then write its record (last). `fast` (tiktoken for
    GPT-2) is used when given; if a checked document disagrees, the unit is redone with `tok` alone."""
    exact = getattr(tok, "encode_batch_fast", tok.encode_batch)
    if fast is not None:
        try:
            return _write_unit(root, plan, unit, fast, progress)
        except Mismatch:
            log.warning("%s: the fast encoder's ids differ from the tokenizer's; using the tokenizer", unit["path"])
    return _write_unit(root, plan, unit, lambda texts: [e.ids for e in exact(texts, add_special_tokens=False)],
                       progress)  # fmt: skip


def _write_unit(
    root: Path,
    plan: dict[str, Any],
    unit: dict[str, Any],
    encode: Callable[[list[str]], list[list[int]]],
    progress: Callable[[int, int], None],
) -> dict[str, Any]:
    eos, val_fraction = plan["tokenizer"]["eos_id"], plan["val_fraction"]
    digest = fmt.file_digest(unit["path"])  # of the bytes about to be read (a later change is caught below)
    writers = {s: _SplitWriter(root, unit["unit"], s, plan["dtype"]) for s in fmt.SPLITS}
    batch: list[str] = []

    def flush() -> None:
        ids = encode(batch)
        held_out = [is_val(t, val_fraction) for t in batch]
        tokens = writers["train"].add([d for d, v in zip(ids, held_out) if not v], eos)
        tokens += writers["val"].add([d for d, v in zip(ids, held_out) if v], eos)
        progress(sum(len(t) for t in batch), tokens)
        batch.clear()

    try:
        for text in _documents(plan, unit):
            batch.append(text)
            if len(batch) >= PULL_DOCS:
                flush()
        if batch:
            flush()
    except BaseException:
        for w in writers.values():  # temp files only: the next attempt starts them again
            w.file.close()
        raise
    st = os.stat(unit["path"])
    if (st.st_size, st.st_mtime_ns) != (unit["size"], unit["mtime_ns"]):
        raise fmt.StoreError(f"{unit['path']} changed while it was tokenized: run the command again once it is final")
    counts = {s: w.close() for s, w in writers.items()}
    record = {
        **{k: unit[k] for k in ("unit", "source", "path", "size", "mtime_ns", "ctime_ns")},
        "blake2b": digest,
        "documents": {s: c["documents"] for s, c in counts.items()},
        "tokens": {s: c["tokens"] for s, c in counts.items()},
    }
    fmt.write_json_atomic(fmt.done_path(root, unit["unit"]), record)
    return record


def make_manifest(plan: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan plus every unit's record and the totals; nothing about how it was made (workers, ranks, time),
    so any way of making the same store writes the same bytes."""
    records = sorted(records, key=lambda r: r["unit"])
    inputs = [{k: r[k] for k in ("unit", "source", "path", "size", "blake2b", "documents", "tokens")} for r in records]
    manifest = {k: v for k, v in plan.items() if k != "units"}
    manifest["inputs"] = inputs
    manifest["documents"] = {s: sum(r["documents"][s] for r in records) for s in fmt.SPLITS}
    manifest["tokens"] = {s: sum(r["tokens"][s] for r in records) for s in fmt.SPLITS}
    return manifest
