"""Checkpoint averaging (WSM-style, `anytrain average CKPT... OUT`): a uniform, exponential (EMA) or explicitly
weighted average of several checkpoints of one run, written as a model-only checkpoint that `export-hf` and
`train checkpoint.load=OUT` take like an import.

- Inputs are step-N directories, or run / checkpoints directories standing for all their complete checkpoints;
  they are ordered by step (oldest first), whatever order the shell's glob gave, and `last` keeps the newest K.
- Every input must be complete and match its content digests before anything is averaged, and all must share the
  architecture (files.ARCH_FIELDS of meta["model"]) and the tokenizer.json content of the newest one.
- Weights: uniform (1/n), ema (w_i ∝ decay^(n-1-i) over the checkpoints in step order: the newest weighs most), or
  an explicit list in step order; always normalized to sum 1.
- The sum is accumulated in fp64 and cast to fp32 once at the end: n fp32 additions would each round (an error
  growing with n, and dependent on the order), while fp64 keeps the sum exact to far below fp32's resolution, so
  the result is the correctly rounded weighted mean. Memory: the accumulator (fp64: twice the fp32 model) plus one
  checkpoint; `accumulate="fp32"` halves the accumulator for models where that matters.
"""

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models import ModelConfig

from .. import checkpointing
from ..checkpointing.files import ARCH_FIELDS, load_candidates, verify_or_raise
from ..interop.common import anytrain_version, check_target

log = logging.getLogger(__name__)

ACCUMULATE = {"fp64": torch.float64, "fp32": torch.float32}
DEFAULT_DECAY = 0.9


class AverageError(ValueError):
    """Arguments or checkpoints that cannot be averaged, with the reason."""


def select_checkpoints(inputs: Sequence[str | Path], last: int | None = None) -> list[Path]:
    """The checkpoints that `inputs` name, oldest first: a step-N directory as is, a run or checkpoints directory
    as all its complete checkpoints (unfinished saves are skipped with a warning, as a resume does). `last`: only
    the newest that many. A checkpoint named twice is an error (it would silently count double)."""
    found: dict[Path, Path] = {}
    for given in inputs:
        try:
            candidates = load_candidates(given)
        except checkpointing.CheckpointError as e:  # worded for the config key; here it is an argument
            raise AverageError(str(e).removeprefix("checkpoint.load=")) from None
        for p in candidates:
            key = p.resolve()
            if key in found:
                raise AverageError(f"checkpoint {p} is named twice (also as {found[key]}): name each one once")
            found[key] = p
    paths = sorted(found.values(), key=lambda p: checkpointing.read_meta(p).get("step", 0))
    if last is not None:
        if last < 1 or last > len(paths):
            raise AverageError(f"--last {last}: the inputs hold {len(paths)} checkpoint(s)")
        paths = paths[-last:]
    return paths


def average_weights(kind: str, steps: Sequence[int], decay: float | None = None) -> list[float]:
    """The normalized weights of checkpoints at `steps` (oldest first): kind "uniform", "ema" (w_i ∝
    decay^(n-1-i)) or a comma-separated list of non-negative numbers, one per checkpoint in step order."""
    n = len(steps)
    if decay is not None and kind != "ema":
        raise AverageError("--decay applies to --weights ema only")
    if kind != "uniform" and len(set(steps)) < n:  # the order decides the weights, and equal steps have none
        raise AverageError(f"checkpoints of equal steps ({sorted(steps)}): weights by step order need distinct steps")
    if kind == "uniform":
        raw = [1.0] * n
    elif kind == "ema":
        decay = DEFAULT_DECAY if decay is None else decay
        if not 0 < decay <= 1:
            raise AverageError(f"--decay must be in (0, 1], got {decay}")
        raw = [decay ** (n - 1 - i) for i in range(n)]
    else:
        try:
            raw = [float(x) for x in kind.split(",")]
        except ValueError:
            raise AverageError(f"--weights must be uniform, ema or numbers like 0.2,0.3,0.5, got {kind!r}") from None
        if len(raw) != n:
            raise AverageError(f"--weights has {len(raw)} value(s) for {n} checkpoint(s) (given in step order)")
        if any(not math.isfinite(w) or w < 0 for w in raw) or sum(raw) <= 0:
            raise AverageError(f"--weights must be non-negative with a positive sum, got {kind!r}")
    total = sum(raw)
    return [w / total for w in raw]


def check_compatible(paths: Sequence[Path], metas: Sequence[dict[str, Any]]) -> None:
    """Every checkpoint has the architecture and the tokenizer.json of the newest (the last): one error naming the
    first that does not, and the fields."""
    ref, ref_meta = paths[-1], metas[-1]
    ref_tok = _tokenizer(ref)
    for p, meta in zip(paths[:-1], metas[:-1]):
        saved, want = meta["model"], ref_meta["model"]
        wrong = [n for n in ARCH_FIELDS if saved.get(n) != want.get(n)]
        if wrong:
            fields = ", ".join(f"model.{n}={saved.get(n)!r}" for n in wrong)
            theirs = ", ".join(f"{want.get(n)!r}" for n in wrong)
            raise checkpointing.CheckpointError(
                f"checkpoint {p} has {fields} but {ref} has {theirs}: only checkpoints of one architecture can be "
                f"averaged"
            )
        if _tokenizer(p) != ref_tok:
            raise checkpointing.CheckpointError(
                f"checkpoint {p} has another {checkpointing.TOKENIZER} than {ref}"
                f"{' (it has none)' if _tokenizer(p) is None else ''}: its embedding rows belong to other tokens, "
                f"and only checkpoints of one tokenizer can be averaged"
            )


