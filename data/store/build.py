"""Run the tokenization of a store: the plan, units shared over ranks and worker processes, progress, and the
manifest written last by rank 0 once every rank is done. Collectives are the caller's (a `together` callable), so
this package needs no process group of its own."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from . import format as fmt
from .fast_gpt2 import encoder
from .writer import make_manifest, make_plan, tokenize_unit, unit_done

_counters: Any = None  # (chars, tokens) shared with the parent, set in each worker
_tokenizers: dict[str, tuple[Tokenizer, Callable | None]] = {}


def _same_plan(a: dict[str, Any], b: dict[str, Any]) -> bool:
    # A touched file (new mtime, same size) does not change what is asked for: its unit is simply redone.
    def strip(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "units": [{k: v for k, v in u.items() if k not in ("mtime_ns", "ctime_ns")} for u in p["units"]]}

    return strip(a) == strip(b)


def prepare(root: Path, cfg: Any, tok: Tokenizer, dtype: str) -> dict[str, Any]:
    """Rank 0: check OUT_DIR, write tokenizer.json and plan.json (or check them against a started store)."""
    plan = make_plan(cfg, tok, dtype)
    if not plan["units"]:
        raise fmt.StoreError("data.sources resolve to no input files: point them at data")
    if (root / fmt.PLAN).is_file():
        if not _same_plan(json.loads((root / fmt.PLAN).read_text()), plan):
            raise fmt.StoreError(
                f"{root} holds a token store of other inputs or another tokenizer: choose another OUT_DIR, or delete "
                f"{root} to make it again"
            )
        if (root / fmt.MANIFEST).is_file():
            return plan  # complete: left as it is, nothing rewritten
    elif root.exists() and any(root.iterdir()) and not (root / fmt.MARKER).is_file():
        raise fmt.StoreError(f"{root} exists and is not a token store: choose a new or empty OUT_DIR")
    (root / fmt.SHARDS).mkdir(parents=True, exist_ok=True)
    (root / fmt.MARKER).touch()  # first: a kill from here on leaves a store that a rerun finishes
    tmp = root / f".{fmt.TOKENIZER}.tmp"
    tok.save(str(tmp))
    os.replace(tmp, root / fmt.TOKENIZER)
    fmt.write_json_atomic(root / fmt.PLAN, plan)  # last: the workers need the tokenizer before they see a plan
    return plan


def share(units: list[dict[str, Any]], rank: int, world_size: int) -> list[dict[str, Any]]:
    """This rank's units: the largest first, each to the least loaded rank (by bytes), the same on every rank."""
    loads, mine = [0] * world_size, []
    for unit in sorted(units, key=lambda u: (-u["size"], u["unit"])):
        r = min(range(world_size), key=lambda i: (loads[i], i))
        loads[r] += unit["size"]
        if r == rank:
            mine.append(unit)
    return mine


def _init_worker(counters: Any) -> None:
    global _counters
    _counters = counters
    os.environ["RAYON_NUM_THREADS"] = "1"  # one core per worker: parallelism comes from the processes


def _count(chars: int, tokens: int) -> None:
    with _counters[0].get_lock():
        _counters[0].value += chars
    with _counters[1].get_lock():
        _counters[1].value += tokens


