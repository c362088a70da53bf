"""The learning-rate range test: an exponential LR sweep with the schedule switched off.

The LR of step i is init_lr * (max_lr / init_lr) ** (i / (steps - 1)); the sweep stops early once a bias-corrected
EMA of the loss exceeds stop_factor times its best. The analysis smooths the raw loss with a centered running median
(which drops a one-step spike) and a centered mean, both window_fraction of the sweep wide, so the curve does not lag.
The blow-up is the first rise above the running minimum, after the curve has made half its drop, that is larger than
the noise and than `rise` of the drop so far and lasts `persist` steps. The suggestion is the LR of the lowest smoothed
loss before the blow-up, divided by suggest_divisor (1): on the embedded default that LR is the best one of a short
training. Files are written only for a usable curve, so a failed sweep leaves nothing that looks like a result.
"""

import csv
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class LRFinderConfig:
    enabled: bool = False
    """Run the range test instead of training (what `+experiment=lr_find` sets)."""
    init_lr: float = 1e-6
    """First LR of the sweep."""
    max_lr: float = 1.0
    """Last LR of the sweep."""
    steps: int = 100
    """Optimizer steps of the sweep (each a full global batch)."""
    beta: float = 0.98
    """EMA factor of the loss the sweep's early stop watches (the analysis does not use it)."""
    stop_factor: float = 4.0
    """Stop once the EMA of the loss exceeds this multiple of its best."""
    window_fraction: float = 0.05
    """Width of the centered median and mean filters, as a fraction of lr_find.steps (odd, at least 3 points)."""
    persist: int = 3
    """Consecutive steps a rise must last to be the blow-up (a spike the model recovers from is not one)."""
    rise: float = 0.1
    """A blow-up rises above the running minimum by more than this fraction of the loss drop so far."""
    suggest_divisor: float = 1.0
    """The suggestion is the LR of the lowest smoothed loss divided by this (raise it for a safety margin)."""


class LRFinderError(ValueError):
    """The sweep gave no usable suggestion (a ValueError, so `train` reports it in one line and exits 2)."""


@dataclass
class Suggestion:
    suggested_lr: float
    blowup_lr: float
    min_loss_lr: float
    steps_run: int


def swept_lr(i: int, cfg: LRFinderConfig) -> float:
    return cfg.init_lr * (cfg.max_lr / cfg.init_lr) ** (i / max(1, cfg.steps - 1))


def validate_finder(cfg: LRFinderConfig) -> None:
    if not 0 < cfg.init_lr < cfg.max_lr:
        raise ValueError(f"lr_find needs 0 < init_lr < max_lr, got {cfg.init_lr} and {cfg.max_lr}")
    if cfg.steps < 10:
        raise ValueError(f"lr_find.steps={cfg.steps} is too few for a curve: use at least 10")
    if not 0 < cfg.beta < 1 or cfg.stop_factor <= 1:
        raise ValueError("lr_find needs 0 < beta < 1 and stop_factor > 1")
    if not 0 < cfg.window_fraction <= 0.5 or cfg.persist < 1 or cfg.rise <= 0 or cfg.suggest_divisor <= 0:
        raise ValueError("lr_find needs 0 < window_fraction <= 0.5, persist >= 1, rise > 0 and suggest_divisor > 0")


