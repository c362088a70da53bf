"""Model configuration: one dataclass, every field documented once."""

import math
from dataclasses import dataclass


@dataclass
class ModelConfig:
    dim: int = 256
    """Width of the residual stream."""
    n_layers: int = 4
    """Number of transformer blocks."""
    n_heads: int = 4
    """Query heads; must divide `dim` (head_dim = dim / n_heads)."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; must divide `n_heads`. None means n_heads (multi-head)."""
    ffn_hidden: int = 768
    """Hidden width of the SwiGLU feed-forward block."""
    vocab_size: int | None = None
    """Rows of the embedding table. None takes the tokenizer's vocabulary, rounded up to a multiple of 64."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rope_style: str = "half"
    """RoPE pair layout: "half" (rotate_half, as Hugging Face Llama) or "interleaved" (complex pairs, as Meta Llama).
    Recorded with every checkpoint because an export must permute q/k rows when it is "interleaved"."""
    tie_embeddings: bool = False
    """Share the input embedding with the output head."""
    qk_norm: bool = False
    """Per-head RMSNorm on queries and keys before RoPE."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    max_seq_len: int = 8192
    """Longest sequence the RoPE table covers."""
    loss_chunk: int = 2048
    """Tokens whose logits the training loss holds at once (models/loss.py); each chunk's gradient is taken in the
    forward pass, so a 128K vocabulary never needs full-size fp32 logits. 0 computes all logits at once (the plain
    loss). The value does not change the result beyond float rounding."""
    z_loss: float = 0.0
    """Weight of the z-loss (PaLM, OLMo: 1e-4): z_loss * mean(logsumexp(logits)^2) over the counted targets is added
    to the training loss, which keeps the output's log-partition near 0. 0 turns it off. Added in train mode only:
    in eval mode (the trainer's evaluation, val_loss) the model returns the plain cross-entropy, so held-out losses
    compare across z_loss settings; the logged training `loss` includes it."""
    attention: str = "causal"
    """"causal": every token attends to all earlier tokens of the packed sequence; "document": only to earlier
    tokens of its own document (documents end at model.eos_id), and the position whose target is the next
    document's first token is left out of the loss (nothing of that document is visible from it)."""
    positions: str = "sequence"
    """RoPE positions: "sequence" counts from the start of the packed sequence; "document" restarts at every
    document (at model.eos_id), so each document sees the positions it would alone."""
    eos_id: int | None = None
    """The id that ends a document, for attention/positions "document". None takes the tokenizer's EOS."""
    document_kernel: str = "auto"
    """How attention=document is computed: "flex" (FlexAttention with a block mask built once per batch: skips
    masked blocks; CUDA), "sdpa" (scaled_dot_product_attention with a dense boolean mask: any device), or "auto"
    (the trainer picks flex on CUDA, sdpa elsewhere; a model built outside the trainer takes sdpa). The same
    function either way, up to float rounding."""
    init_std: float | None = None
    """Std of the truncated-normal init of linear layers. None means sqrt(2 / (5 * dim)), which scales with width;
    output projections are further divided by sqrt(2 * n_layers)."""

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def per_document(self) -> bool:
        """Whether document boundaries matter (attention or positions)."""
        return self.attention == "document" or self.positions == "document"


ATTENTION, POSITIONS, KERNELS = ("causal", "document"), ("sequence", "document"), ("auto", "flex", "sdpa")


def validate_model_config(cfg: ModelConfig) -> None:
    """Reject shapes that cannot be built, naming the field and the fix."""
    positive = ("dim", "n_layers", "n_heads", "ffn_hidden", "max_seq_len")
    if cfg.loss_chunk < 0:
        raise ValueError(f"model.loss_chunk must be >= 0 (0 = the plain loss), got {cfg.loss_chunk}")
    if not 0 <= cfg.z_loss < math.inf:  # also refuses NaN
        raise ValueError(f"model.z_loss must be >= 0 (0 = off; PaLM and OLMo use 1e-4), got {cfg.z_loss}")
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"model.{name} must be positive, got {getattr(cfg, name)}")
    if cfg.dim % cfg.n_heads:
        raise ValueError(
            f"model.n_heads={cfg.n_heads} does not divide model.dim={cfg.dim}: choose heads so that "
            f"dim / n_heads is an integer (e.g. n_heads={_divisor_near(cfg.dim, cfg.n_heads)})"
        )
    if cfg.head_dim % 2:
        raise ValueError(f"head_dim = model.dim / model.n_heads = {cfg.head_dim} must be even for RoPE")
    if cfg.n_kv_heads is not None and cfg.n_kv_heads <= 0:  # 0 would silently mean "as many as n_heads"
        raise ValueError(
            f"model.n_kv_heads must be positive or null (null: as many as model.n_heads={cfg.n_heads}), got "
            f"{cfg.n_kv_heads}"
        )
    if cfg.n_heads % cfg.kv_heads:
        raise ValueError(
            f"model.n_kv_heads={cfg.n_kv_heads} must divide model.n_heads={cfg.n_heads} (grouped-query attention)"
        )
    if cfg.rope_style not in ("half", "interleaved"):
        raise ValueError(f"model.rope_style must be 'half' or 'interleaved', got {cfg.rope_style!r}")
    for name, choices in (("attention", ATTENTION), ("positions", POSITIONS), ("document_kernel", KERNELS)):
        if getattr(cfg, name) not in choices:
            raise ValueError(f"model.{name} must be one of {choices}, got {getattr(cfg, name)!r}")
    if cfg.vocab_size is not None and cfg.vocab_size <= 0:
        raise ValueError(f"model.vocab_size must be positive or null, got {cfg.vocab_size}")


def _divisor_near(n: int, k: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0 and (n // d) % 2 == 0]
    return min(divisors, key=lambda d: abs(d - k))
