"""Checkpoint I/O around the Hugging Face format: export, import, and consolidation into one safetensors file.

The conversion maths lives in `models/hf.py`; this module reads checkpoints, writes files, and writes them atomically
(into a hidden temp path that is renamed at the end, so a crash never leaves a half export behind).
"""

import json
import os
import shutil
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from models import hf

from . import checkpoint as ckpt

DEFAULT_EOS = "<|endoftext|>"
INDEX = "model.safetensors.index.json"


class ExportError(ValueError):
    """Input that cannot be exported, imported or consolidated, with the reason."""


def _anytrain_version() -> str:
    try:
        return version("anytrain")
    except PackageNotFoundError:
        return "unknown"


def _dtype(name: str) -> torch.dtype:
    if name not in hf.DTYPES:
        raise ExportError(f"--dtype must be one of {sorted(hf.DTYPES)}, got {name!r}")
    return hf.DTYPES[name]


def _check_target(out: Path, force: bool) -> None:
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        if not force:
            raise ExportError(f"{out} exists and is not empty: choose another path or pass --force to replace it")


def _publish_dir(tmp: Path, out: Path, force: bool) -> Path:
    """Rename the finished tmp directory to out, replacing an empty (or, with force, any) existing one."""
    _check_target(out, force)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return out


def _readable(path: Path) -> None:
    # safetensors creates files 0600; an export is meant to be shared like the rest of the directory.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _tmp_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _source(path: str | Path) -> Path:
    try:
        return ckpt.resolve_load_path(path)
    except ckpt.CheckpointError as e:  # its message is worded for the training config key; here it is an argument
        raise ExportError(str(e).removeprefix("checkpoint.load=")) from None


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
        _readable(tmp / name)
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
    torch_dtype = _dtype(dtype)
    source = _source(checkpoint)
    _check_target(out, force)  # fail before the (possibly long) work
    cfg, state, meta = ckpt.load_model_state(source)
    hf_state = hf.to_hf_state(state, cfg, torch_dtype)
    tmp = _tmp_dir(out)
    try:
        eos_id = None
        if (source / ckpt.TOKENIZER).is_file():
            eos_id = _write_tokenizer(source / ckpt.TOKENIZER, tmp, _eos_token(meta), cfg.max_seq_len)
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
            "anytrain_version": _anytrain_version(),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "anytrain_provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        return _publish_dir(tmp, out, force)
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
    _check_target(out, force)
    hf_config = json.loads((src / "config.json").read_text())
    cfg = hf.from_hf_config(hf_config)
    state = hf.from_hf_state(read_hf_weights(src), cfg)
    tokenizer = src / "tokenizer.json"
    meta = {
        "rope_style": cfg.rope_style,
        "hf_config": hf_config,  # an export of this checkpoint carries its token ids and other settings over
        "imported_from": {"path": str(src.resolve()), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "anytrain_version": _anytrain_version(),
    }
    eos = _hf_eos(src)
    if eos:
        meta["tokenizer"] = {"kind": "file", "eos_token": eos}
    if out.is_file() and force:
        out.unlink()  # a directory is replaced by write_model_checkpoint's atomic rename, only once the new one is done
    return ckpt.write_model_checkpoint(out, cfg, state, meta, tokenizer if tokenizer.is_file() else None)


def consolidate(checkpoint: str | Path, out_file: str | Path, dtype: str = "fp32", force: bool = False) -> Path:
    """A checkpoint's model -> one safetensors file with anytrain's parameter names (loadable with
    `model.load_state_dict(safetensors.torch.load_file(OUT_FILE))`); step and architecture in its header."""
    out = Path(out_file)
    if out.exists() and not force:
        raise ExportError(f"{out} exists: choose another path or pass --force to replace it")
    torch_dtype = _dtype(dtype)
    source = _source(checkpoint)
    cfg, state, meta = ckpt.load_model_state(source)
    tensors = {k: v.to(torch_dtype).contiguous() for k, v in state.items()}
    header = {
        "format": "pt",
        "step": str(meta.get("step")),
        "rope_style": cfg.rope_style,
        "model_config": json.dumps(meta["model"]),
        "tokens_seen": str(meta.get("tokens_seen")),
        "source_checkpoint": str(source.resolve()),
        "anytrain_version": _anytrain_version(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=header)
        _readable(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_consolidated_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()
