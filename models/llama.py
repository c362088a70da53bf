"""A Llama-style decoder that a reader takes in at once.

Pre-norm RMSNorm, rotary position embeddings, SwiGLU, grouped-query attention through
`F.scaled_dot_product_attention(is_causal=True)`, optional QK-norm, tied or untied embeddings. With
model.attention=document, attention stays inside each packed document (documents.py: a dense mask for SDPA or a
FlexAttention block mask), and with model.positions=document RoPE restarts at every document.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import documents
from .config import ModelConfig, validate_model_config
from .loss import ce_chunk, chunked_cross_entropy, plain_cross_entropy

_flex = None  # FlexAttention compiled once (eager FlexAttention materialises the scores: slow and large)


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, gqa: bool) -> torch.Tensor:
    global _flex
    if _flex is None:
        from torch.nn.attention.flex_attention import flex_attention as flex

        _flex = torch.compile(flex, dynamic=False)
    return _flex(q, k, v, block_mask=mask, enable_gqa=gqa)


def rope_tables(
    head_dim: int, max_seq_len: int, theta: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape [max_seq_len, head_dim // 2], in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    """Rotate x [B, H, T, head_dim]. "half" pairs dimension i with i + head_dim/2 (Hugging Face's rotate_half);
    "interleaved" pairs 2i with 2i+1 (Meta's complex-number form). Both compute the same function up to a
    permutation of the q/k projection rows, which is what an export must apply."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if style == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.rope_style = cfg.rope_style
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask=None) -> torch.Tensor:
        """mask: None (causal), a [B, 1, T, T] boolean tensor (SDPA) or a FlexAttention BlockMask."""
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin, self.rope_style), apply_rope(k, cos, sin, self.rope_style)
        gqa = self.n_kv_heads != self.n_heads
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif isinstance(mask, torch.Tensor):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        else:
            y = flex_attention(q, k, v, mask, gqa)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)  # gate
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)  # up
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask=None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        validate_model_config(cfg)
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size is null: resolve it from the tokenizer before building the model")
        if cfg.per_document and cfg.eos_id is None:
            raise ValueError("model.attention/positions=document needs model.eos_id: resolve it from the tokenizer")
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # Not persistent: derived from the config, and rebuilt by init_weights() after meta-device construction.
        self.register_buffer("rope_cos", torch.empty(cfg.max_seq_len, cfg.head_dim // 2), persistent=False)
        self.register_buffer("rope_sin", torch.empty(cfg.max_seq_len, cfg.head_dim // 2), persistent=False)
        self._ce_chunk = ce_chunk
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Width-scaled truncated-normal init; output projections also scaled by depth; norms at 1."""
        cfg = self.cfg
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        std = cfg.init_std or math.sqrt(2.0 / (5.0 * cfg.dim))
        out_std = std / math.sqrt(2.0 * cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                s = out_std if name.endswith(("wo", "w2")) else std
                nn.init.trunc_normal_(module.weight, std=s, a=-3 * s, b=3 * s)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
        # A tied table doubles as the head, so it takes the head's small std; an untied one is N(0, 1).
        if cfg.tie_embeddings:
            nn.init.trunc_normal_(self.tok_embeddings.weight, std=std, a=-3 * std, b=3 * std)
        else:
            nn.init.normal_(self.tok_embeddings.weight, std=1.0)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states [B, T, dim] for tokens [B, T]."""
        cfg, t = self.cfg, tokens.shape[1]
        if t > cfg.max_seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds model.max_seq_len={cfg.max_seq_len}")
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        if cfg.positions == "document":  # [B, 1, T, head_dim / 2]: broadcast over heads
            pos = documents.document_positions(tokens, cfg.eos_id)
            cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]
        mask = None
        if cfg.attention == "document":  # built once per batch, shared by every layer
            docs = documents.document_ids(tokens, cfg.eos_id)
            mask = documents.block_mask(docs) if cfg.document_kernel == "flex" else documents.dense_mask(docs)
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] when targets is None, else the mean next-token cross-entropy (fp32 scalar), plus
        the z-loss in train mode (eval mode gives the plain cross-entropy: comparable across model.z_loss)."""
        h = self.hidden(tokens)
        if targets is None:
            return self.output(h)
        if self.cfg.attention == "document":
            targets = documents.masked_targets(tokens, targets, self.cfg.eos_id)
        z = self.cfg.z_loss if self.training else 0.0
        if self.cfg.loss_chunk == 0:
            return plain_cross_entropy(h, self.output.weight, targets, z)
        return chunked_cross_entropy(h, self.output.weight, targets, self.cfg.loss_chunk, self._ce_chunk, z)

    def compile_loss(self) -> None:
        """torch.compile the per-chunk softmax of the chunked loss: its elementwise passes fuse into a few kernels.
        (The chunk loop itself stays eager; blocks are compiled on their own by the trainer.)"""
        self._ce_chunk = torch.compile(ce_chunk)


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> Llama:
    """Build and initialise a model; on device "meta" no memory is allocated (init_weights later)."""
    with torch.device(device or "cpu"):
        return Llama(cfg)
