"""`anytrain bench` under torchrun: one result for the job, per-device and total throughput."""

import json
import os
import subprocess

import pytest

from ..conftest import ANYTRAIN, TINY
from .test_multiprocess import torchrun


@pytest.mark.parametrize("plan", ["ddp", "fsdp"])
def test_two_rank_bench_prints_one_result(plan, tmp_path, tok_cache):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [*torchrun(2), "--no-python", *ANYTRAIN, "bench", *TINY, tok_cache, "model.vocab_size=null",
           "trainer.compile=false", f"parallel={plan}", "--steps", "3", "--warmup", "1", "--data", "real",
           "--data-seconds", "0.3", "--json"]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1  # rank 0 reports for the job
    r = results[0]
    assert r["world_size"] == 2 and r["plan"] == plan
    assert r["tokens_per_s"] == pytest.approx(2 * r["tokens_per_s_per_device"])
