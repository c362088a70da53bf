import pytest
import torch

from optim import ScheduleConfig, build_scheduler, lr_factor, schedule_phases


def factors(cfg: ScheduleConfig, total: int) -> list[float]:
    phases = schedule_phases(cfg, total)
    return [lr_factor(s, cfg, phases) for s in range(total)]


def test_cosine_key_steps():
    f = factors(ScheduleConfig(name="cosine", warmup_steps=10, min_lr_factor=0.1), 110)
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[59] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[9:], f[10:], strict=False))


def test_linear_key_steps():
    f = factors(ScheduleConfig(name="linear", warmup_steps=0, min_lr_factor=0.0), 100)
    assert f[0] == pytest.approx(0.99) and f[49] == pytest.approx(0.5) and f[-1] == pytest.approx(0.0)


def test_wsd_phases_and_values():
    cfg = ScheduleConfig(name="wsd", warmup_steps=20, decay_ratio=0.2, min_lr_factor=0.1)
    phases = schedule_phases(cfg, 1000)
    assert (phases.warmup, phases.stable, phases.decay) == (20, 780, 200)
    f = factors(cfg, 1000)
    assert f[19] == 1.0 and f[20] == 1.0 and f[799] == 1.0
    assert f[899] == pytest.approx(0.1 + 0.9 * 0.5)
    assert f[999] == pytest.approx(0.1)


def test_constant_is_flat_after_warmup():
    f = factors(ScheduleConfig(name="constant", warmup_steps=4), 50)
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and set(f[4:]) == {1.0}


@pytest.mark.parametrize(
    "cfg,total,match",
    [
        (ScheduleConfig(name="cosine", warmup_steps=200), 100, "schedule.warmup_steps=200 is longer than the run"),
        (ScheduleConfig(name="cosine", warmup_steps=100), 100, "no steps to decay"),
        (ScheduleConfig(name="wsd", warmup_steps=90, decay_ratio=0.2), 100, "wsd does not fit"),
        (ScheduleConfig(name="step"), 100, "schedule.name"),
    ],
)
def test_schedules_that_do_not_fit_are_errors(cfg, total, match):
    with pytest.raises(ValueError, match=match):
        schedule_phases(cfg, total)


def test_scheduler_applies_factor_of_each_step():
    cfg = ScheduleConfig(name="cosine", warmup_steps=3, min_lr_factor=0.0)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, cfg, 10)
    expected = factors(cfg, 10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * f for f in expected])
