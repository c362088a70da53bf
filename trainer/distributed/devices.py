"""Everything that differs between vendors: device, collective backend, autocast, SDPA kernels, peak FLOP/s,
memory, RNG and synchronisation. The rest of the code asks this module and never branches on cuda/xpu/mps itself."""

from contextlib import AbstractContextManager, nullcontext

import torch

# The collective backend of each device type when parallel.backend=auto (ROCm builds report as cuda: RCCL).
BACKENDS = {"cuda": "nccl", "xpu": "xccl", "cpu": "gloo", "mps": "gloo"}


# Where FlexAttention's compiled kernels run (model.document_kernel=auto picks flex there; ROCm reports as cuda).
FLEX_DEVICES = ("cuda",)


def document_kernel(device: torch.device, setting: str = "auto") -> str:
    """model.document_kernel for this device: "flex" where FlexAttention compiles to a fused kernel, else "sdpa"
    (a dense mask, any device). Asking for flex elsewhere is an error, not a silent change."""
    if setting == "auto":
        return "flex" if device.type in FLEX_DEVICES else "sdpa"
    if setting == "flex" and device.type not in FLEX_DEVICES:
        raise ValueError(
            f"model.document_kernel=flex needs a device of {FLEX_DEVICES}, not {device.type}: set it to sdpa or auto"
        )
    return setting


def choose_backend(device_type: str, override: str = "auto") -> str:
    """parallel.backend: an explicit name wins; auto maps the device type (nccl, xccl, gloo)."""
    if override != "auto":
        return override
    if device_type not in BACKENDS:
        raise ValueError(f"no default collective backend for device {device_type!r}: set parallel.backend")
    return BACKENDS[device_type]


# Dense bf16 peak FLOP/s per device, matched against the device name (first match wins; specific names first).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("MI300X", 1307e12),
    ("MI250X", 191.5e12),  # one GCD, which is what torch reports as a device
    ("Max 1550", 419e12),  # one tile (Aurora exposes tiles as devices)
)


def auto_device_type() -> str:
    """The accelerator this torch build has (xpu, cuda incl. ROCm, mps), else cpu."""
    if hasattr(torch, "accelerator") and torch.accelerator.is_available():
        return torch.accelerator.current_accelerator().type
    return "cpu"


class DeviceUnavailable(ValueError, RuntimeError):
    """trainer.device names a device this machine cannot use: a user error (ValueError, one line from `train`), and
    a RuntimeError as it always was."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`trainer.device`: "auto" or a device type. Accelerators get the local rank's index."""
    kind = auto_device_type() if name == "auto" else name
    if kind == "cpu":
        return torch.device("cpu")
    module = getattr(torch, kind, None)
    if module is None or not hasattr(module, "is_available"):
        raise DeviceUnavailable(
            f"trainer.device={name!r} asks for {kind}, which this torch build cannot use: "
            f"set trainer.device=auto or install a torch build for {kind}"
        )
    if not module.is_available():
        raise DeviceUnavailable(
            f"trainer.device={name!r} asks for {kind}, but torch.{kind}.is_available() is False on this machine "
            f"(no device, no driver, or a torch {torch.__version__} built without {kind}): set trainer.device=auto "
            f"(or cpu), or run where {kind} works"
        )
    device = torch.device(kind, local_rank) if kind != "mps" else torch.device("mps")
    if hasattr(module, "set_device") and kind != "mps":
        module.set_device(device)
    return device


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast on accelerators (fp32 master weights stay fp32), none on the CPU unless asked."""
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return None
    return torch.bfloat16


ATTENTION_KERNELS = ("cudnn", "flash", "efficient", "math")


def attention_kernels(names: list[str] | None) -> AbstractContextManager:
    """Allow only these SDPA kernels, tried in this order, while the context is open (compiled graphs keep the
    kernel chosen when they were traced inside it). None changes nothing."""
    if not names:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    member = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}
    backends = [getattr(SDPBackend, member.get(n, n.upper())) for n in names]
    try:
        return sdpa_kernel(backends, set_priority=True)
    except TypeError:  # torch < 2.6 has no priority order: restrict to the named kernels instead
        return sdpa_kernel(backends)


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def can_pin_memory(device: torch.device) -> bool:
    """Whether host batches for this device should be page-locked (which makes copies to it asynchronous)."""
    return device.type in ("cuda", "xpu")


def device_name(device: torch.device) -> str:
    module = getattr(torch, device.type, None)
    if device.type != "cpu" and hasattr(module, "get_device_name"):
        return module.get_device_name(device)
    return device.type


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of one device, or None where MFU is meaningless (CPU) or the device is unknown."""
    if device.type == "cpu":
        return None
    name = device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def synchronize(device: torch.device) -> None:
    module = getattr(torch, device.type, None)
    if device.type != "cpu" and hasattr(module, "synchronize"):
        module.synchronize()


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak memory allocated by tensors on the device since start, in GiB (None on the CPU)."""
    module = getattr(torch, device.type, None)
    fn = getattr(module, "max_memory_allocated", None) if device.type != "cpu" else None
    return fn(device) / 2**30 if fn else None


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """Host and device RNG states (the device's is None on the CPU)."""
    module = getattr(torch, device.type, None)
    dev = module.get_rng_state(device) if device.type != "cpu" and hasattr(module, "get_rng_state") else None
    return {"cpu": torch.get_rng_state(), "device": dev}


def set_rng_state(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    module = getattr(torch, device.type, None)
    if state.get("device") is not None and device.type != "cpu" and hasattr(module, "set_rng_state"):
        module.set_rng_state(state["device"], device)
