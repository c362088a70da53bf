"""Hugging Face format conversion maths: parameter names, the RoPE row permutation, config dicts.

Pure functions on dicts of tensors and plain dicts; no transformers import (the export must not need it).
A model without QK-norm maps to `LlamaForCausalLM`; with QK-norm to `Qwen3ForCausalLM` (the same block plus per-head
RMSNorm on q and k before RoPE, which is exactly anytrain's qk_norm).
"""

import math
from typing import Any

import torch

from .config import ModelConfig, validate_model_config


class HFConversionError(ValueError):
    """A config or state dict that cannot be converted, naming the offending key."""


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HF_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}

# anytrain name -> HF name, per layer; "{i}" is the layer index.
_LAYER_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.q_norm.weight": "self_attn.q_norm.weight",
    "attention.k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}


def name_map(cfg: ModelConfig) -> dict[str, str]:
    """Every anytrain parameter name -> its HF name (output.weight -> lm_head.weight only when untied)."""
    names = dict(_GLOBAL_NAMES)
    if not cfg.tie_embeddings:
        names["output.weight"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        for ours, theirs in _LAYER_NAMES.items():
            if "q_norm" in ours or "k_norm" in ours:
                if not cfg.qk_norm:
                    continue
            names[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    return names


def interleaved_to_half(head_dim: int) -> torch.Tensor:
    """Index p with half[j] = interleaved[p[j]]: the even dimensions of a head first, then the odd ones. RoPE pair
    (2i, 2i+1) then lands on (i, i + head_dim/2), which is the pair rotate_half rotates."""
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def permute_rows(w: torch.Tensor, n_heads: int, head_dim: int, perm: torch.Tensor) -> torch.Tensor:
    """Reorder the output rows of a q/k projection (or a per-head norm weight) within each head."""
    if w.dim() == 1:  # q_norm / k_norm weight: one head_dim vector shared by all heads
        return w[perm].contiguous()
    return w.reshape(n_heads, head_dim, -1)[:, perm].reshape(w.shape).contiguous()


def _rope_permute(state: dict[str, torch.Tensor], cfg: ModelConfig, inverse: bool) -> dict[str, torch.Tensor]:
    perm = interleaved_to_half(cfg.head_dim)
    if inverse:
        perm = torch.argsort(perm)
    out = dict(state)
    for i in range(cfg.n_layers):
        p = f"layers.{i}.attention."
        out[p + "wq.weight"] = permute_rows(state[p + "wq.weight"], cfg.n_heads, cfg.head_dim, perm)
        out[p + "wk.weight"] = permute_rows(state[p + "wk.weight"], cfg.kv_heads, cfg.head_dim, perm)
        if cfg.qk_norm:
            out[p + "q_norm.weight"] = permute_rows(state[p + "q_norm.weight"], 1, cfg.head_dim, perm)
            out[p + "k_norm.weight"] = permute_rows(state[p + "k_norm.weight"], 1, cfg.head_dim, perm)
    return out


def to_hf_state(
    state: dict[str, torch.Tensor], cfg: ModelConfig, dtype: torch.dtype = torch.float32, permute: bool = True
) -> dict[str, torch.Tensor]:
    """anytrain state dict -> HF state dict. An interleaved-RoPE model has its q/k rows permuted per head into the
    rotate_half layout, so the HF model computes the same function (`permute=False` exists only for tests)."""
    names = name_map(cfg)
    missing = sorted(set(names) - set(state))
    if missing:
        raise HFConversionError(f"state dict lacks {missing[:3]} (not a {cfg.n_layers}-layer anytrain model?)")
    if cfg.tie_embeddings and "output.weight" in state:
        if not torch.equal(state["output.weight"], state["tok_embeddings.weight"]):
            raise HFConversionError("model.tie_embeddings=True but output.weight differs from tok_embeddings.weight")
    if cfg.rope_style == "interleaved" and permute:
        state = _rope_permute(state, cfg, inverse=False)
    return {hf: state[ours].to(dtype).contiguous() for ours, hf in names.items()}


def from_hf_state(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF state dict -> anytrain fp32 state dict in cfg's RoPE layout (output.weight present even when tied, as
    `load_model_state` returns it)."""
    names = name_map(cfg)
    missing = sorted(hf for hf in names.values() if hf not in hf_state)
    if missing:
        raise HFConversionError(f"HF weights lack {missing[:3]}")
    unexpected = sorted(set(hf_state) - set(names.values()) - {"lm_head.weight"})
    if unexpected:
        raise HFConversionError(f"HF weights hold parameters anytrain's model has no place for: {unexpected[:3]}")
    state = {ours: hf_state[hf].float() for ours, hf in names.items()}
    if cfg.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    if cfg.rope_style == "interleaved":
        state = _rope_permute(state, cfg, inverse=True)
    return state


def to_hf_config(
    cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16, eos_token_id: int | None = None
) -> dict[str, Any]:
    """The config.json of the HF model that computes what cfg computes (in the rotate_half layout)."""
    validate_model_config(cfg)
    if cfg.vocab_size is None:
        raise HFConversionError("model.vocab_size is null: the checkpoint does not record its vocabulary")
    qwen3 = cfg.qk_norm  # Llama has no QK-norm; Qwen3 is Llama plus exactly that
    rope = {"rope_theta": float(cfg.rope_theta), "rope_type": "default"}
    out: dict[str, Any] = {
        "architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen3 else "llama",
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_seq_len,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std or math.sqrt(2.0 / (5.0 * cfg.dim)),
        # transformers >= 5 reads rope_parameters; 4.x reads rope_theta and rope_scaling. Both, so either loads it.
        "rope_theta": float(cfg.rope_theta),
        "rope_parameters": rope,
        "rope_scaling": None,
        "dtype": HF_DTYPE_NAMES[dtype],
        "torch_dtype": HF_DTYPE_NAMES[dtype],
        "use_cache": True,
        # anytrain separates documents with EOS and has no BOS: the token before a document is EOS.
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
    }
    if qwen3:
        out |= {
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": cfg.n_layers,
            "layer_types": ["full_attention"] * cfg.n_layers,
        }
    else:
        out["mlp_bias"] = False
    return out


# Keys that to_hf_config derives from the model (or the export's dtype); everything else an imported config held
# (token ids, initializer_range, transformers_version, ...) is carried over unchanged by merge_hf_config.
_DERIVED = {
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "hidden_act", "rms_norm_eps", "tie_word_embeddings",
    "max_position_embeddings", "attention_bias", "mlp_bias", "rope_theta", "rope_parameters", "rope_scaling",
    "dtype", "torch_dtype", "use_sliding_window", "sliding_window", "max_window_layers", "layer_types",
}  # fmt: skip


def merge_hf_config(derived: dict[str, Any], original: dict[str, Any] | None) -> dict[str, Any]:
    """derived, plus the non-architecture keys of the config a model was imported from (so that HF -> anytrain -> HF
    gives back the config it started from)."""
    if not original:
        return derived
    return {**derived, **{k: v for k, v in original.items() if k not in _DERIVED}}


def _rope_theta(hf: dict[str, Any]) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise HFConversionError(f"config.json: rope_scaling={scaling} is not supported (plain RoPE only)")
    if params.get("rope_type", "default") != "default":
        raise HFConversionError(f"config.json: rope_parameters.rope_type={params['rope_type']!r} is not supported")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta)


def from_hf_config(hf: dict[str, Any]) -> ModelConfig:
    """An HF Llama (or Qwen3) config.json dict -> ModelConfig with rope_style "half". Anything the anytrain model
    cannot compute is an error naming the key."""
    model_type = hf.get("model_type")
    if model_type not in ("llama", "qwen3"):
        raise HFConversionError(f"config.json: model_type={model_type!r} is not supported (llama or qwen3)")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if key not in hf:
            raise HFConversionError(f"config.json: {key} is missing")
    checks = {"attention_bias": False, "mlp_bias": False, "hidden_act": "silu", "use_sliding_window": False}
    for key, want in checks.items():
        if hf.get(key, want) != want:
            raise HFConversionError(f"config.json: {key}={hf[key]!r} is not supported (anytrain needs {want!r})")
    heads = hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if head_dim * heads != hf["hidden_size"]:
        raise HFConversionError(
            f"config.json: head_dim={head_dim} x num_attention_heads={heads} != hidden_size={hf['hidden_size']} "
            f"(anytrain derives head_dim = hidden_size / heads)"
        )
    cfg = ModelConfig(
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=None if kv == heads else kv,  # None is the canonical "multi-head" of ModelConfig
        ffn_hidden=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        rope_theta=_rope_theta(hf),
        rope_style="half",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qk_norm=model_type == "qwen3",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_seq_len=int(hf.get("max_position_embeddings", 8192)),
    )
    try:
        validate_model_config(cfg)
    except ValueError as e:
        raise HFConversionError(f"config.json describes a model anytrain cannot build: {e}") from e
    return cfg
