"""Every optimizer trains the tiny model on Shakespeare and resumes from a checkpoint exactly (fp32, CPU)."""

import json

import pytest

from trainer.config import to_train_config
from trainer.loop import fit

from ..conftest import TINY

# A constant LR after one warmup step: the schedule does not depend on max_steps, so a run stopped at step 10 and
# continued to 20 must retrace the uninterrupted one bit for bit. Each optimizer at its own LR (train.yaml's debug
# tune sets optim.lr for whatever optimizer is chosen).
COMMON = [
    *TINY,
    "trainer.precision=fp32",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "schedule=constant",
    "schedule.warmup_steps=1",
    "checkpoint.every=10",
]
LRS = {"adamw": ["optim.lr=2e-3"], "muon": ["optim.lr=2e-3", "optim.muon_lr=0.02"], "lion": ["optim.lr=1e-3"]}


def curve(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize("name", ["adamw", "muon", "lion"])
def test_optimizer_trains_and_resumes_exactly(name, compose, tmp_path, tok_cache):
    overrides = [*COMMON, tok_cache, f"optim={name}", *LRS[name]]
    fit(to_train_config(compose(*overrides, "trainer.max_steps=20")), tmp_path / "a")
    whole = curve(tmp_path / "a")
    assert sorted(whole) == list(range(1, 21))
    assert whole[20] < whole[1] - 0.4, whole  # the loss falls clearly in 20 steps

    b = tmp_path / "b"
    fit(to_train_config(compose(*overrides, "trainer.max_steps=10")), b)
    assert (b / "checkpoints" / "step-10").is_dir()
    fit(to_train_config(compose(*overrides, "trainer.max_steps=20")), b)  # resumes from step-10
    assert curve(b) == whole  # identical losses at every step, before and after the resume
