"""A resume is honest about what changed: changes to what is trained are refused unless named, the others are
applied for real and listed, and the counters stay true."""

import logging

import pytest

from trainer import checkpointing as ckpt
from trainer.build import build_run
from trainer.config import to_train_config
from trainer.loop import fit

from .test_checkpoint import RUN, _single, rows


@pytest.fixture
def run4(compose, tmp_path, tok_cache):
    """A finished 4-step cosine run with a checkpoint at its end."""
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=4", "checkpoint.every=4")), tmp_path)
    return tmp_path


def _cfg(compose, tok_cache, *extra):
    return to_train_config(compose(*RUN, tok_cache, *extra))


@pytest.mark.parametrize(
    ("override", "group", "listed"),
    [
        ("optim=lion", "optim", "optim.name 'adamw' -> 'lion'"),
        ("data.val_fraction=0.05", "data", "data.val_fraction 0.02 -> 0.05"),
        ("data.seq_len=32", "seq_len", "data.seq_len 64 -> 32"),
        ("trainer.global_batch=16", "global_batch", "trainer.global_batch 8 -> 16"),
    ],
)
def test_a_change_to_what_is_trained_is_refused_unless_named(compose, tok_cache, run4, override, group, listed):
    with pytest.raises(ValueError, match=rf"changes what checkpoint .*step-4 was trained with: {listed}.*"
                       rf"checkpoint.allow_changes=\[{group}\]"):  # fmt: skip
        build_run(_cfg(compose, tok_cache, "trainer.max_steps=6", override), run4, *_single())


def test_another_tokenizer_is_refused_by_its_vocabulary_not_by_its_settings(compose, tok_cache, run4, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"not the one checkpoint .*step-4 was trained with.*"
                       r"checkpoint.allow_changes=\[tokenizer\]"):  # fmt: skip
        build_run(_cfg(compose, tok_cache, "trainer.max_steps=6", "data.tokenizer.train_docs=3000"), run4, *_single())
    moved = tmp_path.parent / f"{tmp_path.name}-moved"  # the same tokenizer at another path, and a moved run
    __import__("shutil").copytree(run4, moved)
    file = ["data.tokenizer.kind=file", f"data.tokenizer.path={moved / 'checkpoints' / 'step-4' / 'tokenizer.json'}"]
    assert build_run(_cfg(compose, tok_cache, "trainer.max_steps=6", *file), moved, *_single()).start_step == 4


def test_every_refused_change_is_listed_at_once(compose, tok_cache, run4):
    with pytest.raises(ValueError, match=r"optim.name .*; trainer.global_batch .*allow_changes=\[.*\]") as e:
        build_run(_cfg(compose, tok_cache, "optim=lion", "trainer.global_batch=16"), run4, *_single())
    assert (
        "optim" in str(e.value).split("allow_changes=")[1] and "global_batch" in str(e.value).split("allow_changes=")[1]
    )


def test_a_changed_lr_is_applied_and_logged(compose, tok_cache, run4, caplog):
    caplog.set_level(logging.WARNING)
    cfg = _cfg(compose, tok_cache, "trainer.max_steps=8", "optim.lr=3e-3", "schedule.name=constant",
               "schedule.warmup_steps=0")  # fmt: skip
    run = build_run(cfg, run4, *_single())
    assert run.start_step == 4
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3)  # the config's, not the checkpoint's 1e-4
    assert "resuming with changed:" in caplog.text and "optim.lr 0.001 -> 0.003" in caplog.text
    assert "LR of step 5: 0.0001 -> 0.003" in caplog.text


def test_extending_a_finished_cosine_run_says_how_the_lr_jumps(compose, tok_cache, run4, caplog):
    caplog.set_level(logging.WARNING)
    fit(_cfg(compose, tok_cache, "trainer.max_steps=8"), run4)
    assert "trainer.max_steps 4 -> 8" in caplog.text and "LR of step 5: 0.0001 -> " in caplog.text
    lrs = {s: r["lr"] for s, r in rows(run4).items()}
    assert lrs[4] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + __import__("math").cos(__import__("math").pi))))
    assert lrs[5] > lrs[4]  # the new, longer schedule, as announced


def test_an_allowed_optimizer_change_starts_its_state_afresh(compose, tok_cache, run4, caplog):
    caplog.set_level(logging.WARNING)
    run = build_run(_cfg(compose, tok_cache, "trainer.max_steps=6", "optim=lion", "checkpoint.allow_changes=[optim]"),
                    run4, *_single())  # fmt: skip
    assert run.start_step == 4 and not run.optimizer.state  # no AdamW moments loaded into Lion
    assert "optimizer state starts afresh" in caplog.text


def test_tokens_seen_stays_true_across_a_global_batch_change(compose, tok_cache, run4):
    fit(_cfg(compose, tok_cache, "trainer.max_steps=6", "trainer.global_batch=16", "checkpoint.every=6",
             "checkpoint.allow_changes=[global_batch]"), run4)  # fmt: skip
    meta = ckpt.read_meta(run4 / "checkpoints" / "step-6")
    assert meta["tokens_seen"] == 4 * 8 * 64 + 2 * 16 * 64


def test_an_unchanged_resume_lists_nothing(compose, tok_cache, run4, caplog):
    caplog.set_level(logging.WARNING)
    build_run(_cfg(compose, tok_cache, "trainer.max_steps=4", "checkpoint.every=4"), run4, *_single())
    assert "resuming with changed" not in caplog.text
