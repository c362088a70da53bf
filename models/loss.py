"""Next-token cross-entropy of the output head, with or without the full logits.

For a 128K vocabulary the plain loss holds [tokens, vocab] logits in bf16, their fp32 copy and the fp32 gradient
at once: about 25 GiB at 8 x 2048 tokens. The chunked loss takes `chunk` rows at a time, and computes each chunk's
gradient with respect to the hidden states and the head weight in the forward pass (the derivative of a mean
cross-entropy is (softmax - onehot) / N, known as soon as the softmax is), so no logits outlive their chunk and
backward only scales the saved gradients. The head's matmul FLOPs are the same as the plain loss's.

What it holds instead: the head's gradient in fp32 (vocab x dim, 1 GiB for llama-1b) from forward to backward; where
the device has no fp32-output GEMM (FP32_OUT_GEMM) also, per chunk, a vocab x dim product and its fp32 copy while it
is added in. Far less than the logits at these sizes.

z-loss (PaLM, OLMo): `z_loss * mean(logsumexp(logits)^2)` over the same counted targets, added to the mean
cross-entropy. It keeps the log-partition near 0 (logits from drifting), and its gradient 2 z lse softmax is taken
per chunk from the logsumexp and softmax the cross-entropy already computes: no extra pass, no extra logits.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE = -100  # a target the loss leaves out (as F.cross_entropy's ignore_index)

FP32_OUT_GEMM: bool | None = None
"""Whether the head's gradient is accumulated by an fp32-output GEMM (bf16 inputs, fp32 accumulation straight into
the fp32 sum, as cuBLAS offers). It replaces a bf16 product, its fp32 copy and an fp32 add: about 4.5 GB of memory
traffic per 2048-row chunk at a 128K vocabulary. None probes the device once; True/False force it (benchmarks)."""
_fp32_out_probed: dict[str, bool] = {}


def _fp32_out_gemm(device: torch.device) -> bool:
    if FP32_OUT_GEMM is not None:
        return FP32_OUT_GEMM
    if device.type not in _fp32_out_probed:
        a = torch.zeros(2, 2, device=device, dtype=torch.bfloat16)
        try:
            torch.addmm(torch.zeros(2, 2, device=device), a, a, out_dtype=torch.float32)
            _fp32_out_probed[device.type] = True
        except (RuntimeError, NotImplementedError):  # e.g. the CPU backend has no addmm.dtype
            _fp32_out_probed[device.type] = False
    return _fp32_out_probed[device.type]


def _add_head_grad(grad_w: torch.Tensor, g: torch.Tensor, hc: torch.Tensor, fp32_out: bool) -> None:
    """grad_w (fp32) += g.T @ hc, accumulated in fp32 without a separate product where the device allows."""
    if g.dtype == torch.float32:
        grad_w.addmm_(g.t(), hc)
    elif fp32_out:
        torch.addmm(grad_w, g.t(), hc, out_dtype=torch.float32, out=grad_w)
    else:
        grad_w += (g.t() @ hc).float()


def plain_cross_entropy(
    h: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of logits h @ head.T against targets, with the softmax in fp32 (the reference), plus
    z_loss * the mean squared logsumexp over the counted targets."""
    logits = F.linear(h, head).flatten(0, 1).float()
    t = targets.flatten()
    loss = F.cross_entropy(logits, t)
    if not z_loss:
        return loss
    keep = t != IGNORE
    return loss + z_loss * (torch.logsumexp(logits, dim=-1).square() * keep).sum() / keep.sum().clamp(min=1)


def ce_chunk(
    logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor, want_grad: bool, z_loss: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed cross-entropy (plus z_loss * lse^2) of one chunk of logits, in fp32, and (when asked)
    d(scale * sum)/d(logits) in the logits' dtype; targets equal to IGNORE (-100) count nothing. Kept free of
    autograd so torch.compile can fuse it into a couple of passes over the chunk."""
    x = logits.float()
    keep = (targets != IGNORE)[:, None]
    safe = targets.clamp(min=0)[:, None]
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    per_row = lse - x.gather(1, safe)
    if z_loss:  # a Python float: the z-less path compiles without it
        per_row = per_row + z_loss * lse.square()
    loss = (per_row * keep).sum()
    if not want_grad:
        return loss, None
    grad = torch.exp(x - lse)
    if z_loss:  # d(z lse^2)/dx = 2 z lse softmax: the softmax rows scaled before the one-hot goes in
        grad.mul_(1.0 + 2.0 * z_loss * lse)  # in place: a chunk of vocabulary-wide fp32 is large
    grad.scatter_add_(1, safe, torch.full_like(lse, -1.0))
    return loss, (grad * (keep * scale)).to(logits.dtype)


ChunkFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]  # ce_chunk's signature


def _chunked(h, head, targets, chunk: int, fn: ChunkFn, need_h: bool, need_w: bool, z_loss: float = 0.0):
    """(mean loss over the counted targets, d loss/d h, d loss/d head); a gradient not needed is None and never
    computed. The matmuls run in h's dtype; the head's gradient is accumulated over chunks in fp32 and returned in
    the head's dtype. The count stays on the device (no host sync)."""
    rows, weight = h.shape[0], head.to(h.dtype)
    n = (targets != IGNORE).sum().clamp(min=1).float()
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    fp32_out = need_w and _fp32_out_gemm(h.device)
    for start in range(0, rows, chunk):
        hc, tc = h[start : start + chunk], targets[start : start + chunk]
        part, g = fn(hc @ weight.t(), tc, 1.0 / n, need_h or need_w, z_loss)
        loss += part
        if need_h:
            torch.mm(g, weight, out=grad_h[start : start + chunk])
        if need_w:
            _add_head_grad(grad_w, g, hc, fp32_out)
    return loss / n, grad_h, grad_w.to(head.dtype) if need_w else None


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, head, targets, chunk, fn, need_h, need_w, z_loss):  # type: ignore[override]
        loss, grad_h, grad_w = _chunked(h, head, targets, chunk, fn, need_h, need_w, z_loss)
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        # The scale (1/accumulation, say) in fp32, as the plain loss applies it: bf16 would round 1/3 by 0.2%.
        gh = (grad_h.float() * grad_out).to(grad_h.dtype) if grad_h is not None else None
        gw = grad_w * grad_out.to(grad_w.dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None, None


def chunked_cross_entropy(
    h: torch.Tensor,
    head: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    fn: ChunkFn = ce_chunk,
    z_loss: float = 0.0,
) -> torch.Tensor:
    """The plain loss's value and gradients (z-loss included), `chunk` rows of logits at a time. Under autocast the
    matmuls run in the autocast dtype, as the plain loss's would; the softmax is always fp32. `fn` may be a
    compiled ce_chunk."""
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    h2, t = h.flatten(0, 1).to(dtype), targets.flatten()
    need_h = torch.is_grad_enabled() and h2.requires_grad
    need_w = torch.is_grad_enabled() and head.requires_grad
    with torch.autocast(device, enabled=False):
        if not (need_h or need_w):  # evaluation: the loss alone
            return _chunked(h2, head, t, chunk, fn, False, False, z_loss)[0]
        return _ChunkedLinearCrossEntropy.apply(h2, head, t, chunk, fn, need_h, need_w, z_loss)
