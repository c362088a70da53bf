"""End-to-end runs of the trainer on the real Shakespeare corpus, on the CPU."""

import json
import subprocess

import pytest

from trainer.config import to_train_config
from trainer.loop import fit

from ..conftest import TINY, TRAIN


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_run_loss_falls_and_metrics_file_format(compose, tmp_path, tok_cache):
    cfg = compose(
        *TINY, tok_cache, "trainer.max_steps=60", "trainer.eval_every=30", "optim.lr=3e-3", "trainer.log_every=10"
    )
    last = fit(to_train_config(cfg), tmp_path)
    rows = read_metrics(tmp_path)
    assert all("step" in r for r in rows)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 10, 20, 30, 40, 50, 60]
    for r in train_rows:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_gib"} <= r.keys()
        assert r["mfu"] is None  # no peak FLOP/s on the CPU
        assert ("eta_s" in r) == (r["step"] > 1)  # from steady steps: none on the first
    assert "time_to_first_step_s" in train_rows[0] and train_rows[0]["time_to_first_step_s"] > 0
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    assert sorted(val) == [0, 30, 60]
    assert val[60] < val[0] - 1.0, val  # the held-out loss falls clearly
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 1.0
    assert last["step"] == 60
    saved = (tmp_path / "config.yaml").read_text()
    assert "vocab_size: 512" in saved  # the resolved config, vocabulary filled in from the tokenizer


def test_gradient_accumulation_matches_one_big_batch(compose, tmp_path, tok_cache):
    """global_batch 8 as 2 x 4 or 1 x 8 is the same update (fp32, same data order)."""
    common = [
        *TINY,
        tok_cache,
        "trainer.max_steps=3",
        "trainer.log_every=1",
        "trainer.eval_every=0",
        "schedule.warmup_steps=1",
    ]
    fit(to_train_config(compose(*common, "trainer.micro_batch=4")), tmp_path / "a")
    fit(to_train_config(compose(*common, "trainer.micro_batch=8")), tmp_path / "b")
    a = [r["loss"] for r in read_metrics(tmp_path / "a") if "loss" in r]
    b = [r["loss"] for r in read_metrics(tmp_path / "b") if "loss" in r]
    assert a == pytest.approx(b, abs=1e-5)


def test_wandb_offline_run(compose, tmp_path, tok_cache, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose(
        *TINY, tok_cache, "logger=wandb", "trainer.max_steps=4", "trainer.log_every=2", "schedule.warmup_steps=1"
    )
    fit(to_train_config(cfg), tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def run_cli(*args, cwd):
    return subprocess.run([*TRAIN, *args], capture_output=True, text=True, cwd=cwd)


def test_train_cli_runs_and_prints_the_schedule(tmp_path, tok_cache):
    r = run_cli(
        *TINY, tok_cache, "trainer.max_steps=6", "trainer.log_every=3", f"trainer.run_dir={tmp_path}/run", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert "effective schedule (cosine): warmup 5 steps, stable 0 steps, decay 1 steps" in r.stdout
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.sources.0.path=/nonexistent/corpus"], "data.sources[0].path"),
        (["data.sources.0.format=json", "data.sources.0.path=EMPTYDIR"], "data.sources[0].path"),
        (
            ["data.sources.0.path=JSONFILE", "data.sources.0.format=json", "data.sources.0.text_column=body"],
            "data.sources[0].text_column",
        ),
        (["model.vocab_size=128"], "model.vocab_size=128"),
        (["model.n_heads=3"], "model.n_heads=3"),
        (["trainer.global_batch=10"], "trainer.global_batch=10"),
    ],
)
def test_bad_input_is_a_clear_error_before_training(tmp_path, tok_cache, overrides, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs.jsonl").write_text('{"text": "hello there"}\n{"text": "general kenobi"}\n')
    overrides = [
        o.replace("EMPTYDIR", str(tmp_path / "empty")).replace("JSONFILE", str(tmp_path / "docs.jsonl"))
        for o in overrides
    ]
    r = run_cli(*TINY, tok_cache, *overrides, f"trainer.run_dir={tmp_path}/run", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_fresh_start_in_a_used_run_dir_keeps_the_old_curve_apart(compose, tmp_path, tok_cache):
    common = [*TINY, tok_cache, "checkpoint=none", "trainer.max_steps=6", "trainer.log_every=2"]
    fit(to_train_config(compose(*common)), tmp_path)
    fit(to_train_config(compose(*common, "trainer.seed=1")), tmp_path)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 4, 6]
    old = list(tmp_path.glob("metrics.before-*.jsonl"))
    assert len(old) == 1 and len(old[0].read_text().splitlines()) == 5
