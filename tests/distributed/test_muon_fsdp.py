"""Muon under FSDP2 on 2 gloo processes: each hidden matrix's update is all-gathered, orthogonalised on every rank
and sliced back; the curve equals one process's, also across a checkpoint resume (DTensor momentum through DCP)."""

from trainer.config import to_train_config
from trainer.loop import fit

from .test_multiprocess import PARITY, launch, losses, train_under

# Constant LR so that a run stopped at step 5 and resumed to 10 follows the same schedule.
MUON = [*PARITY, "optim=muon", "optim.lr=2e-3", "schedule=constant", "schedule.warmup_steps=1"]


def test_fsdp_muon_matches_one_process_and_resumes(compose, tmp_path, tok_cache):
    fit(to_train_config(compose(*MUON, tok_cache)), tmp_path / "single")
    reference = losses(tmp_path / "single")
    fsdp = [*MUON, tok_cache, "parallel=fsdp", f"trainer.run_dir={tmp_path}/fsdp"]
    launch(train_under(2), [*fsdp, "trainer.max_steps=5", "checkpoint.every=5"], tmp_path)
    assert (tmp_path / "fsdp" / "checkpoints" / "step-5").is_dir()
    launch(train_under(2), fsdp, tmp_path)  # resumes from step-5 up to PARITY's max_steps
    curve = losses(tmp_path / "fsdp")
    assert len(curve) == len(reference) == 10
    assert max(abs(a - b) for a, b in zip(curve, reference)) < 1e-5, (curve, reference)
    assert curve[-1] < curve[0] - 0.05
