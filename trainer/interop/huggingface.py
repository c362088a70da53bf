"""Checkpoints to and from the Hugging Face format: `export_hf` writes a directory that transformers loads
(config, sharded safetensors, tokenizer files); `import_hf` turns a local Llama-format directory into a model-only
checkpoint. The conversion maths lives in `models/hf.py`."""

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models import hf

from .. import checkpointing
from .common import (
    ExportError,
    anytrain_version,
    check_target,
    publish_dir,
    readable,
    resolve_checkpoint,
    tmp_dir,
    to_dtype,
)

DEFAULT_EOS = "<|endoftext|>"
INDEX = "model.safetensors.index.json"


def _eos_token(meta: dict[str, Any]) -> str:
    return (meta.get("tokenizer") or {}).get("eos_token") or DEFAULT_EOS


def _write_tokenizer(src: Path, tmp: Path, eos: str, max_len: int) -> int | None:
    """tokenizer.json plus the tokenizer_config.json that AutoTokenizer needs offline; returns the EOS id."""
    from tokenizers import Tokenizer

    shutil.copyfile(src, tmp / "tokenizer.json")
    eos_id = Tokenizer.from_file(str(src)).token_to_id(eos)
    if eos_id is None:
        raise ExportError(f"the checkpoint's tokenizer has no EOS token {eos!r} (meta.json tokenizer.eos_token)")
    # No BOS of its own: documents were separated by EOS in training, so EOS is what precedes a document.
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos,
        "bos_token": eos,
        "pad_token": eos,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (tmp / "special_tokens_map.json").write_text(json.dumps({k: eos for k in ("eos_token", "bos_token")}) + "\n")
    return eos_id


def _write_weights(state: dict[str, torch.Tensor], tmp: Path, max_shard_size: int | str) -> list[str]:
    from huggingface_hub import split_torch_state_dict_into_shards

    try:
        split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    except ValueError as e:
        raise ExportError(f"--max-shard-size {max_shard_size!r}: {e}") from e
    for name, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, tmp / name, metadata={"format": "pt"})
        readable(tmp / name)
    if split.is_sharded:
        index = {"metadata": {**split.metadata}, "weight_map": split.tensor_to_filename}
        (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return sorted(split.filename_to_tensors)


def export_hf(
    checkpoint: str | Path,
    out_dir: str | Path,
    dtype: str = "bf16",
    max_shard_size: int | str = "5GB",
    force: bool = False,
) -> Path:
    """An anytrain checkpoint -> a directory that `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer` load."""
    out = Path(out_dir)
    torch_dtype = to_dtype(dtype)
    source = resolve_checkpoint(checkpoint)
    check_target(out, force)  # fail before the (possibly long) work
    cfg, state, meta = checkpointing.load_model_state(source, verified=True)
    hf_state = hf.to_hf_state(state, cfg, torch_dtype)
    tmp = tmp_dir(out)
    try:
        eos_id = None
        if (source / checkpointing.TOKENIZER).is_file():
            eos_id = _write_tokenizer(source / checkpointing.TOKENIZER, tmp, _eos_token(meta), cfg.max_seq_len)
        config = hf.merge_hf_config(hf.to_hf_config(cfg, torch_dtype, eos_id), meta.get("hf_config"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        gen = {"bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id")}
        gen["pad_token_id"] = config.get("pad_token_id", gen["eos_token_id"])
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        files = _write_weights(hf_state, tmp, max_shard_size)
        interleaved = cfg.rope_style == "interleaved"
        provenance = {
            "source_checkpoint": str(source.resolve()),
            "step": meta.get("step"),
            "tokens_seen": meta.get("tokens_seen"),
            "dtype": hf.HF_DTYPE_NAMES[torch_dtype],
            "architecture": config["architectures"][0],
            "rope": {
                "source_style": cfg.rope_style,
                "exported_style": "half",
                "conversion": f"{'wq/wk rows and q_norm/k_norm' if cfg.qk_norm else 'wq/wk rows'} permuted per "
                "head from interleaved pairs (2i, 2i+1) to rotate_half pairs (i, i + head_dim/2)"
                if interleaved
                else "none (already rotate_half)",
            },
            "weight_files": files,
            "anytrain_version": anytrain_version(),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "anytrain_provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        return publish_dir(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors HF directory, sharded (with its index) or not."""
    index = hf_dir / INDEX
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (hf_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ExportError(f"{hf_dir}: no model.safetensors or {INDEX} (only safetensors weights are supported)")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (hf_dir / name).is_file():
            raise ExportError(f"{hf_dir}: shard {name} named in {INDEX} is missing")
        state.update(load_file(hf_dir / name))
    return state


def _hf_eos(hf_dir: Path) -> str | None:
    f = hf_dir / "tokenizer_config.json"
    if not f.is_file():
        return None
    eos = json.loads(f.read_text()).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


def import_hf(hf_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """A local Llama-format HF directory -> a model-only anytrain checkpoint (rope_style "half")."""
    src, out = Path(hf_dir), Path(out_dir)
    if not (src / "config.json").is_file():
        raise ExportError(f"{src}: no config.json (expected a Hugging Face model directory)")
    check_target(out, force)
    hf_config = json.loads((src / "config.json").read_text())
    cfg = hf.from_hf_config(hf_config)
    state = hf.from_hf_state(read_hf_weights(src), cfg)
    tokenizer = src / "tokenizer.json"
    meta = {
        "rope_style": cfg.rope_style,
        "hf_config": hf_config,  # an export of this checkpoint carries its token ids and other settings over
        "imported_from": {"path": str(src.resolve()), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "anytrain_version": anytrain_version(),
    }
    eos = _hf_eos(src)
    if eos:
        meta["tokenizer"] = {"kind": "file", "eos_token": eos}
    if out.is_file() and force:
        out.unlink()  # a directory is replaced by write_model_checkpoint's atomic rename, only once the new one is done
    return checkpointing.write_model_checkpoint(out, cfg, state, meta, tokenizer if tokenizer.is_file() else None)
