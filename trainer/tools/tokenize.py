"""`anytrain tokenize OUT_DIR [overrides]`: the configured data.sources, tokenized once into a token store
(data/store/), over worker processes and over the ranks of a launcher (torchrun, mpiexec, srun)."""

from __future__ import annotations

import os
import time
from typing import Any

import data

from .. import distributed
from ..config import TrainConfig

# Ranks wait for the slowest one before the manifest is written: a long wait is normal for a large corpus.
BARRIER_TIMEOUT_S = 7 * 24 * 3600.0


def default_workers() -> int:
    """One worker per core this process may use, shared with the other ranks of the node."""
    return max(1, len(os.sched_getaffinity(0)) // distributed.ranks_per_node())


def tokenize(cfg: TrainConfig, out_dir: str, workers: int | None = None, dtype: str = "auto") -> dict[str, Any]:
    """Make (or finish) the store; the result (rank 0's) has the manifest and the speed of this call."""
    if data.uses_stores(cfg.data):
        raise data.StoreError("data.sources are token stores already: give the text sources to tokenize")
    data.validate_data_config(cfg.data)
    ranks = distributed.discover_ranks()
    workers = workers or default_workers()
    if workers < 1:
        raise ValueError(f"--workers must be >= 1 (got {workers})")
    start = time.perf_counter()
    with distributed.process_group(ranks, "cpu", "gloo", BARRIER_TIMEOUT_S):
        tok = distributed.together(lambda: data.build_tokenizer(cfg.data) if ranks.is_main else None)
        result = data.build_store(
            out_dir, cfg.data, tok, workers=workers, rank=ranks.rank, world_size=ranks.world_size,
            together=distributed.together, dtype=dtype,
        )  # fmt: skip
        tokens = distributed.sum_ints_over_ranks([int(result.get("tokens", 0))])[0]
    result.update(total_s=time.perf_counter() - start, all_tokens=tokens, ranks=ranks.world_size, is_main=ranks.is_main)
    return result


def summary(result: dict[str, Any], out_dir: str) -> str:
    """The table printed at the end: per source, documents and tokens of each split; then this call's speed."""
    m = result["manifest"]
    rows = [("source", "files", "train docs", "train tokens", "val docs", "val tokens")]
    for i, src in enumerate(m["sources"]):
        ins = [r for r in m["inputs"] if r["source"] == i]
        rows.append((
            src["path"], str(len(ins)), *(f"{sum(r[k][s] for r in ins):,}" for s in ("train", "val")
                                         for k in ("documents", "tokens")),
        ))  # fmt: skip
    rows.append(("total", str(len(m["inputs"])), f"{m['documents']['train']:,}", f"{m['tokens']['train']:,}",
                 f"{m['documents']['val']:,}", f"{m['tokens']['val']:,}"))  # fmt: skip
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    done, reused, secs = result["tokenized"], result["reused"], result.get("seconds", 0.0)
    speed = result["all_tokens"] / secs if secs else 0.0
    lines.append(
        f"{out_dir}: {m['dtype']} ids, tokenizer {m['tokenizer']['fingerprint'][:12]}; this call tokenized {done} "
        f"file(s) ({reused} already done) with {result.get('workers')} worker(s) x {result['ranks']} rank(s): "
        f"{speed / 1e6:.2f}M tokens/s in {secs:.1f} s ({result['total_s']:.1f} s in all; workers busy "
        f"{result.get('busy_s', 0.0):.1f} s)"
    )
    return "\n".join(lines)
