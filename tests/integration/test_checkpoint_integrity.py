"""Checkpoints that cannot poison a run: content digests checked before every load, nothing unpickled, no NaN saved,
the newest healthy checkpoint never pruned, a full disk said in one line."""

import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import trainer.loop as loop
from trainer import checkpointing as ckpt
from trainer.build import build_run
from trainer.checkpointing import digests
from trainer.checkpointing.checkpointer import CheckpointConfig, Checkpointer, DiskFull, PoisonedWeights
from trainer.config import to_train_config
from trainer.loop import fit

from ..conftest import ANYTRAIN
from .test_checkpoint import RUN, _single, rows


def _train(compose, tok_cache, run_dir: Path, *extra: str) -> dict:
    return fit(to_train_config(compose(*RUN, tok_cache, *extra)), run_dir)


def _flip(path: Path, offset: int | None = None, n: int = 16) -> None:
    """Overwrite n bytes in place (same size): what a bad disk or a stray write does."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at : at + n] = bytes(255 - b for b in data[at : at + n])
    path.write_bytes(bytes(data))


def _redigest(step_dir: Path) -> None:
    """Record the current files' digests, as a crafted checkpoint would, so that only the loading path is tested."""
    meta = ckpt.read_meta(step_dir)
    meta["files"] = digests.digest_files(sorted(step_dir / n for n in meta["files"]))
    (step_dir / "meta.json").write_text(json.dumps(meta))


