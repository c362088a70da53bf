"""`anytrain speedrun-report MULTIRUN_DIR`: the leaderboard of a speedrun (or any sweep) from its job directories.

Each job directory of a Hydra multirun (`MULTIRUN_DIR/<job num>/`) holds `config.yaml` (resolved), `metrics.jsonl`
and `.hydra/overrides.yaml`. Runs are ranked by their final held-out loss (lower is better), ties broken by the
median logged tokens/s (higher is better). Runs that failed, stopped early or never evaluated are listed below the
ranked ones, with the reason, and not ranked. Writes `leaderboard.md`, `leaderboard.csv` and `speedrun.png`
(held-out loss against tokens and against wall time, every run in one figure).
"""

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class RunResult:
    run: str
    path: Path
    overrides: str = ""
    """The job's command-line overrides that not every job of the sweep shares (what the sweep varied)."""
    override_list: list[str] = field(default_factory=list)
    optimizer: str = "?"
    lr: str = ""
    max_steps: int | None = None
    tokens_per_step: int | None = None
    final_val_loss: float | None = None
    tokens_per_s: float | None = None
    wall_time_s: float | None = None
    steps: int = 0
    target_step: int | None = None
    target_time_s: float | None = None
    status: str = "ok"
    val_curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, seconds since start, loss)
    train_curve: list[tuple[int, float, float]] = field(default_factory=list)

    @property
    def tokens(self) -> int | None:
        return self.steps * self.tokens_per_step if self.tokens_per_step else None

    @property
    def ranked(self) -> bool:
        return self.status == "ok"


def _job_dirs(root: Path) -> list[Path]:
    def key(p: Path):
        return (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)

    jobs = [
        p
        for p in root.iterdir()
        if p.is_dir() and any((p / f).exists() for f in ("config.yaml", "metrics.jsonl", ".hydra"))
    ]
    return sorted(jobs, key=key)


def _load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None


def _fmt_lr(optim: dict) -> str:
    lr = optim.get("lr")
    if optim.get("name") == "muon" and optim.get("muon_lr") is not None:
        return f"{optim['muon_lr']:g} (adamw {lr:g})"
    return f"{lr:g}" if isinstance(lr, (int, float)) else str(lr or "")


def read_run(path: Path, target_loss: float | None = None) -> RunResult:
    """One job directory's result; problems become its status, never an exception."""
    overrides = _load_yaml(path / ".hydra" / "overrides.yaml") or []
    r = RunResult(run=path.name, path=path, override_list=[str(o) for o in overrides])
    r.overrides = " ".join(r.override_list)
    cfg = _load_yaml(path / "config.yaml") or _load_yaml(path / ".hydra" / "config.yaml") or {}
    optim, trainer, data = cfg.get("optim") or {}, cfg.get("trainer") or {}, cfg.get("data") or {}
    r.optimizer = str(optim.get("name", "?"))
    for o in overrides:  # a run that failed before writing config.yaml still names its optimizer
        if str(o).startswith("optim="):
            r.optimizer = str(o).split("=", 1)[1] if r.optimizer == "?" else r.optimizer
    r.lr = _fmt_lr(optim) if optim else ""
    r.max_steps = trainer.get("max_steps")
    if isinstance(trainer.get("global_batch"), int) and isinstance(data.get("seq_len"), int):
        r.tokens_per_step = trainer["global_batch"] * data["seq_len"]
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        r.status = "failed: no metrics.jsonl"
        return r
    rows = []
    for line in metrics.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    if not rows:
        r.status = "failed: empty metrics.jsonl"
        return r
    t0 = rows[0].get("time")
    for row in rows:
        since = row["time"] - t0 if t0 is not None and "time" in row else math.nan
        if "val_loss" in row and row["val_loss"] is not None:
            r.val_curve.append((row["step"], since, float(row["val_loss"])))
        if "loss" in row:
            r.train_curve.append((row["step"], since, float(row["loss"])))
    r.steps = max(row.get("step", 0) for row in rows)
    speeds = [row["tokens_per_s"] for row in rows if isinstance(row.get("tokens_per_s"), (int, float))]
    r.tokens_per_s = statistics.median(speeds) if speeds else None
    if t0 is not None and "time" in rows[-1]:
        r.wall_time_s = rows[-1]["time"] - t0
    if target_loss is not None:
        hit = next(((s, t) for s, t, v in r.val_curve if v <= target_loss), None)
        if hit:
            r.target_step, r.target_time_s = hit
    final = [v for s, _, v in r.val_curve if s == r.steps]
    if not final:
        r.status = f"no held-out loss at its last step ({r.steps})"
    elif not math.isfinite(final[-1]):
        r.final_val_loss = final[-1]
        r.status = "failed: non-finite held-out loss"
    elif r.max_steps is not None and r.steps < r.max_steps:
        r.final_val_loss = final[-1]
        r.status = f"stopped at step {r.steps} of {r.max_steps}"
    else:
        r.final_val_loss = final[-1]
    return r


