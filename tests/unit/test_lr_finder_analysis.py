"""The LR finder's analysis on synthetic curves and on a real sweep of the embedded default: no lag, no false
blow-up on a recovered spike, and a suggestion in the best region."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from trainer.lr_finder import LRFinderConfig, LRFinderError, analyse, centered_smooth, smooth, swept_lr, window

CURVE = Path(__file__).parent / "data" / "lr_find_default_curve.json"


def sweep_lrs(cfg: LRFinderConfig, n: int | None = None) -> list[float]:
    return [swept_lr(i, cfg) for i in range(cfg.steps if n is None else n)]


def u_curve(lrs: list[float], best: float, noise: float = 0.0, seed: int = 0) -> list[float]:
    """Flat at tiny LRs, falling over two decades to its minimum at `best`, then rising steeply."""
    rng = np.random.default_rng(seed)
    out = []
    for lr in lrs:
        d = math.log10(lr / best)
        fall = 2.5 / (1 + math.exp(4 * (d + 1)))  # the descent, centred a decade below the best
        out.append(6.0 + fall + (3.0 * d**2 if d > 0 else 0.0) + noise * rng.standard_normal())
    return out


def test_window_scales_with_the_sweep_length():
    assert [window(LRFinderConfig(steps=n)) for n in (10, 60, 100, 200, 400)] == [3, 3, 5, 11, 21]


def test_smoothed_curve_follows_a_step_change_without_lag():
    cfg = LRFinderConfig(steps=100)
    raw = [8.0] * 50 + [6.0] * 50
    smoothed = centered_smooth(raw, window(cfg))
    h = window(cfg) // 2
    # Halfway at the step itself and exactly on the raw curve two half-windows from it (median, then mean).
    assert smoothed[49] > 7.0 > smoothed[50]
    assert all(smoothed[i] == raw[i] for i in range(100) if abs(i - 49.5) > 2 * h)
    # The sweep's EMA (beta 0.98), which the analysis used to read, is still far from 6 thirty steps later.
    assert smooth(raw, cfg.beta)[80] > 6.5


def test_a_single_recovered_spike_is_not_a_blowup():
    cfg = LRFinderConfig(steps=100)
    lrs = sweep_lrs(cfg)
    losses = u_curve(lrs, best=1e-2)
    spike = next(i for i, lr in enumerate(lrs) if lr > 2e-3)  # mid-descent, past half of the drop
    losses[spike] += 2.0
    smoothed, s = analyse(lrs, losses, cfg)
    assert s.blowup_lr > 1e-2 and 7e-3 < s.suggested_lr < 1.5e-2
    assert abs(smoothed[spike] - u_curve(lrs, best=1e-2)[spike]) < 0.1  # the spike left no mark on the curve
    # Without the later rise the spike alone never counts as one.
    falling = [x - 1e-3 * i for i, x in enumerate(u_curve(lrs, best=10.0))]
    falling[60] += 2.0
    with pytest.raises(LRFinderError, match="no blow-up"):
        analyse(lrs, falling, cfg)


def test_a_rise_must_last_persist_steps():
    cfg = LRFinderConfig(steps=100)
    lrs = sweep_lrs(cfg)
    falling = [8.0 - 0.02 * i for i in range(100)]
    bump = [x + (1.0 if 70 <= i < 72 else 0.0) for i, x in enumerate(falling)]  # two steps, then back on course
    with pytest.raises(LRFinderError, match="no blow-up"):
        analyse(lrs, bump, LRFinderConfig(steps=100, window_fraction=0.1))  # a window of 5 drops two outliers
    lasting = [x + (1.0 if i >= 70 else 0.0) for i, x in enumerate(falling)]
    _, s = analyse(lrs, lasting, cfg)
    h = window(cfg) // 2  # the centered mean starts the rise half a window early
    assert lrs[70 - h] <= s.blowup_lr <= lrs[70] and lrs[69 - h] <= s.min_loss_lr <= lrs[69]


@pytest.mark.parametrize("seed", range(5))
def test_suggestion_lands_in_the_best_region_of_a_noisy_u_curve(seed):
    cfg = LRFinderConfig(steps=100)
    lrs = sweep_lrs(cfg)
    _, s = analyse(lrs, u_curve(lrs, best=1e-2, noise=0.05, seed=seed), cfg)
    assert 10**-2.3 < s.suggested_lr < 10**-1.7  # within 0.3 decade of the best
    assert s.suggested_lr < s.blowup_lr < 0.1


def test_sweep_stopped_on_a_blowup_at_its_last_steps():
    cfg = LRFinderConfig(steps=100)
    lrs = sweep_lrs(cfg, 62)
    losses = [8.0 - 0.03 * i for i in range(60)] + [12.0, 30.0]  # the sweep's stop rule ended it here
    _, s = analyse(lrs, losses, cfg)
    h = window(cfg) // 2
    assert lrs[60 - h] <= s.blowup_lr <= lrs[60] and lrs[59 - h] <= s.suggested_lr <= lrs[59]


def test_suggest_divisor():
    cfg = LRFinderConfig(steps=100, suggest_divisor=3.0)
    lrs = sweep_lrs(cfg)
    _, s = analyse(lrs, u_curve(lrs, best=1e-2), cfg)
    assert s.suggested_lr == pytest.approx(s.min_loss_lr / 3)


def test_real_sweep_of_the_embedded_default():
    """A real `train +experiment=lr_find` curve (raw loss bouncing by 0.1-0.2 near the turn): 150-step trainings
    put the best LR at 1e-2, with 3e-3 and 3e-2 0.04 and 0.18 nats worse."""
    curve = json.loads(CURVE.read_text())
    cfg = LRFinderConfig()
    smoothed, s = analyse(curve["lr"], curve["loss"], cfg)
    assert 5e-3 <= s.suggested_lr <= 2e-2
    assert s.suggested_lr < s.blowup_lr < 0.1
    assert len(smoothed) == len(curve["lr"]) == s.steps_run


def test_a_curve_that_never_fell_gets_no_suggestion():
    cfg = LRFinderConfig()
    lrs = sweep_lrs(cfg)
    with pytest.raises(LRFinderError, match="never fell"):  # init_lr already too high: it rises from the start
        analyse(lrs, [5 + 0.05 * i for i in range(cfg.steps)], cfg)
    for seed in range(20):  # a model that does not learn: noise only
        rng = np.random.default_rng(seed)
        with pytest.raises(LRFinderError):
            analyse(lrs, list(10 + 0.05 * rng.standard_normal(cfg.steps)), cfg)


def test_a_nan_after_the_blowup_keeps_the_curve_before_it():
    cfg = LRFinderConfig()
    curve = u_curve(sweep_lrs(cfg), best=1e-2)
    end = next(i for i, lr in enumerate(sweep_lrs(cfg)) if lr > 3e-2)  # well past the turn
    _, s = analyse(sweep_lrs(cfg, end + 1), [*curve[:end], float("nan")], cfg)
    assert 3e-3 < s.suggested_lr < 3e-2
    with pytest.raises(LRFinderError, match="became nan .* before the curve blew up"):
        analyse(sweep_lrs(cfg, 41), [*curve[:40], float("nan")], cfg)