def _tokenizer(path: Path) -> Any:
    """The parsed tokenizer.json (content, not bytes: the same tokenizer saved twice may differ in layout)."""
    f = path / checkpointing.TOKENIZER
    return json.loads(f.read_text()) if f.is_file() else None


def accumulate(paths: Sequence[Path], weights: Sequence[float], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """sum_i weights[i] * weights of paths[i], in `dtype`, cast to fp32; one checkpoint in memory at a time."""
    acc: dict[str, torch.Tensor] = {}
    for p, w in zip(paths, weights, strict=True):
        _, state, _ = checkpointing.load_model_state(p, verified=True)  # average() verified them all first
        if not acc:
            acc = {k: torch.zeros(v.shape, dtype=dtype) for k, v in state.items()}
        _check_shapes(p, state, acc)
        for k, v in state.items():
            acc[k].add_(v.to(dtype), alpha=w)
        del state
    for k in acc:  # one tensor at a time, so the fp64 and fp32 copies never coexist whole
        acc[k] = acc[k].float()
    return acc


def _check_shapes(path: Path, state: dict[str, torch.Tensor], acc: dict[str, torch.Tensor]) -> None:
    """A backstop behind check_compatible: the same tensors of the same shapes."""
    if state.keys() != acc.keys():
        diff = sorted(state.keys() ^ acc.keys())
        raise checkpointing.CheckpointError(f"checkpoint {path} holds other tensors ({', '.join(diff[:3])}, ...)")
    for k, v in state.items():
        if v.shape != acc[k].shape:
            shape, want = tuple(v.shape), tuple(acc[k].shape)
            raise checkpointing.CheckpointError(f"checkpoint {path} has {k} of shape {shape}, the others {want}")


def _check_out(out: Path, paths: Sequence[Path], force: bool) -> None:
    target = out.resolve()
    if any(target == p.resolve() or target in p.resolve().parents for p in paths):  # --force would delete them
        raise AverageError(f"{out} is or holds a checkpoint averaged: write the average elsewhere")
    if checkpointing.step_of(out) is not None and out.parent.name == checkpointing.CHECKPOINTS:
        # a resume would take it for the run's own newest checkpoint
        raise AverageError(f"{out} would pass for a checkpoint of the run: give it another name, e.g. avg-{out.name}")
    check_target(out, force)


def average(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    weights: str = "uniform",
    decay: float | None = None,
    last: int | None = None,
    accumulate_in: str = "fp64",
    force: bool = False,
) -> Path:
    """Average the checkpoints `inputs` name (see select_checkpoints, average_weights) into a model-only
    checkpoint at out_dir, with the newest's model config and tokenizer and meta["averaged"] saying what it is."""
    if accumulate_in not in ACCUMULATE:
        raise AverageError(f"--accumulate must be one of {sorted(ACCUMULATE)}, got {accumulate_in!r}")
    out = Path(out_dir)
    paths = select_checkpoints(inputs, last)
    _check_out(out, paths, force)  # before the (possibly long) work
    for p in paths:  # all intact before any is read for the sum
        verify_or_raise(p)
    metas = [checkpointing.read_meta(p) for p in paths]
    check_compatible(paths, metas)
    steps = [int(m.get("step", 0)) for m in metas]
    w = average_weights(weights, steps, decay)
    for p, m in zip(paths, metas):
        if not m.get("healthy", True):
            log.warning("checkpoint %s was saved during a run of skipped steps (meta.json healthy=false)", p)
    state = accumulate(paths, w, ACCUMULATE[accumulate_in])
    newest = metas[-1]
    cfg = ModelConfig(**newest["model"])
    meta = _out_meta(paths, metas, w, weights, decay, accumulate_in)
    if out.is_file() and force:
        out.unlink()  # a directory is replaced by write_model_checkpoint's atomic rename, once the new one is done
    tokenizer = paths[-1] / checkpointing.TOKENIZER
    return checkpointing.write_model_checkpoint(out, cfg, state, meta, tokenizer if tokenizer.is_file() else None)


def _out_meta(
    paths: Sequence[Path],
    metas: Sequence[dict[str, Any]],
    weights: Sequence[float],
    kind: str,
    decay: float | None,
    accumulate_in: str,
) -> dict[str, Any]:
    """What the average is: its sources, steps and weights; tokens_seen, tokenizer settings and HF config of the
    newest (export-hf reports the first and takes the others over)."""
    newest = metas[-1]
    method = kind if kind in ("uniform", "ema") else "explicit"
    sources = [
        {"path": str(p.resolve()), "step": m.get("step"), "weight": w, "tokens_seen": m.get("tokens_seen")}
        for p, m, w in zip(paths, metas, weights)
    ]
    averaged = {
        "method": method,
        "decay": (DEFAULT_DECAY if decay is None else decay) if method == "ema" else None,
        "accumulate": accumulate_in,
        "steps": [m.get("step") for m in metas],
        "weights": list(weights),
        "sources": sources,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta = {
        "rope_style": newest["model"].get("rope_style"),
        "tokenizer": newest.get("tokenizer"),
        "tokens_seen": newest.get("tokens_seen"),
        "hf_config": newest.get("hf_config"),
        "averaged": averaged,
        "anytrain_version": anytrain_version(),
    }
    return {k: v for k, v in meta.items() if v is not None}
