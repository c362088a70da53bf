"""The LR range test: swept LRs, the suggestion, its files, and failure without success files."""

import csv
import json
import math
import subprocess

import pytest

from trainer.config import to_train_config
from trainer.loop import fit
from trainer.lr_finder import LRFinderConfig, LRFinderError, analyse, swept_lr

from ..conftest import ANYTRAIN, TINY, TRAIN

FINDER = [*TINY, "+experiment=lr_find", "lr_find.steps=60", "lr_find.init_lr=1e-5", "lr_find.max_lr=10"]


def test_analyse_finds_the_blowup_of_a_synthetic_curve():
    cfg = LRFinderConfig(steps=200, init_lr=1e-6, max_lr=1.0)
    lrs = [swept_lr(i, cfg) for i in range(200)]
    # falls until lr = 1e-2, then rises steeply
    losses = [5 - min(math.log10(lr) + 6, 4) * 0.5 + max(0.0, math.log10(lr) + 2) * 8 for lr in lrs]
    _, s = analyse(lrs, losses, cfg)
    # the suggestion is the LR of the lowest smoothed loss before the blow-up
    assert 5e-3 < s.blowup_lr < 3e-2 and 5e-3 < s.suggested_lr == s.min_loss_lr < s.blowup_lr


def test_analyse_rejects_flat_and_non_finite_curves():
    cfg = LRFinderConfig(steps=50)
    lrs = [swept_lr(i, cfg) for i in range(50)]
    with pytest.raises(LRFinderError, match="no blow-up"):
        analyse(lrs, [5.0 - i * 0.01 for i in range(50)], cfg)
    with pytest.raises(LRFinderError, match="nan"):
        analyse(lrs[:5], [5.0, 4.0, float("nan"), 3.0, 2.0], cfg)


def test_finder_on_the_debug_model(compose, tmp_path, tok_cache):
    result = fit(to_train_config(compose(*FINDER, tok_cache)), tmp_path)
    cfg = LRFinderConfig(steps=60, init_lr=1e-5, max_lr=10)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows, "no finder steps logged"
    for r in rows:  # the LR applied at every step is the swept one (the schedule did not overwrite it)
        assert r["lr"] == pytest.approx(swept_lr(r["step"] - 1, cfg), rel=1e-12)
    assert len(rows) < 60 or rows[-1]["lr"] == pytest.approx(10)  # stopped early once the loss blew up, or ran out
    assert math.isfinite(result["suggested_lr"]) and 1e-5 < result["suggested_lr"] < 10
    with open(tmp_path / "lr_find.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and set(table[0]) == {"lr", "loss", "smoothed_loss"}
    assert (tmp_path / "lr_find.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "lr_find.json").read_text())["suggested_lr"] == result["suggested_lr"]


def test_forced_divergence_fails_without_success_files(tmp_path, tok_cache):
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [
            *TRAIN,
            *FINDER,
            tok_cache,
            "lr_find.init_lr=1e4",
            "lr_find.max_lr=1e8",
            "optim.grad_clip=0",
            f"trainer.run_dir={run_dir}",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    assert "lr finder" not in r.stdout  # no suggestion printed
    assert "error:" in r.stderr
    assert not list(run_dir.glob("lr_find*"))


def test_lr_sweep_multirun_and_report(tmp_path, tok_cache):
    """`train -m +experiment=lr_find trainer.global_batch=8,16` then `anytrain lr-report`."""
    sweep = tmp_path / "sweep"
    r = subprocess.run(
        [
            *TRAIN,
            "-m",
            *FINDER,
            tok_cache,
            "lr_find.steps=30",
            "trainer.global_batch=8,16",
            f"trainer.run_dir={sweep}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([*ANYTRAIN, "lr-report", str(sweep)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    table = [line for line in r.stdout.splitlines() if line.startswith("| 0") or line.startswith("| 1")]
    assert len(table) == 2 and "| 8 |" in table[0] and "| 16 |" in table[1]
    assert (sweep / "lr_report.png").stat().st_size > 10_000 and (sweep / "lr_report.md").exists()
