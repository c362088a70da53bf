"""`anytrain bench` measures the trainer's own step and reports every figure the throughput issue asks for."""

import json
import subprocess

import pytest

from trainer.config import to_train_config
from trainer.tools.bench import BenchOptions, bench, format_table

from ..conftest import ANYTRAIN, TINY

KEYS = {
    "tokens_per_s_per_device",
    "mfu",
    "peak_memory_gib",
    "step_time_s",
    "compile_s",
    "time_to_first_step_s",
    "data_path_tokens_per_s",
    "data_path_vs_device",
}


def test_bench_on_real_data_reports_throughput_and_the_data_path(compose, tok_cache):
    overrides = ["trainer.compile=false", "model.vocab_size=null"]  # the tokenizer's 512, not llama-1b's 128256
    cfg = to_train_config(compose("+experiment=bench", *TINY, tok_cache, *overrides))
    r = bench(cfg, BenchOptions(steps=4, warmup=2, data="real", accum=2, data_seconds=0.5, profile=1))
    assert KEYS <= r.keys()
    assert r["steps_measured"] == 4 and len(r["losses"]) == 6
    tokens_per_step = 4 * 2 * 64  # micro-batch x accum x seq_len
    assert r["tokens_per_s_per_device"] == pytest.approx(tokens_per_step / r["step_time_s"])
    assert r["data_path_tokens_per_s"] > 0 and r["data_path_vs_device"] > 0
    assert r["mfu"] is None and r["peak_memory_gib"] is None  # no peak FLOP/s or device memory on the CPU
    assert r["precision"] == "float32" and r["world_size"] == 1
    assert r["losses"][0] == pytest.approx(6.25, abs=0.3)  # ~ln(512): the step is a real training step
    assert "aten::mm" in r["profile"]  # the top operators of one profiled step
    table = format_table(r)
    assert "tokens/s per device" in table and "x one device's use" in table


def test_bench_cli_compiled_json(tmp_path, tok_cache):
    """The console path, with torch.compile of the blocks and of the loss's chunk softmax."""
    # Overrides on both sides of the options; synthetic tokens fit a model vocabulary (256) below the tokenizer's
    # (512), which is built only to time the data path.
    out = subprocess.run(
        [*ANYTRAIN, "bench", *TINY, tok_cache, "trainer.compile=true",
         "--steps", "2", "--warmup", "1", "--data-seconds", "0.3", "--json", "model.vocab_size=256"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["compile"] is True and r["compile_s"] > 0 and r["data_path_tokens_per_s"] > 0
    assert r["tokens_per_s_per_device"] > 0 and len(r["losses"]) == 3
    assert r["losses"][0] == pytest.approx(5.55, abs=0.3)  # ~ln(256)
    assert "bench: building" in out.stderr  # a sign of life before the long first step


@pytest.mark.parametrize(
    "args, says",
    [
        (["model=debug", "--data-seconds", "0"], "synthetic tokens need a model.vocab_size"),
        (["model.dimm=3"], "Could not override 'model.dimm'"),  # Hydra's own error, as one message
        (["--preset", "nope"], "experiment/nope"),
        (["--steps", "1"], "steps >= 2"),
    ],
)
def test_bench_rejects_bad_input_clearly(tmp_path, args, says):
    cmd = [*ANYTRAIN, "bench", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_warm_up_steps_stay_out_of_the_median(compose, tok_cache, monkeypatch):
    import time

    import trainer.tools.bench

    real, calls = trainer.tools.bench.train_step, []

    def slow_at_first(*args, **kwargs):  # steps 1-3 take an extra half second, like compile and autotuning
        calls.append(1)
        if len(calls) <= 3:
            time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer.tools.bench, "train_step", slow_at_first)
    overrides = ["trainer.compile=false", "model.vocab_size=512"]
    cfg = to_train_config(compose("+experiment=bench", *TINY, tok_cache, *overrides))
    r = bench(cfg, BenchOptions(steps=2, warmup=3, data_seconds=0))
    assert r["steps_measured"] == 2 and r["step_time_s"] < 0.25, r["step_time_s"]
    assert r["first_step_s"] > 0.5
