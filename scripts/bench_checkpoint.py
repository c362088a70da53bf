"""Checkpoint save and load times with and without content verification, for BENCHMARKS.md:

    python scripts/bench_checkpoint.py [--model 1b] [--out /tmp/bench-ckpt] [--device cuda]

Builds the preset (configs/model/NAME.yaml) with fused AdamW, makes one update so that the optimizer holds its
moments, then times on one process: a save (DCP write, meta, rename) and the digests it records, a verification of
every file's digest, and a load into the live model and optimizer. The files are in the page cache when they are
hashed, as they are right after a save; a verification after a restart reads them from the disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from models import ModelConfig, build_model
from trainer.checkpointing import files
from trainer.checkpointing.checkpointer import CheckpointConfig, Checkpointer, restore

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "model"


def timed(fn) -> float:
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="1b")
    p.add_argument("--out", default="/tmp/bench-ckpt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cfg = ModelConfig(**yaml.safe_load((PRESETS / f"{args.model}.yaml").read_text()))
    model = build_model(cfg, device=args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.device == "cuda")
    tokens = torch.randint(0, cfg.vocab_size, (1, 257), device=args.device)
    with torch.autocast(args.device, torch.bfloat16, enabled=args.device == "cuda"):
        model(tokens[:, :-1], tokens[:, 1:]).backward()
    opt.step()
    saver = Checkpointer(CheckpointConfig(keep_last=0), out, rank=0)
    save_s = timed(lambda: saver.save(1, model, opt, {"step": 1}, {"model": {}}))
    step = out / "checkpoints" / "step-1"
    size = sum(f.stat().st_size for f in step.iterdir())
    tmp = out / "redigest"
    tmp.mkdir()
    for f in step.glob("*.distcp"):  # the digests alone, as the save made them (the files are in the page cache)
        (tmp / f.name).hardlink_to(f)
    digest_s = timed(lambda: files.write_rank_digests(tmp, 0))
    verify_s = timed(lambda: files.verify_content(step))
    load_s = timed(lambda: restore(step, model, opt))
    row = {
        "model": args.model,
        "checkpoint_gib": size / 2**30,
        "save_s": save_s,
        "digest_s": digest_s,
        "digest_share_of_save": digest_s / (save_s - digest_s),
        "verify_s": verify_s,
        "load_s": load_s,
        "verify_share_of_load": verify_s / load_s,
        "hash_gb_per_s": size / verify_s / 1e9,
    }
    print(json.dumps(row))
    print(
        f"{args.model}: checkpoint {row['checkpoint_gib']:.1f} GiB | save {save_s:.1f} s of which digests "
        f"{digest_s:.1f} s (+{100 * row['digest_share_of_save']:.1f}% over a save without them) | verify "
        f"{verify_s:.1f} s ({row['hash_gb_per_s']:.1f} GB/s) | load {load_s:.1f} s (+"
        f"{100 * row['verify_share_of_load']:.1f}% with verification)"
    )
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
