"""Sanity gates in a real run (fit in-process, tiny config): a healthy run reports nothing; a run with a frozen
parameter and a far too large init gets both warnings and frozen_params in metrics.jsonl at the check step."""

import json
import logging

from trainer import loop
from trainer.config import to_train_config
from trainer.loop import fit

from .test_checkpoint import RUN

# log_every=10 over 4 steps: the check at step 3 must force its own log line
OVERRIDES = [*RUN, "trainer.max_steps=4", "trainer.log_every=10", "trainer.frozen_check_steps=3"]


def _rows(run_dir) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if "loss" in r}


def test_a_healthy_run_reports_nothing(compose, tmp_path, tok_cache, caplog):
    with caplog.at_level(logging.WARNING, logger="trainer.sanity"):
        fit(to_train_config(compose(*OVERRIDES, tok_cache)), tmp_path)
    rows = _rows(tmp_path)
    assert sorted(rows) == [1, 3, 4] and rows[3]["frozen_params"] == 0
    assert "frozen_params" not in rows[1] and "frozen_params" not in rows[4]
    assert "trainer.sanity" not in caplog.text


def test_a_frozen_parameter_and_a_bad_init_are_reported(compose, tmp_path, tok_cache, caplog, monkeypatch):
    build = loop.build_run

    def build_with_a_frozen_norm(*args, **kwargs):
        run = build(*args, **kwargs)
        run.model.layers[1].attention_norm.weight.requires_grad_(False)  # gets no gradient: never updated
        return run

    monkeypatch.setattr(loop, "build_run", build_with_a_frozen_norm)
    with caplog.at_level(logging.WARNING, logger="trainer.sanity"):
        fit(to_train_config(compose(*OVERRIDES, tok_cache, "model.init_std=1.0")), tmp_path)
    rows = _rows(tmp_path)
    assert rows[3]["frozen_params"] == 1
    assert "1 of 21 parameter tensors are bit-identical" in caplog.text
    assert "layers.1.attention_norm.weight" in caplog.text
    assert f"step-1 loss {rows[1]['loss']:.4f} is far from ln(vocab_size=512)" in caplog.text
