"""`anytrain plot RUN...`: several runs' training and held-out loss in one PNG."""

import subprocess

from trainer.config import to_train_config
from trainer.loop import fit
from trainer.tools.plot import load_runs

from ..conftest import ANYTRAIN, TINY

RUN = [*TINY, "trainer.max_steps=4", "trainer.log_every=1", "trainer.eval_every=2", "schedule.warmup_steps=1"]


def test_two_runs_in_one_png(compose, tok_cache, tmp_path):
    for name, lr in (("a/run", "1e-3"), ("b/run", "3e-3")):
        fit(to_train_config(compose(*RUN, tok_cache, "checkpoint=none", f"optim.lr={lr}")), tmp_path / name)
    runs = load_runs([tmp_path / "a" / "run", tmp_path / "b" / "run"])
    assert [r.run for r in runs] == ["a/run", "b/run"]  # same names: the parents tell them apart
    assert all(len(r.train_curve) == 4 and [s for s, _, _ in r.val_curve] == [0, 2, 4] for r in runs)
    out = tmp_path / "cmp.png"
    r = subprocess.run([*ANYTRAIN, "plot", tmp_path / "a" / "run", tmp_path / "b" / "run", "--out", out], text=True,
                       capture_output=True)  # fmt: skip
    assert r.returncode == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.stderr
    r = subprocess.run([*ANYTRAIN, "plot", tmp_path / "missing"], capture_output=True, text=True)
    assert r.returncode == 2 and "no loss to plot in" in r.stderr and "Traceback" not in r.stderr
