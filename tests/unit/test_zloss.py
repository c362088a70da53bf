"""z-loss (model.z_loss): the chunked and plain losses against the formula on a full logits tensor, values and
gradients, with masked targets; train mode adds it, eval mode (val_loss) does not."""

import pytest
import torch
import torch.nn.functional as F

from models import build_model, validate_model_config
from models.documents import masked_targets
from models.loss import IGNORE, chunked_cross_entropy, plain_cross_entropy

from .test_model import small

Z = 1e-2  # large enough that a wrong z term is far outside the tolerance (the term is ~0.2 here)


def formula(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, z: float) -> torch.Tensor:
    """CE + z * mean(logsumexp(logits)^2) over the counted targets, on the full logits: the definition."""
    logits = (h @ w.t()).flatten(0, 1)
    t = y.flatten()
    keep = t != IGNORE
    return F.cross_entropy(logits, t, ignore_index=IGNORE) + z * logits.logsumexp(-1)[keep].square().mean()


def _inputs(masked: bool, b=3, t=37, dim=32, vocab=101, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, dim, generator=g, requires_grad=True)
    w = (torch.randn(vocab, dim, generator=g) * 0.5).requires_grad_()  # lse well away from 0: the z term matters
    y = torch.randint(0, vocab, (b, t), generator=g)
    if masked:
        y[torch.rand(b, t, generator=g) < 0.3] = IGNORE
    return h, w, y


def _value_and_grads(fn, h, w, y):
    h.grad = w.grad = None
    loss = fn(h, w, y)
    (loss * 3.0).backward()  # a scale, as gradient accumulation applies
    return loss.detach(), h.grad.clone(), w.grad.clone()


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk", [0, 1, 16, 111, 1000])  # 0: the plain loss; 111 rows in all: one chunk
def test_value_and_gradients_match_the_formula(chunk, masked):
    h, w, y = _inputs(masked)
    ref = _value_and_grads(lambda *a: formula(*a, Z), h, w, y)
    if chunk:
        got = _value_and_grads(lambda *a: chunked_cross_entropy(*a, chunk=chunk, z_loss=Z), h, w, y)
    else:
        got = _value_and_grads(lambda *a: plain_cross_entropy(*a, z_loss=Z), h, w, y)
    without = formula(h, w, y, 0.0).detach()
    assert (ref[0] - without).item() > 1e-2  # the term is there, and much larger than the tolerance
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_evaluation_value_without_gradients_matches_the_formula():
    h, w, y = _inputs(masked=True)
    with torch.no_grad():
        got = chunked_cross_entropy(h, w, y, chunk=10, z_loss=Z)
        torch.testing.assert_close(got, formula(h, w, y, Z), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [0, 7])
def test_the_model_adds_it_in_train_mode_only_and_respects_document_masking(chunk):
    torch.manual_seed(0)
    eos = 5
    model = build_model(small(z_loss=Z, loss_chunk=chunk, attention="document", eos_id=eos))
    x = torch.randint(6, 97, (2, 33))
    x[0, 10] = x[1, 20] = x[1, 3] = eos  # three positions whose target starts another document
    tokens, targets = x[:, :-1], x[:, 1:]
    loss = model(tokens, targets)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    h = model.hidden(tokens)  # the same forward, the loss by the formula on the full logits
    ref = formula(h, model.output.weight, masked_targets(tokens, targets, eos), Z)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)
    model.eval()  # evaluation: the plain cross-entropy, comparable across z_loss settings
    with torch.no_grad():
        ce = formula(model.hidden(tokens), model.output.weight, masked_targets(tokens, targets, eos), 0.0)
        torch.testing.assert_close(model(tokens, targets), ce, rtol=1e-5, atol=1e-6)
    assert loss.item() - ce.item() > 1e-2


def test_off_by_default_and_negative_refused():
    assert small().z_loss == 0.0
    for bad in (-1e-4, float("nan")):
        with pytest.raises(ValueError, match="model.z_loss"):
            validate_model_config(small(z_loss=bad))
