"""Checkpoints on the CPU: exact resume after SIGKILL, broken checkpoints skipped, architecture checks."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from trainer import checkpointing as ckpt
from trainer.build import build_run
from trainer.config import to_train_config
from trainer.loop import DONE, evaluate, fit
from trainer.preemption import Preemption

from ..conftest import TINY, TRAIN

RUN = [*TINY, "trainer.precision=fp32", "trainer.log_every=1", "trainer.eval_every=0", "schedule.warmup_steps=2"]


def rows(run_dir: Path) -> dict[int, dict]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            assert r["step"] not in out, f"step {r['step']} logged twice"
            out[r["step"]] = r
    return out


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    path = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        if path.exists() and any(json.loads(x).get("step", 0) >= step for x in path.read_text().splitlines() if x):
            return
        time.sleep(0.05)
    raise TimeoutError(f"step {step} never came")


def test_sigkill_twice_then_resume_equals_uninterrupted(compose, tmp_path, tok_cache):
    overrides = [*RUN, tok_cache, "trainer.max_steps=14", "checkpoint.every=4"]
    fit(to_train_config(compose(*overrides)), tmp_path / "ref")
    reference = rows(tmp_path / "ref")

    run_dir = tmp_path / "killed"
    cmd = [*TRAIN, *overrides, f"trainer.run_dir={run_dir}"]
    for kill_after in (6, 10):  # between checkpoints 4 and 8, then 8 and 12
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_step(run_dir, kill_after, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (run_dir / DONE).exists()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed at step 8" in r.stdout
    resumed = rows(run_dir)
    assert sorted(resumed) == sorted(reference)
    for step in reference:
        assert resumed[step]["loss"] == reference[step]["loss"], step  # exact, not approximate
        assert resumed[step]["batch_hash"] == reference[step]["batch_hash"], step  # the same tokens
    assert (run_dir / DONE).read_text().strip() == "14"
    # keep_last=3 (the default) and nothing half-written left behind
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-12", "step-14", "step-8"]


def test_broken_checkpoints_are_skipped_with_a_warning(compose, tmp_path, tok_cache, caplog):
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=6", "checkpoint.every=2")), tmp_path)
    root = tmp_path / "checkpoints"
    (root / "step-6" / "COMPLETE").unlink()  # a save that never finished
    shard = next((root / "step-4").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])  # a truncated shard
    assert ckpt.complete_checkpoints(root) == [root / "step-2"]
    assert "no COMPLETE marker" in caplog.text and "truncated" in caplog.text
    run = build_run(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=8")), tmp_path, *_single())
    assert run.start_step == 2


def _single():
    from trainer import distributed as env

    return env.Ranks(), torch.device("cpu")


def test_a_different_architecture_is_a_clear_error(compose, tmp_path, tok_cache):
    """Every field that differs is named at once, with the overrides that would load the checkpoint."""
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=3", "checkpoint.every=3")), tmp_path)
    cfg = to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=4", "model.n_kv_heads=4", "model.qk_norm=true"))
    with pytest.raises(ckpt.CheckpointError, match=r"model.n_kv_heads=2 but the config has 4, model.qk_norm=False.*"
                       r"add `model.n_kv_heads=2 model.qk_norm=false`"):  # fmt: skip
        fit(cfg, tmp_path)


def test_load_from_another_run_and_own_checkpoints_win(compose, tmp_path, tok_cache):
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=4", "checkpoint.every=4")), tmp_path / "a")
    _, a_state, _ = ckpt.load_model_state(tmp_path / "a" / "checkpoints" / "step-4")
    cfg = to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=3", f"checkpoint.load={tmp_path / 'a'}"))
    run = build_run(cfg, tmp_path / "b", *_single())
    assert run.start_step == 0  # load_state=model: weights only, the step starts over
    torch.testing.assert_close(run.model.state_dict()["norm.weight"], a_state["norm.weight"], rtol=0, atol=0)
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=3", "checkpoint.every=3")), tmp_path / "b")
    cfg = to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=5", f"checkpoint.load={tmp_path / 'a'}"))
    assert build_run(cfg, tmp_path / "b", *_single()).start_step == 3  # b's own step-3 beats a's step-4


def test_load_all_continues_the_step(compose, tmp_path, tok_cache):
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=4", "checkpoint.every=4")), tmp_path / "a")
    load = [f"checkpoint.load={tmp_path / 'a' / 'checkpoints' / 'step-4'}", "checkpoint.load_state=all"]
    run = build_run(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=6", *load)), tmp_path / "b", *_single())
    assert run.start_step == 4


def test_missing_load_path_is_a_clear_error(compose, tmp_path, tok_cache):
    cfg = to_train_config(compose(*RUN, tok_cache, f"checkpoint.load={tmp_path / 'nothing'}"))
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint there"):
        fit(cfg, tmp_path / "run")


def test_preemption_interrupts_evaluation(compose, tmp_path, tok_cache):
    run = build_run(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=3")), tmp_path, *_single())
    with Preemption() as p:
        assert evaluate(run, p) is not None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert p.received == signal.SIGUSR1
        assert evaluate(run, p) is None


def test_sigterm_saves_and_exits_cleanly(tmp_path, tok_cache):
    run_dir = tmp_path / "run"
    cmd = [
        *TRAIN,
        *RUN,
        tok_cache,
        "trainer.max_steps=100000",
        f"trainer.run_dir={run_dir}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(run_dir, 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "preempted by signal" in out
    saved = ckpt.complete_checkpoints(run_dir / "checkpoints")
    assert len(saved) == 1 and ckpt.read_meta(saved[0])["step"] >= 3


def test_max_steps_zero_evaluates_another_runs_full_state(compose, tmp_path, tok_cache):
    """checkpoint.load_state=all of another run is no reason to refuse an evaluation; the run's own checkpoints are."""
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=3", "checkpoint.every=3")), tmp_path / "a")
    load = [f"checkpoint.load={tmp_path / 'a'}", "checkpoint.load_state=all", "trainer.max_steps=0"]
    last = fit(to_train_config(compose(*RUN, tok_cache, *load)), tmp_path / "b")
    assert last["step"] == 3 and last["val_loss"] > 0
    with pytest.raises(ValueError, match="evaluates in a run directory of its own"):
        fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=0")), tmp_path / "a")