def smooth(losses: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (the sweep's early stop; it lags, so the analysis does not use it)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def window(cfg: LRFinderConfig) -> int:
    """Filter width in points: scaled to the sweep so that it covers the same span of log10(lr) at any length."""
    w = max(3, round(cfg.steps * cfg.window_fraction))
    return w if w % 2 else w + 1


def centered_smooth(losses: list[float], width: int) -> np.ndarray:
    """Running median, then running mean, both centered (no lag) and truncated at the ends. The median drops any
    run of fewer than width/2 outliers; the mean takes out the remaining step-to-step noise."""
    y = np.asarray(losses, dtype=float)
    h = width // 2
    med = np.array([np.median(y[max(0, i - h) : i + h + 1]) for i in range(len(y))])
    return np.array([med[max(0, i - h) : i + h + 1].mean() for i in range(len(y))])


def find_blowup(raw: np.ndarray, smoothed: np.ndarray, cfg: LRFinderConfig, stopped_early: bool) -> int | None:
    """Index of the first lasting rise of the smoothed curve, or None."""
    drop = smoothed[0] - smoothed.min()
    # Before the curve has made half its drop it is flat and noisy, and any wiggle would pass for a rise.
    start = int(np.argmax(smoothed <= smoothed[0] - drop / 2))
    running_min = np.minimum.accumulate(smoothed)
    noise = 1.4826 * np.median(np.abs(raw - smoothed))  # robust sigma of the raw loss around the curve
    tolerance = np.maximum(cfg.rise * (smoothed[0] - running_min), 3 * noise)
    above = smoothed > running_min + tolerance
    for i in range(start, len(smoothed)):
        lasting = above[i : i + cfg.persist]
        # A rise running into the end counts when the sweep stopped on it (its EMA passed stop_factor x best).
        if lasting.all() and (len(lasting) == cfg.persist or stopped_early):
            return i
    return None


def analyse(lrs: list[float], losses: list[float], cfg: LRFinderConfig) -> tuple[list[float], Suggestion]:
    """Smoothed curve and the suggestion, or LRFinderError naming what is wrong with the curve. A sweep that
    ended on a NaN or Inf is analysed up to it, as one stopped early: the blow-up must come before it."""
    finite = next((i for i, x in enumerate(losses) if not math.isfinite(x)), len(losses))
    nan_end = finite < len(losses)
    where = f"the loss became {losses[finite]} at lr {lrs[finite]:.3g} (step {finite + 1})" if nan_end else ""
    lrs, losses = lrs[:finite], losses[:finite]
    if len(losses) < 3:
        raise LRFinderError(f"{where or 'the sweep stopped'} after only {len(losses)} steps: lower lr_find.init_lr")
    smoothed = centered_smooth(losses, window(cfg))
    raw = np.asarray(losses, dtype=float)
    stopped_early = nan_end or len(losses) < cfg.steps
    blowup = find_blowup(raw, smoothed, cfg, stopped_early=stopped_early)
    if blowup is None:
        if nan_end:
            raise LRFinderError(
                f"{where}, before the curve blew up gracefully: lower lr_find.init_lr/max_lr, or check the data "
                f"and model"
            )
        fix = "lower lr_find.init_lr or lr_find.max_lr" if stopped_early else "raise lr_find.max_lr or lr_find.steps"
        raise LRFinderError(f"no blow-up in the curve (lr {lrs[0]:.3g} .. {lrs[-1]:.3g}): {fix}")
    # The lowest loss before the blow-up: a model that recovers at still larger LRs may dip lower, but not stably.
    best = int(np.argmin(smoothed[:blowup]))
    noise = 1.4826 * float(np.median(np.abs(raw - smoothed)))
    if best == 0 or smoothed[0] - smoothed[best] <= 3 * noise:  # it never fell: no LR of the sweep trains
        raise LRFinderError(
            f"the loss never fell before it rose (lr {lrs[0]:.3g} .. {lrs[blowup]:.3g}): lower lr_find.init_lr if "
            f"it rose from the start, else check that the model learns at all (data, optimizer, frozen weights)"
        )
    suggestion = Suggestion(lrs[best] / cfg.suggest_divisor, lrs[blowup], lrs[best], len(lrs))
    return smoothed.tolist(), suggestion


def sweep(
    cfg: LRFinderConfig,
    base_lr: float,
    groups: list[dict],
    step: Callable[[], float],
    on_step: Callable[[int, float, float], None] | None = None,
) -> tuple[list[float], list[float]]:
    """Run the sweep: before each step set every group's LR to the swept value (keeping each group's ratio to
    optim.lr, e.g. Muon's own LR), call `step()` (one update, returning the global mean loss)."""
    ratios = [g.get("initial_lr", g["lr"]) / base_lr for g in groups]
    lrs, losses, best = [], [], math.inf
    for i in range(cfg.steps):
        lr = swept_lr(i, cfg)
        for g, r in zip(groups, ratios):
            g["lr"] = lr * r
        loss = step()
        lrs.append(lr)
        losses.append(loss)
        if on_step:
            on_step(i + 1, lr, loss)
        if not math.isfinite(loss):
            break
        smoothed = smooth(losses, cfg.beta)[-1]
        best = min(best, smoothed)
        if smoothed > cfg.stop_factor * best:
            break
    return lrs, losses


def write_results(run_dir: Path, lrs: list[float], losses: list[float], smoothed: list[float], s: Suggestion) -> None:
    """lr_find.csv, lr_find.png and, last, lr_find.json (what the report reads)."""
    run_dir = Path(run_dir)
    tmp = run_dir / "lr_find.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lr", "loss", "smoothed_loss"])
        w.writerows(zip(lrs, losses, smoothed))
    os.replace(tmp, run_dir / "lr_find.csv")
    plot_curves([(run_dir.name, lrs, losses, smoothed, s)], run_dir / "lr_find.png")
    (run_dir / "lr_find.json").write_text(json.dumps(asdict(s), indent=1))


