"""The learning-rate range test: an exponential LR sweep with the schedule switched off.

The LR of step i is init_lr * (max_lr / init_lr) ** (i / (steps - 1)). The loss is smoothed with a bias-corrected
EMA; the sweep stops early once the smoothed loss exceeds stop_factor times the best. The blow-up is the first
point where the (moving-averaged) slope of the smoothed loss against log10(lr) turns from negative to positive; the
suggestion is blow-up / 10. Files are written only for a usable curve, so a failed sweep leaves nothing that looks
like a result.
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
    """EMA factor of the loss smoothing."""
    stop_factor: float = 4.0
    """Stop once the smoothed loss exceeds this multiple of the best smoothed loss."""
    slope_window: int = 5
    """Points in the moving average of the slope (guards against noise crossings)."""


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
    if not 0 < cfg.beta < 1 or cfg.stop_factor <= 1 or cfg.slope_window < 1:
        raise ValueError("lr_find needs 0 < beta < 1, stop_factor > 1 and slope_window >= 1")


def smooth(losses: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def analyse(lrs: list[float], losses: list[float], cfg: LRFinderConfig) -> tuple[list[float], Suggestion]:
    """Smoothed curve and the suggestion, or LRFinderError naming what is wrong with the curve."""
    if not all(math.isfinite(x) for x in losses):
        first = next(i for i, x in enumerate(losses) if not math.isfinite(x))
        raise LRFinderError(
            f"the loss became {losses[first]} at lr {lrs[first]:.3g} (step {first + 1}) before the curve blew up "
            f"gracefully: lower lr_find.init_lr/max_lr, or check the data and model"
        )
    smoothed = smooth(losses, cfg.beta)
    x = np.log10(np.asarray(lrs))
    if len(x) < 3:
        raise LRFinderError("the sweep stopped after fewer than 3 steps: lower lr_find.init_lr")
    slope = np.gradient(np.asarray(smoothed), x)
    k = cfg.slope_window
    averaged = np.convolve(slope, np.ones(k) / k, mode="full")[: len(slope)]  # trailing moving average
    # Search after the steepest descent: at tiny LRs the curve is flat and its noisy slope crosses zero at random.
    steepest = int(np.argmin(averaged[: int(np.argmin(smoothed)) + 1]))
    blowup = next((i for i in range(steepest + 1, len(averaged)) if averaged[i - 1] < 0 <= averaged[i]), None)
    if blowup is None:
        raise LRFinderError(
            f"no blow-up in the curve (lr {lrs[0]:.3g} .. {lrs[-1]:.3g}): the loss never turned up; raise "
            f"lr_find.max_lr or lr_find.steps"
        )
    best = int(np.argmin(smoothed))
    return smoothed, Suggestion(lrs[blowup] / 10, lrs[blowup], lrs[best], len(lrs))


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
