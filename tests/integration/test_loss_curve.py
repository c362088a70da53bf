"""Training with the chunked loss follows the plain loss's curve within bf16 noise."""

import json

from trainer.config import to_train_config
from trainer.loop import fit

from ..conftest import TINY

RUN = [*TINY, "trainer.max_steps=12", "trainer.log_every=1", "trainer.eval_every=0", "schedule=constant"]


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_chunked_loss_curve_is_within_bf16_noise_of_the_plain_one(compose, tmp_path, tok_cache):
    curves = {}
    for name, extra in {
        "fp32": ["trainer.precision=fp32", "model.loss_chunk=0"],
        "plain": ["trainer.precision=bf16", "model.loss_chunk=0"],
        "chunked": ["trainer.precision=bf16", "model.loss_chunk=50"],  # 256 rows a micro-batch: 6 chunks
    }.items():
        fit(to_train_config(compose(*RUN, tok_cache, *extra)), tmp_path / name)
        curves[name] = _losses(tmp_path / name)
    noise = max(abs(a - b) for a, b in zip(curves["plain"], curves["fp32"]))  # what bf16 itself moves the curve
    gap = max(abs(a - b) for a, b in zip(curves["chunked"], curves["plain"]))
    assert len(curves["chunked"]) == 12 and noise > 0
    assert gap <= 2 * noise, (gap, noise, curves)
