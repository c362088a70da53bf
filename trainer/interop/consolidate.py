"""A checkpoint's model as one safetensors file with anytrain's parameter names."""

import json
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from .. import checkpointing
from .common import ExportError, anytrain_version, readable, resolve_checkpoint, to_dtype


def consolidate(checkpoint: str | Path, out_file: str | Path, dtype: str = "fp32", force: bool = False) -> Path:
    """A checkpoint's model -> one safetensors file with anytrain's parameter names (loadable with
    `model.load_state_dict(safetensors.torch.load_file(OUT_FILE))`); step and architecture in its header."""
    out = Path(out_file)
    if out.exists() and not force:
        raise ExportError(f"{out} exists: choose another path or pass --force to replace it")
    torch_dtype = to_dtype(dtype)
    source = resolve_checkpoint(checkpoint)
    cfg, state, meta = checkpointing.load_model_state(source, verified=True)
    tensors = {k: v.to(torch_dtype).contiguous() for k, v in state.items()}
    header = {
        "format": "pt",
        "step": str(meta.get("step")),
        "rope_style": cfg.rope_style,
        "model_config": json.dumps(meta["model"]),
        "tokens_seen": str(meta.get("tokens_seen")),
        "source_checkpoint": str(source.resolve()),
        "anytrain_version": anytrain_version(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=header)
        readable(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_consolidated_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()
