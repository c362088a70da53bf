"""Kernel choices for the throughput issue, timed on the GPU at the benchmark shapes (one device call):
the chunked loss's head-gradient accumulation (bf16 product + fp32 add vs an fp32-output GEMM) at several chunk
sizes, the SDPA backends for the attention shapes of llama-1b and the 2b preset, and the fused AdamW clipping path.
Prints one line per measurement; `python scripts/bench_kernels.py [loss|attention|adamw]...`."""

import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from models import loss as L


def timed(fn, *args, reps: int = 10) -> float:
    """Median milliseconds of fn(*args) on the device."""
    fn(*args)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(*args)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def bench_loss(rows: int = 16384, dim: int = 2048, vocab: int = 128256) -> None:
    torch.manual_seed(0)
    h = (torch.randn(rows, dim, device="cuda") * 0.5).to(torch.bfloat16).requires_grad_()
    head = (torch.randn(vocab, dim, device="cuda") * 0.02).requires_grad_()
    t = torch.randint(0, vocab, (rows,), device="cuda")
    fn = torch.compile(L.ce_chunk)
    ref = None
    for chunk in (2048, 4096, 8192):
        for fp32_out in (False, True):
            L.FP32_OUT_GEMM = fp32_out

            def step(chunk: int) -> None:
                h.grad = head.grad = None
                L.chunked_cross_entropy(h[None], head, t[None], chunk, fn).backward()

            torch.cuda.reset_peak_memory_stats()
            ms = timed(step, chunk)
            peak = torch.cuda.max_memory_allocated() / 2**30
            gw = head.grad.double()
            ref = gw if ref is None else ref
            err = ((gw - ref).norm() / ref.norm()).item()
            print(
                f"LOSS chunk {chunk} fp32_out {fp32_out}: {ms:.2f} ms, peak {peak:.1f} GiB, grad_w vs first {err:.1e}"
            )
    L.FP32_OUT_GEMM = None


def bench_attention() -> None:
    shapes = {"llama-1b b8": (8, 32, 8, 2048, 64), "2b b2 seq8192": (2, 16, 4, 8192, 128)}
    backends = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }
    for name, (b, h, kv, t, d) in shapes.items():
        q = torch.randn(b, t, h, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
        k = torch.randn(b, t, kv, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
        v = torch.randn(b, t, kv, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
        for bname, backend in backends.items():
            for expand in (False, True):
                label = f"ATTN {name} {bname} {'expanded kv' if expand else 'gqa'}"
                try:
                    print(f"{label}: {timed(_attention, q, k, v, backend, expand):.2f} ms fwd+bwd per layer")
                except RuntimeError as e:
                    print(f"{label}: unavailable ({str(e)[:80]})")


def _attention(q, k, v, backend, expand: bool) -> None:
    rep = q.shape[1] // k.shape[1]
    if expand:  # GQA by repeating K/V heads: what a kernel without native GQA needs
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    with sdpa_kernel([backend]):
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=not expand)
    y.backward(torch.ones_like(y))


def bench_adamw(n: int = 1_500_000_000) -> None:
    sizes = [128256 * 2048] * 2 + [2048 * 8192] * ((n - 2 * 128256 * 2048) // (2048 * 8192))
    params = [torch.zeros(s, device="cuda", requires_grad=True) for s in sizes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    opt.step()

    def clip_then_step():
        torch.nn.utils.clip_grad_norm_(params, 1e-9)
        opt.step()

    def scaled_step():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        opt.grad_scale = (norm / 1e-9).clamp(min=1.0)
        opt.step()
        opt.grad_scale = None

    alone, clipped, scaled = (timed(f, reps=5) for f in (opt.step, clip_then_step, scaled_step))
    print(
        f"ADAMW step alone {alone:.2f} ms | clip_grad_norm_ + step {clipped:.2f} ms | norm + grad_scale step "
        f"{scaled:.2f} ms ({sum(sizes) / 1e9:.2f}B params)"
    )


if __name__ == "__main__":
    parts = sys.argv[1:] or ["loss", "attention", "adamw"]
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for part in parts:
        t0 = time.time()
        {"loss": bench_loss, "attention": bench_attention, "adamw": bench_adamw}[part]()
        print(f"({part}: {time.time() - t0:.0f} s)")
