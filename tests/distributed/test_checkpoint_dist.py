"""Checkpoints across ranks with gloo: resharding 2 -> 1 and 1 -> 2, preemption on one rank, asynchronous save."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from trainer import checkpointing as ckpt
from trainer.config import to_train_config
from trainer.loop import fit

from ..conftest import TINY, TRAIN
from .test_multiprocess import launch, losses, torchrun, train_under

# Two data streams: the global batch is the same on 1 and 2 ranks, so curves can be compared across a reshard.
RUN = [
    *TINY,
    "trainer.precision=fp32",
    "data.streams=2",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "schedule=constant",
    "schedule.warmup_steps=1",
]


def close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < tol


def test_fsdp_two_ranks_resumes_on_one(compose, tmp_path, tok_cache):
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=8")), tmp_path / "ref")
    run = tmp_path / "run"
    launch(
        train_under(2),
        [*RUN, tok_cache, "parallel=fsdp", "trainer.max_steps=4", "checkpoint.every=4", f"trainer.run_dir={run}"],
        tmp_path,
    )
    assert ckpt.read_meta(run / "checkpoints" / "step-4")["world_size"] == 2
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=8")), run)  # one process, plan single
    assert close(losses(run), losses(tmp_path / "ref")), (losses(run), losses(tmp_path / "ref"))


def test_one_rank_resumes_on_two_with_fsdp(compose, tmp_path, tok_cache):
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=8")), tmp_path / "ref")
    run = tmp_path / "run"
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=4", "checkpoint.every=4")), run)
    launch(
        train_under(2),
        [
            *RUN,
            tok_cache,
            "parallel=fsdp",
            "trainer.max_steps=8",
            "checkpoint.async_save=true",
            "checkpoint.every=4",
            f"trainer.run_dir={run}",
        ],
        tmp_path,
    )
    assert close(losses(run), losses(tmp_path / "ref")), (losses(run), losses(tmp_path / "ref"))
    assert ckpt.read_meta(ckpt.complete_checkpoints(run / "checkpoints")[0])["step"] == 8  # async save finalised


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_a_signal_on_one_rank_stops_all_ranks_at_one_step(tmp_path, tok_cache):
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    cmd = [
        *torchrun(2),
        "--no-python",
        *TRAIN,
        *RUN,
        tok_cache,
        "parallel=ddp",
        "trainer.max_steps=100000",
        f"trainer.run_dir={run}",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not ((run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) > 3):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    workers = _children(proc.pid)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGUSR1)  # one rank only
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "preempted by signal" in out
    saved = ckpt.complete_checkpoints(run / "checkpoints")
    assert len(saved) == 1
    assert sorted(p.name for p in saved[0].glob("rank-*.pt")) == ["rank-0.pt", "rank-1.pt"]
    last_logged = max(json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines())
    assert ckpt.read_meta(saved[0])["step"] == last_logged