def _work(args: tuple[str, dict[str, Any], dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """One unit in a worker: its record, and the seconds it took (for the speed per worker; not in the store)."""
    root, plan, unit = args
    start = time.perf_counter()
    if root not in _tokenizers:  # the store's own tokenizer, loaded once per worker (GPT-2's takes ~0.3 s)
        tok = Tokenizer.from_file(str(Path(root) / fmt.TOKENIZER))
        t = plan["tokenizer"]
        _tokenizers[root] = tok, encoder(t["config"]["kind"], t["config"]["eos_token"], t["eos_id"], tok)
    tok, fast = _tokenizers[root]
    return tokenize_unit(Path(root), plan, unit, tok, _count, fast), time.perf_counter() - start


def _progress(counters: Any, total_chars: int, done: threading.Event, show: bool) -> None:
    """A tqdm bar over input characters, with tokens/s; quiet when not shown (other ranks, no terminal)."""
    if not show:
        return
    from tqdm import tqdm

    start = time.perf_counter()
    with tqdm(total=total_chars, unit="B", unit_scale=True, desc="tokenize", file=sys.stderr) as bar:
        while not done.wait(0.5):
            bar.n = min(counters[0].value, total_chars)
            bar.set_postfix_str(f"{counters[1].value / (time.perf_counter() - start) / 1e6:.2f}M tok/s")
            bar.refresh()
        bar.n = min(counters[0].value, total_chars)
        bar.refresh()


def run_units(
    root: Path, plan: dict[str, Any], units: list[dict[str, Any]], workers: int, show: bool
) -> list[tuple[dict[str, Any], float]]:
    """Tokenize `units` over `workers` spawned processes (one thread each); returns (record, seconds) of each."""
    # A fork server that has imported this module (torch, datasets, tokenizers) forks every worker: no worker pays
    # the imports again, and none inherits a started tokenizer thread pool, as a fork of this process would.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    counters = (ctx.Value("q", 0), ctx.Value("q", 0))
    done = threading.Event()
    bar = threading.Thread(target=_progress, args=(counters, sum(u["size"] for u in units), done, show), daemon=True)
    bar.start()
    try:
        if not units:
            return []
        with _safe_path(), ctx.Pool(min(workers, len(units)), initializer=_init_worker, initargs=(counters,)) as pool:
            return list(pool.imap_unordered(_work, [(str(root), plan, u) for u in units]))
    finally:
        done.set()
        bar.join()


@contextlib.contextmanager
def _safe_path() -> Iterator[None]:
    """Start the fork server without the working directory on its sys.path. It runs as `python -c`, which puts the
    directory first: a `data/` folder there (a corpus, or a checkout of this repository) would be imported in place
    of this package, and the workers, stopped by the shadowing check, would be restarted by the pool forever."""
    old = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = old


def _alone(fn: Callable[[], Any]) -> Any:
    return fn()


def build_store(
    root: str | os.PathLike,
    cfg: Any,
    tok: Tokenizer | None,
    *,
    workers: int,
    rank: int = 0,
    world_size: int = 1,
    together: Callable[[Callable[[], Any]], Any] = _alone,
    dtype: str = "auto",
    show: bool = True,
) -> dict[str, Any]:
    """Make (or finish) the store at `root`; every rank calls it (`tok` is needed on rank 0 only: the others read
    the store's copy). `together(fn)` runs a phase on every rank and raises on all if it failed on any (the
    caller's collective), so one rank's error never leaves the others waiting. Returns what this call did."""
    root = Path(root).expanduser().resolve()
    together(lambda: rank == 0 and prepare(root, cfg, tok, fmt.token_dtype(tok.get_vocab_size(True), dtype)))
    plan = json.loads((root / fmt.PLAN).read_text())
    if (root / fmt.MANIFEST).is_file():
        return {"manifest": json.loads((root / fmt.MANIFEST).read_text()), "tokenized": 0, "reused": 0}
    mine = share(plan["units"], rank, world_size)
    todo = [u for u in mine if unit_done(root, u) is None]
    start = time.perf_counter()
    new = together(lambda: run_units(root, plan, todo, workers, show and rank == 0))
    elapsed = time.perf_counter() - start
    manifest = together(lambda: _finish(root, plan) if rank == 0 else None)
    tokens = sum(r["tokens"]["train"] + r["tokens"]["val"] for r, _ in new)
    return {
        "manifest": manifest, "tokenized": len(new), "reused": len(mine) - len(todo), "tokens": tokens,
        "seconds": elapsed, "busy_s": sum(s for _, s in new), "workers": workers,
    }  # fmt: skip


def _finish(root: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Rank 0, once every unit is done: the manifest, written last."""
    records = [unit_done(root, u) for u in plan["units"]]
    missing = [u["path"] for u, r in zip(plan["units"], records) if r is None]
    if missing:
        raise fmt.StoreError(f"{len(missing)} input(s) were not tokenized (e.g. {missing[0]}): run the command again")
    manifest = make_manifest(plan, records)
    fmt.write_json_atomic(root / fmt.MANIFEST, manifest)
    for leftover in (root / fmt.SHARDS).glob(".*.tmp"):  # a killed run's partial shards
        leftover.unlink()
    return manifest
