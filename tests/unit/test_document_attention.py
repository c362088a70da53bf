"""model.attention=document and model.positions=document: a packed sequence computes what each document computes
alone (fp32, logits and gradients), with GQA, QK-norm and both position modes; the loss leaves out the position
whose target is the next document's first token; and what cannot mask is refused before any step."""

import pytest
import torch

from models import ModelConfig, build_model
from models.documents import IGNORE, document_ids, document_positions, masked_targets

EOS = 1


def model(**kw):
    torch.manual_seed(0)
    cfg = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, vocab_size=50, max_seq_len=64, eos_id=EOS)
    cfg.update({"attention": "document", "document_kernel": "sdpa", **kw})
    return build_model(ModelConfig(**cfg)).double()


def docs(*lengths: int, seed: int = 0) -> list[torch.Tensor]:
    """Documents of these lengths, each ending in EOS (the last may be cut off without one, as in a window)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        d = torch.randint(2, 50, (n,), generator=g)
        d[-1] = EOS
        out.append(d)
    return out


def test_ids_and_positions_restart_after_every_eos():
    tokens = torch.tensor([[5, 6, EOS, 7, EOS, 8, 9]])
    assert document_ids(tokens, EOS).tolist() == [[0, 0, 0, 1, 1, 2, 2]]
    assert document_positions(tokens, EOS).tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert masked_targets(tokens, tokens, EOS).tolist() == [[5, 6, IGNORE, 7, IGNORE, 8, 9]]


@pytest.mark.parametrize("positions", ["document", "sequence"])
@pytest.mark.parametrize("shape", [dict(), dict(n_kv_heads=4), dict(qk_norm=True)], ids=["gqa", "mha", "qk_norm"])
def test_a_packed_sequence_computes_each_document_alone(positions, shape):
    m = model(positions=positions, **shape)
    parts = docs(7, 11, 5, 9)
    packed = torch.cat(parts)[None]
    weights = torch.randn(1, packed.shape[1], 50, dtype=torch.float64)  # a random function of the logits
    m.zero_grad()
    logits = m(packed)
    (logits * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    start, alone = 0, []
    for d in parts:  # each document on its own, at positions 0.. (what a model sees of it without packing)
        out = m(d[None])
        (out * weights[:, start : start + len(d)]).sum().backward()
        alone.append(out)
        start += len(d)
    torch.testing.assert_close(logits, torch.cat(alone, dim=1), atol=1e-5, rtol=0)
    for n, p in m.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=0, msg=n)


def test_without_a_boundary_it_is_causal_attention():
    tokens = torch.randint(2, 50, (2, 24))  # no EOS at all
    doc = model(positions="document")
    causal = model(attention="causal")
    torch.testing.assert_close(doc(tokens), causal(tokens), atol=1e-12, rtol=0)


def test_the_loss_counts_every_position_but_the_ones_before_a_new_document():
    m = model(loss_chunk=5)
    tokens = torch.cat(docs(6, 8, 7))[None]
    x, y = tokens[:, :-1], tokens[:, 1:]
    logits = m(x)
    keep = x != EOS
    expected = torch.nn.functional.cross_entropy(logits[keep], y[keep]).float()  # the losses are fp32
    torch.testing.assert_close(m(x, y), expected, atol=1e-6, rtol=0)  # the chunked loss
    plain = model(loss_chunk=0)
    torch.testing.assert_close(plain(x, y), expected, atol=1e-6, rtol=0)  # and the plain one
    m.zero_grad(), plain.zero_grad()
    m(x, y).backward(), plain(x, y).backward()  # the same gradients, the left-out positions contributing none
    for (n, a), b in zip(m.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0, msg=n)


def test_what_cannot_be_built_is_refused():
    with pytest.raises(ValueError, match="needs model.eos_id"):
        model(eos_id=None)
    with pytest.raises(ValueError, match="model.attention must be one of"):
        model(attention="sliding")
    torch.testing.assert_close(model(document_kernel="auto")(torch.cat(docs(5, 6))[None]),
                               model()(torch.cat(docs(5, 6))[None]))  # auto outside the trainer: sdpa  # fmt: skip
