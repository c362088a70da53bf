"""Which token stores a run reads and with what weight: `data.sources` entries that are stores, or a blend file
(`data.blend`), the weighted file lists clusters keep for Megatron-style blends. One corpus per line:

    # weight  path              [name]
    0.7       /lus/corpora/web  web
    0.3       books             (relative paths are relative to the blend file)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import format as fmt


@dataclass(frozen=True)
class Corpus:
    path: str
    weight: float
    name: str


def parse_blend(path: str) -> list[Corpus]:
    """Read a blend file; every problem of the file (bad lines, weights, paths) is reported at once."""
    file = Path(path).expanduser()
    if fmt.is_store(file):
        raise fmt.StoreError(
            f"data.blend={path!r} is a token store, not a blend file: use data.sources=[{{path: {path}}}]"
        )
    if not file.is_file():
        raise fmt.StoreError(f"data.blend={path!r} does not exist: give a blend file (WEIGHT PATH [NAME] per line)")
    corpora, problems, missing = [], [], []
    for n, raw in enumerate(file.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            problems.append(f"line {n} {raw.strip()!r} is not 'WEIGHT PATH [NAME]'")
            continue
        try:
            weight = float(parts[0])
        except ValueError:
            problems.append(f"line {n}: weight {parts[0]!r} is not a number")
            continue
        if not weight > 0:
            problems.append(f"line {n}: weight {parts[0]} must be > 0 (remove the line instead)")
            continue
        where = Path(parts[1]).expanduser()
        where = where if where.is_absolute() else file.parent / where
        if not fmt.is_store(where):
            missing.append(f"line {n}: {where}")
            continue
        corpora.append(Corpus(str(where.resolve()), weight, parts[2] if len(parts) == 3 else where.name))
    if missing:
        problems.append(f"{len(missing)} path(s) are not token stores ({'; '.join(missing)})")
    if problems:
        raise fmt.StoreError(
            f"blend file {file}: {'; '.join(problems)}: fix the file (make stores with `anytrain tokenize`)"
        )
    if not corpora:
        raise fmt.StoreError(f"blend file {file} lists no corpus: add lines 'WEIGHT PATH'")
    return corpora


def uses_stores(cfg: Any) -> bool:
    """Whether the data config reads token stores (a blend file, or sources that are stores)."""
    return bool(getattr(cfg, "blend", None)) or any(fmt.is_store(s.path) for s in cfg.sources if s.path)


def corpora(cfg: Any) -> list[Corpus]:
    """The stores of the config with their weights; text and store sources cannot be mixed."""
    if getattr(cfg, "blend", None):
        return parse_blend(cfg.blend)
    out = []
    not_stores = [s.path for s in cfg.sources if not fmt.is_store(s.path)]
    if not_stores:
        raise fmt.StoreError(
            f"data.sources mixes token stores with text sources ({', '.join(not_stores)}): tokenize those too "
            f"(`anytrain tokenize OUT_DIR data.sources=[...]`) and list the stores"
        )
    for s in cfg.sources:
        root = Path(s.path).expanduser().resolve()
        out.append(Corpus(str(root), float(s.weight), root.name))
    return out
