"""trainer.attention_kernels: named SDPA kernels only, in the given order, while the context is open."""

import pytest
import torch
import torch.nn.functional as F

from trainer import distributed as env
from trainer.config import to_train_config, validate


def test_the_context_restricts_and_then_restores_sdpa():
    q = torch.randn(1, 2, 4, 8)
    with env.attention_kernels(["efficient"]), pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q, q, q)  # the CPU has no memory-efficient kernel: nothing else is allowed
    with env.attention_kernels(["cudnn", "math"]):  # cudnn cannot take a CPU call: it falls through to math
        out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, q, q, is_causal=True))


def test_unknown_kernel_names_are_a_config_error(compose):
    cfg = to_train_config(compose("trainer.attention_kernels=[cudnn,flash2]"))
    with pytest.raises(ValueError, match=r"attention_kernels has \['flash2'\]: choose from"):
        validate(cfg, 1)
