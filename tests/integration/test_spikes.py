"""Spike skipping: injected spikes and NaN leave the parameters untouched; manual skips keep the data order."""

import json

import pytest
import torch

import models.llama
from trainer import distributed as env
from trainer.build import build_run
from trainer.config import to_train_config
from trainer.loop import TooManySkips, fit, train_step
from trainer.spikes import SpikeConfig, SpikeDetector

from ..conftest import TINY

RUN = [
    *TINY,
    "trainer.precision=fp32",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "schedule.warmup_steps=2",
    "trainer.spikes.warmup=4",
]


class Scaled(torch.nn.Module):
    """Wraps the model to scale its loss: the injected fault."""

    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x, y):
        return self.model(x, y) * self.factor


def snapshot(run):
    params = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in run.optimizer.state.items()}
    return params, state


def assert_same(a, b):
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
    for k in a[1]:
        for name in a[1][k]:
            assert torch.equal(a[1][k][name], b[1][k][name]), name


@pytest.mark.parametrize("optim", ["adamw", "muon", "lion"])
@pytest.mark.parametrize("factor", [100.0, float("nan")])
def test_spike_or_nan_is_skipped_and_parameters_are_bit_identical(compose, tmp_path, tok_cache, factor, optim):
    cfg = to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=20", f"optim={optim}"))
    run = build_run(cfg, tmp_path, env.Ranks(), torch.device("cpu"))
    stream = iter(run.train_stream)
    for _ in range(6):
        train_step(run, [next(stream) for _ in range(run.accum)])
    run.spikes.read()  # start counting here
    before = snapshot(run)
    model = run.model
    run.model = Scaled(model, factor)
    train_step(run, [next(stream) for _ in range(run.accum)])
    run.model = model
    assert_same(before, snapshot(run))
    assert run.spikes.read() == (1, None)
    train_step(run, [next(stream) for _ in range(run.accum)])  # a normal step updates again
    assert not torch.equal(before[0]["norm.weight"], run.model.state_dict()["norm.weight"])
    assert run.spikes.read() == (0, None)


def test_detector_statistics():
    d = SpikeDetector(SpikeConfig(window=8, threshold=3.0, warmup=4), torch.device("cpu"))
    one = torch.tensor(1.0)
    decisions = [d.decide(torch.tensor(v), one).item() for v in (5.0, 5.1, 4.9, 5.0, 5.05, 50.0, 5.0)]
    assert decisions == [0, 0, 0, 0, 0, 1, 0]
    assert d.decide(torch.tensor(float("inf")), one).item() == 1  # non-finite: always, even before warm-up
    d2 = SpikeDetector(SpikeConfig(warmup=4), torch.device("cpu"))
    assert d2.decide(torch.tensor(100.0), one).item() == 0  # no spike judgement before warm-up


def rows(path):
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines()) if r["step"] > 0}


def test_manual_skips_keep_the_data_order(compose, tmp_path, tok_cache):
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=8")), tmp_path / "plain")
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=8", "trainer.skip_steps=[[3,4]]")), tmp_path / "s")
    plain, skipped = rows(tmp_path / "plain" / "metrics.jsonl"), rows(tmp_path / "s" / "metrics.jsonl")
    assert [skipped[s]["batch_hash"] for s in range(1, 9)] == [plain[s]["batch_hash"] for s in range(1, 9)]
    assert skipped[3]["skipped"] == "manual" and "loss" not in skipped[3]
    assert skipped[5]["lr"] == plain[5]["lr"]  # the schedule advanced through the skipped steps
    assert skipped[2]["loss"] == plain[2]["loss"] and skipped[5]["loss"] != plain[5]["loss"]


def test_too_many_consecutive_skips_stop_the_run(compose, tmp_path, tok_cache, monkeypatch):
    real = models.llama.chunked_cross_entropy
    monkeypatch.setattr(models.llama, "chunked_cross_entropy", lambda *a: real(*a) * float("nan"))
    cfg = to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=20", "trainer.max_consecutive_skips=3"))
    with pytest.raises(TooManySkips, match=r"first passing the limit at step 4 \(loss nan"):
        fit(cfg, tmp_path)


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts reads of a tensor value back to the host (what `.item()` and scalar indexing do)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("optim", ["adamw", "muon", "lion"])
def test_a_training_step_never_reads_a_value_back_to_the_host(compose, tmp_path, tok_cache, optim):
    """On a GPU such a read stalls the step; the spike decision and the guarded update must not need one."""
    cfg = to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=20", f"optim={optim}"))
    run = build_run(cfg, tmp_path, env.Ranks(), torch.device("cpu"))
    stream = iter(run.train_stream)
    batches = [[next(stream) for _ in range(run.accum)] for _ in range(8)]
    with _HostReads() as spy:
        for i, b in enumerate(batches):
            loss, norm = train_step(run, b)
            run.spikes.note_limit(i + 1, 8, loss, norm)
    assert spy.reads == 0


def test_spike_statistics_survive_a_resume(compose, tmp_path, tok_cache):
    fit(to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=6", "checkpoint.every=6")), tmp_path)
    run = build_run(
        to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=9")), tmp_path, env.Ranks(), torch.device("cpu")
    )
    assert run.start_step == 6 and int(run.spikes.count) >= 4  # the window kept its accepted steps (a fresh one: 0)
