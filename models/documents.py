"""Packed sequences hold several documents, each ended by the EOS id. What keeps a token inside its document:
document ids, positions that restart at every document, and the attention mask (a dense boolean one for
scaled_dot_product_attention on any device, or a FlexAttention block mask that lets the kernel skip whole blocks)."""

import torch

IGNORE = -100  # a target left out of the loss (F.cross_entropy's ignore_index)


def document_ids(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, T] index of each token's document within its row: an EOS belongs to the document it ends."""
    is_eos = (tokens == eos_id).to(torch.int32)
    return torch.cumsum(is_eos, dim=1) - is_eos


def document_positions(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, T] position of each token within its document (0 at the first token after an EOS, and at t = 0)."""
    t = tokens.shape[1]
    index = torch.arange(t, device=tokens.device).expand_as(tokens)
    starts = torch.zeros_like(tokens, dtype=torch.bool)
    starts[:, 1:] = tokens[:, :-1] == eos_id
    starts[:, 0] = True
    return index - torch.cummax(torch.where(starts, index, 0), dim=1).values


def dense_mask(docs: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] boolean mask: query t sees key s when s <= t and both are in one document."""
    t = docs.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=docs.device).tril()
    return (docs[:, :, None] == docs[:, None, :]).logical_and(causal)[:, None]


def block_mask(docs: torch.Tensor):
    """The FlexAttention block mask of the same rule, built once per batch and shared by every layer."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_document_causal(b, h, q, k):
        return (k <= q) & (docs[b, q] == docs[b, k])

    b, t = docs.shape
    return create_block_mask(same_document_causal, b, None, t, t, device=docs.device)


def masked_targets(tokens: torch.Tensor, targets: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Targets with the next document's first token left out where the input is an EOS: with attention kept
    inside documents, nothing of that next document is visible there, so the loss counts every other position."""
    return targets.masked_fill(tokens == eos_id, IGNORE)
