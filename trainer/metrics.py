"""Where metrics go: metrics.jsonl in the run directory, the console (log lines and a progress bar), and wandb."""

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import LoggerConfig


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_line(m: dict[str, Any], max_steps: int) -> str:
    parts = [f"step {m['step']}/{max_steps}"]
    for key, fmt in (("loss", "{:.4f}"), ("val_loss", "{:.4f}"), ("lr", "{:.2e}"), ("grad_norm", "{:.3f}")):
        if key in m:
            parts.append(f"{key} " + fmt.format(m[key]))
    if "tokens_per_s" in m:
        parts.append(f"{m['tokens_per_s'] / 1e3:.1f}K tok/s")
    if m.get("mfu") is not None:
        parts.append(f"mfu {100 * m['mfu']:.1f}%")
    if m.get("peak_mem_gib") is not None:
        parts.append(f"mem {m['peak_mem_gib']:.1f}GiB")
    if "eta_s" in m:
        parts.append(f"eta {_fmt_duration(m['eta_s'])}")
    return " | ".join(parts)


def truncate_metrics(path: str | Path, step: int) -> None:
    """Drop the lines after `step` (work a resume redoes), so the curve has no duplicate steps. Atomic."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by a crash: drop it
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


class MetricsLogger:
    """One call per log step fans a dict of numbers out to every sink. Only rank 0 should hold one."""

    def __init__(
        self,
        run_dir: str | Path,
        logger_cfg: LoggerConfig,
        config: dict,
        max_steps: int,
        start_step: int = 0,
        progress_bar: bool = True,
        enabled: bool = True,
    ):
        self.enabled = enabled
        self.max_steps = max_steps
        if not enabled:  # ranks other than 0 write nothing
            return
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1)  # line-buffered: a crash loses at most one line
        show_bar = progress_bar and sys.stderr.isatty()
        self._bar = tqdm(total=max_steps, initial=start_step, disable=not show_bar, dynamic_ncols=True, unit="step")
        self._wandb = _init_wandb(logger_cfg, config, run_dir) if logger_cfg.name == "wandb" else None

    def advance(self, steps: int = 1) -> None:
        if self.enabled:
            self._bar.update(steps)

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        clean["time"] = time.time()
        self._file.write(json.dumps(clean) + "\n")
        self._bar.write(format_line(metrics, self.max_steps), file=sys.stdout)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        self._bar.write(text, file=sys.stdout)

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _init_wandb(cfg: LoggerConfig, config: dict, run_dir: str | Path):
    import wandb  # imported lazily: it costs a second or two of start-up

    mode = cfg.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        tags=list(cfg.tags),
        config=config,
        dir=str(run_dir),
        name=Path(run_dir).name,
        mode=mode,
    )