def plot_curves(curves: list[tuple], out: Path) -> None:
    """One or several finder curves on one log-x plot, with min-loss, blow-up and suggested LRs marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, lrs, losses, smoothed, s in curves:
        (line,) = ax.plot(lrs, smoothed, label=f"{name}: suggested {s.suggested_lr:.2g}")
        color = line.get_color()
        if len(curves) == 1:
            ax.plot(lrs, losses, color=color, alpha=0.25, lw=0.8, label="raw loss")
            ax.axvline(s.min_loss_lr, color="gray", ls=":", label=f"min loss at {s.min_loss_lr:.2g}")
            ax.axvline(s.blowup_lr, color="red", ls="--", label=f"blow-up at {s.blowup_lr:.2g}")
        ax.axvline(s.suggested_lr, color=color, ls="-.", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    low = min(min(min(c[2]), min(c[3])) for c in curves)
    high = max(c[3][0] for c in curves)
    ax.set_ylim(low - 0.05 * (high - low), high + 0.3 * (high - low))
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)


def lr_report(multirun_dir: str | Path) -> str:
    """Collect the suggestion of every finder run under a multirun directory into one Markdown table
    (lr_report.md) and overlay their curves in one plot (lr_report.png). Failed runs are listed, not plotted."""
    import yaml

    root = Path(multirun_dir)
    jobs = sorted((p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra"), key=str)
    if not jobs:
        raise FileNotFoundError(f"{root} holds no run directories (no config.yaml below it): give a multirun dir")
    lines = [
        "| run | optimizer | global batch | seq len | model dim | suggested lr | blow-up lr | min-loss lr |",
        "|---|---|---|---|---|---|---|---|",
    ]
    curves, failed = [], []
    for job in jobs:
        cfg = yaml.safe_load((job / "config.yaml").read_text())
        name = str(job.relative_to(root)) if job != root else job.name
        cols = [name, cfg["optim"]["name"], cfg["trainer"]["global_batch"], cfg["data"]["seq_len"], cfg["model"]["dim"]]
        if not (job / "lr_find.json").is_file():
            failed.append(f"| {' | '.join(map(str, cols))} | failed | | |")
            continue
        s = Suggestion(**json.loads((job / "lr_find.json").read_text()))
        with open(job / "lr_find.csv") as f:
            rows = list(csv.DictReader(f))
        lrs, losses, smoothed = ([float(r[k]) for r in rows] for k in ("lr", "loss", "smoothed_loss"))
        curves.append((name, lrs, losses, smoothed, s))
        lines.append(
            f"| {' | '.join(map(str, cols))} | {s.suggested_lr:.3g} | {s.blowup_lr:.3g} | {s.min_loss_lr:.3g} |"
        )
    table = "\n".join(lines + failed) + "\n"
    (root / "lr_report.md").write_text(table)
    if curves:
        plot_curves(curves, root / "lr_report.png")
    return table
