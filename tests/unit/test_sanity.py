"""Sanity gates (trainer/sanity.py): the step-1 loss band around ln V, and frozen-parameter detection."""

import logging
import math

import pytest
import torch
from torch import nn

from models import build_model
from trainer.sanity import FrozenCheck, digest, first_loss_band, first_loss_warning

from .test_model import small


def _fresh_loss(**kw) -> float:
    torch.manual_seed(0)
    model = build_model(small(**kw))
    x = torch.randint(0, 97, (4, 33))
    with torch.no_grad():
        return model(x[:, :-1], x[:, 1:]).item()


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": True}, {"z_loss": 1e-4}])
def test_a_fresh_model_is_inside_the_band(kw):
    loss = _fresh_loss(**kw)
    assert abs(loss - math.log(97)) < 0.5  # about ln V + var(logits)/2
    assert first_loss_warning(loss, 97, kw.get("z_loss", 0.0)) is None


@pytest.mark.parametrize("factor", [2.0, 0.5, 1 / 8])  # summed over 2 ranks; halved; divided by 8 micro-batches
def test_a_loss_off_by_a_factor_warns_with_the_figures(factor):
    loss = factor * _fresh_loss()
    text = first_loss_warning(loss, 97)
    assert text is not None
    assert f"{loss:.4f}" in text and "vocab_size=97" in text and f"{math.log(97):.4f}" in text


def test_a_too_large_init_warns():
    assert first_loss_warning(_fresh_loss(init_std=1.0), 97) is not None


def test_band_edges_and_non_finite():
    expected, tol = first_loss_band(256128)
    assert expected == pytest.approx(math.log(256128)) and tol == pytest.approx(0.25 * math.log(256128))
    assert first_loss_band(50)[1] == 1.0  # the floor of 1 nat: ln 50 / 4 is 0.98
    assert first_loss_warning(expected + 0.99 * tol, 256128) is None
    assert first_loss_warning(expected - 1.01 * tol, 256128) is not None
    for bad in (math.nan, math.inf):
        assert first_loss_warning(bad, 256128) is not None
    assert first_loss_band(1000, z_loss=1e-2)[0] == pytest.approx(math.log(1000) * (1 + 1e-2 * math.log(1000)))


def _train(model: nn.Module, steps: int, lr: float = 1e-3) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randint(0, 97, (2, 17), generator=g)
        model(x[:, :-1], x[:, 1:]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_bf16_norm_weights_are_reported_frozen_and_trained_ones_are_not(caplog):
    """The field notes' case: RMSNorm weights held in bf16 stay at exactly 1.0 (AdamW's ~1e-3 update is below half
    the bf16 spacing at 1), while every fp32 tensor moves."""
    torch.manual_seed(0)
    model = build_model(small())
    norms = {n for n, p in model.named_parameters() if n.endswith("norm.weight")}
    for name, p in model.named_parameters():
        if name in norms:
            p.data = p.data.to(torch.bfloat16)
    check = FrozenCheck.start(model, at_step=3, start_step=0, max_steps=10)
    _train(model, 3)
    with caplog.at_level(logging.WARNING, logger="trainer.sanity"):
        assert check.check(model, 3, is_main=True) == len(norms) == 5
    for name in norms:
        assert name in caplog.text
    assert "attention.wq.weight" not in caplog.text and "output.weight" not in caplog.text


def test_a_healthy_model_reports_nothing_and_requires_grad_false_is_reported(caplog):
    torch.manual_seed(0)
    model = build_model(small())
    check = FrozenCheck(model, at_step=2)
    _train(model, 2)
    with caplog.at_level(logging.WARNING, logger="trainer.sanity"):
        assert check.check(model, 2, is_main=True) == 0
    assert caplog.text == ""
    model.layers[1].ffn_norm.weight.requires_grad_(False)
    check = FrozenCheck(model, at_step=2)
    _train(model, 2)
    with caplog.at_level(logging.WARNING, logger="trainer.sanity"):
        assert check.check(model, 2, is_main=True) == 1
    assert "layers.1.ffn_norm.weight" in caplog.text and "1 of 21 parameter tensors" in caplog.text


def test_digest_sees_one_ulp_and_a_permutation():
    x = torch.randn(1000)
    y = x.clone()
    y[123] = torch.nextafter(y[123], torch.tensor(math.inf))
    assert not torch.equal(digest(x), digest(y))
    assert not torch.equal(digest(x), digest(x.flip(0)))
    assert torch.equal(digest(x), digest(x.clone()))
    big = torch.randn((1 << 22) + 5)  # more than one chunk
    bumped = big.clone()
    bumped[-1] += 1.0
    assert not torch.equal(digest(big), digest(bumped))


def test_off_resumed_or_too_short_runs_take_no_snapshot():
    model = build_model(small())
    assert FrozenCheck.start(model, 0, 0, 100) is None
    assert FrozenCheck.start(model, 100, 50, 200) is None  # resumed: the initial weights are gone
    assert FrozenCheck.start(model, 100, 0, 99) is None
    assert FrozenCheck.start(model, 100, 0, 100).due(100)