class Evil:
    """Unpickling this creates a marker file: the proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def two_checkpoints(compose, tmp_path, tok_cache):
    _train(compose, tok_cache, tmp_path, "trainer.max_steps=4", "checkpoint.every=2")
    return tmp_path, tmp_path / "checkpoints"


@pytest.mark.parametrize("name", ["__0_0.distcp", "rank-0.pt", ".metadata", "tokenizer.json"])
def test_a_same_size_corruption_falls_back_to_the_previous_checkpoint(
    compose, tok_cache, two_checkpoints, caplog, name
):
    run_dir, root = two_checkpoints
    _flip(root / "step-4" / name, n=16 if name.endswith("distcp") else 1)
    assert ckpt.verify(root / "step-4") is None  # sizes alone see nothing
    run = build_run(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=6")), run_dir, *_single())
    assert run.start_step == 2
    assert f"skipping checkpoint {root / 'step-4'}: file {name} does not match the digest" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match=f"file {name} does not match the digest"):
        ckpt.load_model_state(root / "step-4")


def test_export_takes_the_newest_checkpoint_that_verifies(two_checkpoints, tmp_path):
    run_dir, root = two_checkpoints
    _flip(root / "step-4" / "__0_0.distcp")
    r = subprocess.run([*ANYTRAIN, "export-hf", str(root / "step-4"), str(tmp_path / "hf4")], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 2 and "__0_0.distcp does not match the digest" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "hf4").exists()
    r = subprocess.run([*ANYTRAIN, "export-hf", str(run_dir), str(tmp_path / "hf")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "skipping checkpoint" in r.stderr
    provenance = json.loads((tmp_path / "hf" / "anytrain_provenance.json").read_text())
    assert provenance["step"] == 2


def test_no_verified_checkpoint_refuses_to_start_until_asked(compose, tok_cache, two_checkpoints):
    run_dir, root = two_checkpoints
    for step in (2, 4):
        _flip(root / f"step-{step}" / "__0_0.distcp")
    cfg = to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=6"))
    with pytest.raises(ckpt.CheckpointError, match=r"holds checkpoints \(step-2, step-4\) but none verifies.*"
                       r"checkpoint.start_over=true"):  # fmt: skip
        fit(cfg, run_dir)
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-4"]  # untouched
    run = build_run(to_train_config(compose(*RUN, tok_cache, "checkpoint.start_over=true")), run_dir, *_single())
    assert run.start_step == 0
    aside = [p for p in run_dir.iterdir() if p.name.startswith("checkpoints.broken-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["step-2", "step-4"]


def test_a_crafted_metadata_never_runs_code(compose, tok_cache, two_checkpoints, tmp_path):
    run_dir, root = two_checkpoints
    marker = tmp_path / "pwned"
    for step in (2, 4):
        (root / f"step-{step}" / ".metadata").write_bytes(pickle.dumps(Evil(marker)))
        _redigest(root / f"step-{step}")
    r = subprocess.run([*ANYTRAIN, "export-hf", str(root / "step-4"), str(tmp_path / "hf")], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 2 and "refused" in r.stderr and "posix.system" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        build_run(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=6")), run_dir, *_single())
    assert not marker.exists()


def test_a_crafted_non_tensor_item_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    dcp.save({"w": torch.ones(3), "x": Evil(marker)}, checkpoint_id=str(tmp_path / "c"), no_dist=True)
    assert not marker.exists()
    state = {"w": torch.zeros(3), "x": None}
    with pytest.raises(ckpt.CheckpointError, match=r"item x is not plain data \(unsupported GLOBAL posix.system"):
        ckpt.files.load_dcp(state, tmp_path / "c", no_dist=True)
    assert not marker.exists()
    dcp.save({"w": torch.ones(3), "x": {"lr": 0.1, "betas": (0.9, 0.95)}}, checkpoint_id=str(tmp_path / "d"),
             no_dist=True)  # fmt: skip
    state = {"w": torch.zeros(3), "x": {"lr": None, "betas": None}}
    ckpt.files.load_dcp(state, tmp_path / "d", no_dist=True)  # plain data loads
    assert state["x"] == {"lr": 0.1, "betas": (0.9, 0.95)} and torch.equal(state["w"], torch.ones(3))


def test_nan_weights_are_not_saved_and_the_newest_healthy_checkpoint_is_named(compose, tok_cache, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    real = loop.train_step

    def poisoned(run, batches, schedule=True):  # a weight goes NaN during step 4, as a bad update would make it
        out = real(run, batches, schedule)
        if run.scheduler.last_epoch == 4:
            with torch.no_grad():
                next(run.model.parameters()).view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(loop, "train_step", poisoned)
    with pytest.raises(PoisonedWeights, match=r"NaN or Inf at step 4: not saved; the newest healthy checkpoint is "
                       r".*step-3 \(step 3\)"):  # fmt: skip
        _train(compose, tok_cache, tmp_path, "trainer.max_steps=8", "checkpoint.every=1", "checkpoint.keep_last=3")
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-1", "step-2", "step-3"]
    _, state, _ = ckpt.load_model_state(root / "step-3")
    assert all(torch.isfinite(v).all() for v in state.values())


def test_pruning_keeps_the_newest_healthy_checkpoint(tmp_path):
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    saver = Checkpointer(CheckpointConfig(keep_last=2), tmp_path, rank=0)
    for step, healthy in [(1, True), (2, True), (3, False), (4, False), (5, False)]:
        saver.save(step, model, optimizer, {"step": step}, {"healthy": healthy})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-2", "step-4", "step-5"]  # the two newest, and step-2: the newest saved healthy


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_stays(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        model = torch.nn.Linear(256, 256)  # 0.25 MiB of weights, 0.75 MiB with AdamW's state
        optimizer = torch.optim.AdamW(model.parameters())
        model(torch.randn(2, 256)).sum().backward()
        optimizer.step()
        saver = Checkpointer(CheckpointConfig(keep_last=0), mount, rank=0)
        saver.save(1, model, optimizer, {"step": 1}, {})
        full = r"no space left on the device of .* while saving step 2: a checkpoint needs about 0.00 GiB and 0.00 GiB"
        with pytest.raises(DiskFull, match=full + r" are free \(the previous checkpoint .*step-1 is intact"):
            saver.save(2, model, optimizer, {"step": 2}, {})
        assert sorted(p.name for p in (mount / "checkpoints").iterdir()) == ["step-1"]  # the partial save is gone
        assert ckpt.files.verify_content(mount / "checkpoints" / "step-1") is None
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_sigint_saves_and_exits_like_sigterm(tmp_path, tok_cache):
    import signal

    from ..conftest import TRAIN
    from .test_checkpoint import wait_for_step

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*TRAIN, *RUN, tok_cache, "trainer.max_steps=100000", f"trainer.run_dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_step(run_dir, 3, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "preempted by signal 2" in out and "Traceback" not in err
    saved = ckpt.complete_checkpoints(run_dir / "checkpoints")
    assert len(saved) == 1 and ckpt.read_meta(saved[0])["step"] >= 3


def test_an_evaluation_cut_short_is_redone_after_the_resume(compose, tok_cache, tmp_path, monkeypatch):
    import signal

    real, calls = loop.evaluate, []

    def preempted_during_eval(run, preemption=None):
        if preemption is not None:
            calls.append(1)
            if len(calls) == 2:  # the evaluation of step 4: the scheduler's SIGTERM arrives during it
                os.kill(os.getpid(), signal.SIGTERM)
        return real(run, preemption)

    monkeypatch.setattr(loop, "evaluate", preempted_during_eval)
    extra = ["trainer.eval_every=2", "checkpoint.every=100"]
    assert _train(compose, tok_cache, tmp_path, "trainer.max_steps=8", *extra)["preempted"]
    assert ckpt.read_meta(tmp_path / "checkpoints" / "step-4")["eval_pending"]
    monkeypatch.setattr(loop, "evaluate", real)
    _train(compose, tok_cache, tmp_path, "trainer.max_steps=8", *extra)
    vals = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in vals if "val_loss" in r) == [0, 2, 4, 6, 8]
    assert sorted(rows(tmp_path)) == list(range(1, 9))


def test_a_file_digest_is_the_hash_of_its_chunk_hashes(tmp_path):
    """The digest of a file equals the one of its bytes, chunk by chunk, across a chunk border."""
    f = tmp_path / "f"
    f.write_bytes(os.urandom(digests.CHUNK + 123))
    got = digests.digest_files([f])["f"]
    import hashlib

    data = f.read_bytes()
    parts = [hashlib.sha256(data[i : i + digests.CHUNK]).digest() for i in range(0, len(data), digests.CHUNK)]
    assert got == {"size": len(data), "sha256": hashlib.sha256(b"".join(parts)).hexdigest()}
