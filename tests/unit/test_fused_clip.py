"""The gradient clip handed to fused AdamW as its grad_scale gives the update of clipping first."""

import pytest
import torch
from torch import nn

from trainer.distributed import parallel
from trainer.spikes import guarded_step, supports_grad_scale


def _model_and_grads(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    model(torch.randn(8, 16)).square().sum().mul(50.0).backward()  # a norm far above the clip
    return model


@pytest.mark.parametrize("max_norm", [0.5, 1e6])  # clipped, and not clipped
def test_fused_clip_equals_clipping_first(max_norm):
    a = _model_and_grads()
    b = _model_and_grads()  # the same seed: the same weights and gradients
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    assert supports_grad_scale(opt_b)
    skip = torch.zeros(())
    norm_a, scale_a = parallel.clip_grad_norm(a, max_norm, in_optimizer=False)
    guarded_step(opt_a, skip, scale_a)
    norm_b, scale_b = parallel.clip_grad_norm(b, max_norm, in_optimizer=True)
    guarded_step(opt_b, skip, scale_b)
    assert scale_a is None and scale_b is not None
    assert (scale_b > 1) == (max_norm < 1e6)
    assert torch.equal(norm_a, norm_b)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    assert opt_b.grad_scale is None and opt_b.found_inf is None  # cleared for the next step


def test_grad_scale_refused_by_an_optimizer_without_it():
    model = _model_and_grads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert not supports_grad_scale(opt)
    with pytest.raises(ValueError, match="does not take a grad_scale"):
        guarded_step(opt, torch.zeros(()), torch.ones(()))


def test_a_skipped_step_leaves_the_weights_with_a_grad_scale():
    model = _model_and_grads()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    _, scale = parallel.clip_grad_norm(model, 0.5, in_optimizer=True)
    guarded_step(opt, torch.ones(()), scale)
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
