"""The chunked loss gives the plain loss's value and gradients, without the full logits."""

import pytest
import torch

from models import build_model
from models.loss import ce_chunk, chunked_cross_entropy, plain_cross_entropy

from .test_model import small


def _inputs(b=3, t=37, dim=32, vocab=101, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, dim, generator=g, dtype=dtype, requires_grad=True)
    w = (torch.randn(vocab, dim, generator=g) * 0.3).to(dtype).requires_grad_()
    y = torch.randint(0, vocab, (b, t), generator=g)
    return h, w, y


def _loss_and_grads(fn, h, w, y, scale=1.0):
    h.grad = w.grad = None
    loss = fn(h, w, y)
    (loss * scale).backward()
    return loss.detach(), h.grad.clone(), w.grad.clone()


@pytest.mark.parametrize("chunk", [1, 16, 37, 111, 1000])  # 111 rows in all: uneven last chunks, one chunk
def test_fp32_value_and_gradients_match_the_plain_loss(chunk):
    h, w, y = _inputs()
    ref = _loss_and_grads(plain_cross_entropy, h, w, y, scale=3.0)
    got = _loss_and_grads(lambda *a: chunked_cross_entropy(*a, chunk=chunk), h, w, y, scale=3.0)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_stays_within_bf16_noise_of_the_plain_loss():
    h, w, y = _inputs(vocab=300, t=64)
    exact = _loss_and_grads(plain_cross_entropy, h, w, y)  # fp32: the truth both bf16 versions round
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _loss_and_grads(plain_cross_entropy, h, w, y)
        chunked = _loss_and_grads(lambda *a: chunked_cross_entropy(*a, chunk=50), h, w, y)
    assert chunked[0].dtype == torch.float32
    for e, p, c in zip(exact, plain, chunked):
        noise = (p - e).abs().max().item()  # what bf16 itself costs
        assert (c - p).abs().max().item() <= 2 * noise + 1e-6, (c - p).abs().max().item()
        assert (c - e).abs().max().item() <= 2 * noise + 1e-6


def test_evaluation_needs_no_gradient_buffers_and_gives_the_same_value():
    h, w, y = _inputs()
    with torch.no_grad():
        assert torch.allclose(chunked_cross_entropy(h, w, y, chunk=10), plain_cross_entropy(h, w, y), atol=1e-6)


def test_only_the_needed_gradient_is_computed():
    h, w, y = _inputs()
    w.requires_grad_(False)
    chunked_cross_entropy(h, w, y, chunk=10).backward()
    ref = h.grad.clone()
    h.grad = None
    plain_cross_entropy(h, w, y).backward()
    torch.testing.assert_close(ref, h.grad)


@pytest.mark.parametrize("tie", [False, True])
def test_model_loss_chunk_zero_is_the_plain_loss(tie):
    torch.manual_seed(0)
    x = torch.randint(0, 97, (2, 33))
    grads = []
    for chunk in (0, 7):
        torch.manual_seed(0)
        model = build_model(small(tie_embeddings=tie, loss_chunk=chunk))
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for name in grads[0][1]:
        torch.testing.assert_close(grads[0][1][name], grads[1][1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_compiled_chunk_matches_eager():
    logits, y = torch.randn(40, 300), torch.randint(0, 300, (40,))
    compiled = torch.compile(ce_chunk)
    for a, b in zip(compiled(logits, y, 0.25, True), ce_chunk(logits, y, 0.25, True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_gradient_scale_is_applied_in_fp32_not_rounded_to_bf16():
    """Gradient accumulation scales the loss by 1/accum; bf16 holds 1/3 as 0.3340, which would bias every gradient
    into the model by +0.2% against the plain loss."""
    h, w, y = _inputs(vocab=300, t=64)
    grads = {}
    for scale in (1.0, 1.0 / 3.0):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            grads[scale] = _loss_and_grads(lambda *a: chunked_cross_entropy(*a, chunk=50), h, w, y, scale)[1]
    ratio = grads[1.0 / 3.0] / (grads[1.0] / 3.0)
    mean = ratio[grads[1.0].abs() > 1e-6].mean().item()
    assert abs(mean - 1) < 5e-4, mean
