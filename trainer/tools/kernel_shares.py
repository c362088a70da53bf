"""Device time of a profiled step by kind of kernel: where the step's time goes, in a few lines.

Kernel names differ by vendor and library version, so the kinds are matched by name fragments, attention first
(its kernels may also carry "gemm" in their names). What matches nothing is "other"."""

from collections import defaultdict

KINDS = (
    ("attention", ("sdpa", "fmha", "flash", "attention", "attn")),
    ("GEMM", ("gemm", "nvjet", "cutlass", "xmma", "matmul", "cublas", "hipblaslt", "onednn")),
    ("optimizer", ("adam", "multi_tensor_apply", "foreach")),
    ("compiled (triton)", ("triton",)),
    ("copies and fills", ("copy", "memcpy", "memset", "fill", "cat", "index")),
    ("reductions", ("reduce", "norm")),
)

# Ranges the profiler also draws on the device timeline (they span kernels already counted).
ANNOTATIONS = ("Optimizer.", "ProfilerStep", "## ")


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    return next((kind for kind, parts in KINDS if any(p in name for p in parts)), "other")


def shares(events, steps: int) -> str:
    """A table of device milliseconds per step and share by kind, from `profile.key_averages()`; kernel rows are
    the entries whose device_type is not the CPU (CPU operators would count their kernels twice)."""
    total, by_kind = 0.0, defaultdict(float)
    for e in events:
        if str(getattr(e, "device_type", "")).endswith("CPU") or e.key.startswith(ANNOTATIONS):
            continue
        us = getattr(e, "self_device_time_total", 0.0)
        by_kind[kind_of(e.key)] += us
        total += us
    if not total:
        return "no device kernels were recorded"
    lines = ["| kind | ms per step | share |", "|---|---|---|"]
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {us / 1e3 / steps:.1f} | {100 * us / total:.1f}% |")
    lines.append(f"| all kernels | {total / 1e3 / steps:.1f} | 100% |")
    return "\n".join(lines)
