import math

import pytest
import torch
from omegaconf import OmegaConf

from models import ModelConfig, build_model, flops_per_token, num_params
from models.llama import apply_rope, rope_tables

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs" / "model"


def small(**kw) -> ModelConfig:
    base = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, vocab_size=97, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


def preset(name: str) -> ModelConfig:
    return OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(REPO_CONFIGS / f"{name}.yaml"))
    )


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": True}, {"qk_norm": True}, {"n_kv_heads": None}])
def test_causal_masking(kw):
    torch.manual_seed(0)
    model = build_model(small(**kw)).eval()
    x = torch.randint(0, 97, (2, 16))
    y = x.clone()
    y[:, 10] = (y[:, 10] + 1) % 97  # change one future token
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_gqa_equals_mha_with_repeated_kv():
    torch.manual_seed(0)
    gqa = build_model(small(n_heads=4, n_kv_heads=2)).eval()
    mha = build_model(small(n_heads=4, n_kv_heads=4)).eval()
    state = gqa.state_dict()
    hd = 16
    for i in range(2):
        for name in ("wk", "wv"):
            w = state[f"layers.{i}.attention.{name}.weight"]  # [kv * hd, dim]
            state[f"layers.{i}.attention.{name}.weight"] = (
                w.view(2, hd, -1).repeat_interleave(2, dim=0).reshape(4 * hd, -1)
            )
    mha.load_state_dict(state)
    x = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), rtol=1e-5, atol=1e-5)


def test_rope_styles_are_the_same_function_up_to_a_permutation():
    """Interleaved pairs (2i, 2i+1) equal half-split pairs (i, i + d/2) after permuting the head dimension."""
    torch.manual_seed(0)
    d = 16
    cos, sin = rope_tables(d, 10, 10000.0)
    x = torch.randn(1, 2, 10, d)
    perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])  # interleaved -> half layout
    out_i = apply_rope(x, cos, sin, "interleaved")
    out_h = apply_rope(x[..., perm], cos, sin, "half")
    torch.testing.assert_close(out_i[..., perm], out_h)
    assert not torch.allclose(out_i, apply_rope(x, cos, sin, "half"))


def test_rope_preserves_norm_and_position_zero():
    cos, sin = rope_tables(8, 4, 10000.0)
    x = torch.randn(1, 1, 4, 8)
    for style in ("half", "interleaved"):
        y = apply_rope(x, cos, sin, style)
        torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
        torch.testing.assert_close(y[:, :, 0], x[:, :, 0])


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": True}, {"qk_norm": True}, {"n_kv_heads": 1}])
def test_num_params_matches_the_built_model(kw):
    cfg = small(**kw)
    assert sum(p.numel() for p in build_model(cfg).parameters()) == num_params(cfg)


@pytest.mark.parametrize("name,expected", [("2b", 1.99e9), ("8b", 8.03e9), ("1b", 1.50e9)])
def test_preset_parameter_counts(name, expected):
    assert num_params(preset(name)) == pytest.approx(expected, rel=5e-3)


def test_flops_per_token_of_llama_1b():
    # 8.22 GFLOP per token at seq 2048 by the field notes' formula (the figure the throughput issue quotes).
    assert flops_per_token(preset("1b"), 2048) / 1e9 == pytest.approx(8.22, abs=0.005)


def test_initial_loss_is_about_ln_vocab():
    torch.manual_seed(0)
    cfg = small(vocab_size=512, dim=128, n_heads=4)
    x = torch.randint(0, 512, (4, 32))
    loss = build_model(cfg)(x[:, :-1], x[:, 1:]).item()
    assert abs(loss - math.log(512)) < 0.5


def test_meta_device_build_then_init():
    model = build_model(small(), device="meta")
    assert model.tok_embeddings.weight.is_meta
    model.to_empty(device="cpu")
    model.init_weights()
    assert torch.isfinite(model(torch.randint(0, 97, (1, 8)))).all()
    assert model.rope_cos[1, 0].item() == pytest.approx(math.cos(1.0))


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"dim": 60, "n_heads": 8}, "model.n_heads"),
        ({"n_kv_heads": 3}, "model.n_kv_heads"),
        ({"rope_style": "complex"}, "model.rope_style"),
    ],
)
def test_bad_shapes_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        build_model(small(**kw))
