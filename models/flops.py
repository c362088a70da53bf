"""Parameter and FLOP counts from the config alone (no tensors)."""

from .config import ModelConfig


def num_params(cfg: ModelConfig, embeddings: bool = True) -> int:
    """Parameters of the model built from cfg; embeddings=False leaves out the input embedding table."""
    if cfg.vocab_size is None:
        raise ValueError("model.vocab_size is null: resolve it from the tokenizer first")
    hd, kv = cfg.head_dim, cfg.kv_heads
    attn = cfg.dim * cfg.n_heads * hd * 2 + cfg.dim * kv * hd * 2
    ffn = 3 * cfg.dim * cfg.ffn_hidden
    norms = 2 * cfg.dim + (2 * hd if cfg.qk_norm else 0)
    body = cfg.n_layers * (attn + ffn + norms) + cfg.dim
    table = cfg.vocab_size * cfg.dim
    head = 0 if cfg.tie_embeddings else table
    return body + head + (table if embeddings else 0)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 * (params doing matmuls, i.e. all but the input embedding, with the head counted
    even when tied) + 12 * layers * dim * seq_len for causal attention counted in full (the usual MFU convention)."""
    matmul_params = num_params(cfg, embeddings=False)
    if cfg.tie_embeddings:
        matmul_params += cfg.vocab_size * cfg.dim
    return 6.0 * matmul_params + 12.0 * cfg.n_layers * cfg.dim * seq_len
