import pytest
import torch

from models import ModelConfig, build_model
from optim import AdamWConfig, build_optimizer, param_groups


def model(tied: bool):
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, ffn_hidden=64, vocab_size=50, tie_embeddings=tied, qk_norm=True)
    return build_model(cfg)


@pytest.mark.parametrize("tied", [False, True])
def test_no_decay_for_norms_and_embeddings(tied):
    m = model(tied)
    decay, no_decay = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert "tok_embeddings.weight" in kept and not any("norm" in n for n in decayed)
    assert "layers.0.attention.wq.weight" in decayed
    assert ("output.weight" in decayed) != tied  # a tied head is the embedding table
    assert len(decayed) + len(kept) == len(list(m.parameters()))


def test_adamw_groups_and_errors():
    opt = build_optimizer(AdamWConfig(lr=1e-3, weight_decay=0.05), model(False))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    with pytest.raises(ValueError, match="optim.betas"):
        build_optimizer(AdamWConfig(betas=[0.9, 1.5]), model(False))
