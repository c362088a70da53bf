"""`train` on bad input: exit 2 and one line on stderr that names the problem and the fix, no traceback."""

import json
import os
import subprocess

import pytest
import torch

from ..conftest import TINY, TRAIN

LAUNCHER = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_", "PMI_", "OMPI_", "SLURM_")


def _train(tmp_path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER)}
    return subprocess.run(
        [*TRAIN, *TINY, "trainer.max_steps=10", f"trainer.run_dir={tmp_path}/run", *overrides],
        capture_output=True, text=True, cwd=tmp_path, env={**clean, **(env or {})}, timeout=120,
    )  # fmt: skip


def _one_line(r: subprocess.CompletedProcess, start: str) -> None:
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(start) and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("env", "start"),
    [
        ({"WORLD_SIZE": "2"}, "error: WORLD_SIZE=2 is set but RANK is not"),
        (
            {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"},
            "error (rank 0): MASTER_PORT='http' is not a TCP port",
        ),
    ],
)
def test_broken_launcher_variables(tmp_path, env, start):
    _one_line(_train(tmp_path, env=env), start)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it(tmp_path, tok_cache):
    _one_line(_train(tmp_path, tok_cache, "trainer.device=cuda"), "error: trainer.device='cuda' asks for cuda, but")


def test_a_number_for_a_text_and_a_hub_dataset_offline(tmp_path):
    rows = [{"text": f"document {i} about nothing much"} for i in range(30)]
    rows[4] = {"text": 3.5}
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = f"data.tokenizer.cache_dir={tmp_path}/tok"
    r = _train(tmp_path, cache, f"data.sources=[{{path: {tmp_path}/c.jsonl}}]")
    _one_line(r, f"error: data.sources[0]: {tmp_path}/c.jsonl line 5: `text` is a float (3.5), not a string")
    r = _train(tmp_path, cache, "data.sources=[{path: nobody-here/no-such-corpus}]", env={"HF_HUB_OFFLINE": "1"})
    _one_line(r, "error: data.sources[0].path='nobody-here/no-such-corpus' is a Hugging Face Hub dataset that cannot")