def collect(multirun_dir: str | Path, target_loss: float | None = None) -> list[RunResult]:
    """Every job of MULTIRUN_DIR: ranked ones first (by final held-out loss, then tokens/s), then the others."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory: give the folder of a multirun (multirun/<date>/<time>)")
    jobs = _job_dirs(root)
    if not jobs:
        raise ValueError(
            f"{root} holds no run directories (sub-folders with config.yaml or metrics.jsonl): give the folder that "
            f"`train -m ...` printed, e.g. multirun/<date>/<time>"
        )
    runs = [read_run(j, target_loss) for j in jobs]
    basis = [r for r in runs if r.ranked] if sum(r.ranked for r in runs) > 1 else runs
    shared = set.intersection(*(set(r.override_list) for r in basis)) if len(basis) > 1 else set()
    for r in runs:
        r.overrides = " ".join(o for o in r.override_list if o not in shared)
    ranked = sorted((r for r in runs if r.ranked), key=lambda r: (r.final_val_loss, -(r.tokens_per_s or 0.0)))
    return ranked + [r for r in runs if not r.ranked]


def _num(x: float | None, fmt: str) -> str:
    return "" if x is None else fmt.format(x)


COLUMNS = [
    "rank",
    "run",
    "optimizer",
    "lr",
    "final val loss",
    "tokens/s",
    "wall time (s)",
    "steps",
    "tokens",
    "steps to target",
    "time to target (s)",
    "overrides",
    "status",
]


def rows_of(runs: list[RunResult]) -> list[list[str]]:
    out = []
    for i, r in enumerate(runs):
        out.append(
            [
                str(i + 1) if r.ranked else "-",
                r.run,
                r.optimizer,
                r.lr,
                _num(r.final_val_loss, "{:.4f}"),
                _num(r.tokens_per_s, "{:.0f}"),
                _num(r.wall_time_s, "{:.1f}"),
                str(r.steps),
                "" if r.tokens is None else str(r.tokens),
                "" if r.target_step is None else str(r.target_step),
                _num(r.target_time_s, "{:.1f}"),
                r.overrides,
                r.status,
            ]
        )
    return out


def to_markdown(runs: list[RunResult], target_loss: float | None = None) -> str:
    head = "# Speedrun leaderboard\n\nRanked by final held-out loss (lower is better), ties by tokens/s (median).\n"
    if target_loss is not None:
        head += f"Target held-out loss: {target_loss:g} (first evaluation at or below it).\n"
    lines = [head, "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows_of(runs):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"


def write_csv(runs: list[RunResult], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows_of(runs))


def plot(runs: list[RunResult], path: Path) -> None:
    """Held-out loss against tokens (left) and against wall time (right). Runs evaluated only at the start and the
    end also show their training loss, thin and dashed, so that the shape of the race is visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tok, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, r in enumerate(runs):
        color = f"C{i % 10}"
        label = f"{r.run}: {r.optimizer} lr {r.lr}" + ("" if r.ranked else " (unranked)")
        per_step = r.tokens_per_step or 1
        if r.val_curve:
            steps, times, vals = zip(*r.val_curve)
            ax_tok.plot([s * per_step for s in steps], vals, "o-", color=color, label=label)
            ax_time.plot(times, vals, "o-", color=color, label=label)
        if len(r.val_curve) < 3 and r.train_curve:
            steps, times, vals = zip(*r.train_curve)
            ax_tok.plot([s * per_step for s in steps], vals, "--", color=color, alpha=0.4, linewidth=1)
            ax_time.plot(times, vals, "--", color=color, alpha=0.4, linewidth=1)
    ax_tok.set_xlabel("tokens" if any(r.tokens_per_step for r in runs) else "steps")
    ax_time.set_xlabel("wall time (s)")
    for ax in (ax_tok, ax_time):
        ax.set_ylabel("held-out loss (dashed: training loss)")
        ax.grid(alpha=0.3)
    ax_tok.legend(fontsize=8)
    fig.suptitle("Speedrun: held-out loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def speedrun_report(multirun_dir: str | Path, target_loss: float | None = None, out_dir: str | Path | None = None):
    """Write leaderboard.md, leaderboard.csv and speedrun.png into out_dir (default: MULTIRUN_DIR); return the
    Markdown and the runs."""
    runs = collect(multirun_dir, target_loss)
    out = Path(out_dir) if out_dir else Path(multirun_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(runs, target_loss)
    (out / "leaderboard.md").write_text(markdown)
    write_csv(runs, out / "leaderboard.csv")
    plot(runs, out / "speedrun.png")
    return markdown, runs
