"""`anytrain plot RUN... [--out FILE]`: the training and held-out loss of several runs overlaid in one PNG, the way
people compare runs: by looking. Each run keeps one colour, its training loss a thin line and its held-out loss
dots joined by a thicker one. The x axis is tokens when every run's config gives its tokens per step, else steps."""

from pathlib import Path

from .reports import RunResult, read_run


def _labels(paths: list[Path]) -> list[str]:
    """The run directory's name, with as many parent folders as it takes to tell the runs apart."""
    for depth in range(1, 6):
        labels = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def load_runs(run_dirs: list[str | Path]) -> list[RunResult]:
    """Each run's curves; a directory with no metrics to draw is an error naming it."""
    paths = [Path(d) for d in run_dirs]
    runs = [read_run(p) for p in paths]
    empty = [str(p) for p, r in zip(paths, runs) if not (r.train_curve or r.val_curve)]
    if empty:
        raise ValueError(
            f"no loss to plot in {', '.join(empty)}: give run directories that hold a metrics.jsonl written by train"
        )
    for r, label in zip(runs, _labels(paths)):
        r.run = label
    return runs


def plot_runs(run_dirs: list[str | Path], out: str | Path, x: str = "auto") -> Path:
    """Write the overlay of the runs' loss curves to `out` (PNG); x is "steps", "tokens" or "auto"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(run_dirs)
    if x not in ("auto", "steps", "tokens"):
        raise ValueError(f"--x must be auto, steps or tokens, got {x!r}")
    if x == "tokens" and not all(r.tokens_per_step for r in runs):
        raise ValueError("--x tokens needs every run's config.yaml (global_batch and seq_len): use --x steps")
    by_tokens = x == "tokens" or (x == "auto" and all(r.tokens_per_step for r in runs))
    fig, ax = plt.subplots(figsize=(9, 5))
    for i, r in enumerate(runs):
        color, scale = f"C{i % 10}", (r.tokens_per_step if by_tokens else 1)
        if r.train_curve:
            steps, _, losses = zip(*r.train_curve)
            ax.plot(
                [s * scale for s in steps], losses, "-", color=color, linewidth=1, alpha=0.6, label=f"{r.run} train"
            )
        if r.val_curve:
            steps, _, losses = zip(*r.val_curve)
            ax.plot([s * scale for s in steps], losses, "o-", color=color, linewidth=2, label=f"{r.run} held-out")
    ax.set_xlabel("tokens" if by_tokens else "steps")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
