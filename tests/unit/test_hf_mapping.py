"""models/hf.py: names, the RoPE permutation and config dicts, without transformers."""

import pytest
import torch

from models import ModelConfig, build_model, hf
from models.llama import apply_rope


def cfg_of(**kw) -> ModelConfig:
    base = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, vocab_size=100, max_seq_len=32)
    return ModelConfig(**{**base, **kw})


def test_permutation_turns_interleaved_rope_into_rotate_half():
    """Rotating permuted vectors the rotate_half way == rotating the originals the interleaved way, permuted."""
    head_dim, t = 16, 10
    perm = hf.interleaved_to_half(head_dim)
    assert sorted(perm.tolist()) == list(range(head_dim))
    assert perm[:4].tolist() == [0, 2, 4, 6] and perm[head_dim // 2 :][:2].tolist() == [1, 3]
    angles = torch.outer(torch.arange(t, dtype=torch.float32), torch.rand(head_dim // 2))
    x = torch.randn(2, 3, t, head_dim)
    half = apply_rope(x[..., perm], angles.cos(), angles.sin(), "half")
    inter = apply_rope(x, angles.cos(), angles.sin(), "interleaved")[..., perm]
    torch.testing.assert_close(half, inter)
    assert not torch.allclose(apply_rope(x, angles.cos(), angles.sin(), "half"), inter)  # the permutation matters


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": True}, {"qk_norm": True}, {"n_kv_heads": None}])
def test_name_map_covers_every_parameter(kw):
    cfg = cfg_of(**kw)
    names = hf.name_map(cfg)
    params = set(build_model(cfg, device="meta").state_dict())
    expected = params - ({"output.weight"} if cfg.tie_embeddings else set())
    assert set(names) == expected
    assert len(set(names.values())) == len(names)  # no two of ours land on one HF name
    assert ("lm_head.weight" in names.values()) == (not cfg.tie_embeddings)


@pytest.mark.parametrize("kw", [{"rope_style": "interleaved"}, {"rope_style": "interleaved", "qk_norm": True}, {}])
def test_state_round_trip_is_exact_and_permutes_only_q_k(kw):
    cfg = cfg_of(**kw)
    state = {k: torch.randn(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}
    out = hf.to_hf_state(state, cfg)
    q = out["model.layers.0.self_attn.q_proj.weight"]
    permuted = cfg.rope_style == "interleaved"
    assert torch.equal(q, state["layers.0.attention.wq.weight"]) != permuted
    assert torch.equal(out["model.layers.1.self_attn.v_proj.weight"], state["layers.1.attention.wv.weight"])
    assert torch.equal(out["model.layers.1.mlp.gate_proj.weight"], state["layers.1.feed_forward.w1.weight"])
    back = hf.from_hf_state(out, cfg)
    assert back.keys() == state.keys()
    for k in state:
        assert torch.equal(back[k], state[k]), k


def test_tied_state_checks_and_dtype():
    cfg = cfg_of(tie_embeddings=True)
    state = {k: torch.randn(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}
    with pytest.raises(hf.HFConversionError, match="output.weight differs"):
        hf.to_hf_state(state, cfg)
    state["output.weight"] = state["tok_embeddings.weight"]
    out = hf.to_hf_state(state, cfg, torch.bfloat16)
    assert "lm_head.weight" not in out and all(v.dtype == torch.bfloat16 for v in out.values())
    back = hf.from_hf_state(out, cfg)
    assert torch.equal(back["output.weight"], back["tok_embeddings.weight"])


def test_from_hf_state_rejects_missing_and_unknown_tensors():
    cfg = cfg_of()
    out = hf.to_hf_state({k: torch.zeros(v.shape) for k, v in build_model(cfg, "meta").state_dict().items()}, cfg)
    with pytest.raises(hf.HFConversionError, match="lack"):
        hf.from_hf_state({k: v for k, v in out.items() if "q_proj" not in k}, cfg)
    with pytest.raises(hf.HFConversionError, match="no place for"):
        hf.from_hf_state({**out, "model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}, cfg)


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": None, "tie_embeddings": True}, {"qk_norm": True}])
def test_config_round_trip(kw):
    cfg = cfg_of(rope_theta=500000.0, norm_eps=1e-6, **kw)
    d = hf.to_hf_config(cfg, torch.float32, eos_token_id=7)
    assert d["model_type"] == ("qwen3" if cfg.qk_norm else "llama")
    assert d["rope_parameters"] == {"rope_theta": 500000.0, "rope_type": "default"} and d["head_dim"] == 16
    assert d["eos_token_id"] == 7 and d["dtype"] == "float32"
    assert hf.from_hf_config(d) == cfg


def test_interleaved_config_exports_as_half():
    d = hf.to_hf_config(cfg_of(rope_style="interleaved"))
    assert hf.from_hf_config(d) == cfg_of(rope_style="half")


def test_transformers_4_style_rope_theta_is_read():
    d = hf.to_hf_config(cfg_of())
    del d["rope_parameters"]
    d["rope_theta"] = 1234.0
    assert hf.from_hf_config(d).rope_theta == 1234.0


@pytest.mark.parametrize(
    "change, key",
    [
        ({"model_type": "gpt2"}, "model_type"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}}, "rope_type"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"head_dim": 32}, "head_dim"),
        ({"num_key_value_heads": 3}, "n_kv_heads"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_unsupported_configs_name_the_key(change, key):
    d = {**hf.to_hf_config(cfg_of()), **change}
    d = {k: v for k, v in d.items() if v is not None or k != "hidden_size"}
    with pytest.raises(hf.HFConversionError, match=key):
        hf.from_hf_config(d)


def test_merge_keeps_imported_token_ids_but_not_architecture():
    derived = hf.to_hf_config(cfg_of(), eos_token_id=None)
    original = {**derived, "bos_token_id": 1, "eos_token_id": 2, "pretraining_tp": 1, "hidden_size": 999}
    merged = hf.merge_hf_config(derived, original)
    assert merged["eos_token_id"] == 2 and merged["pretraining_tp"] == 1 and merged["hidden_size"] == 64
