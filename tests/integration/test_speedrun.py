"""`train -m +experiment=speedrun optim=adamw,muon` as a real Hydra multirun, then `anytrain speedrun-report`."""

import csv
import json
import subprocess

import pytest

from trainer.tools.reports import collect

from ..conftest import ANYTRAIN, TINY, TRAIN

RACE = [*TINY, "trainer.max_steps=30", "schedule.warmup_steps=5", "trainer.log_every=5"]


def run(args, cwd):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def race(tmp_path_factory, tok_cache):
    cwd = tmp_path_factory.mktemp("race")
    r = run(
        [*TRAIN, "-m", "+experiment=speedrun", "optim=adamw,muon", *RACE, tok_cache,
         f"trainer.run_dir={cwd}/sweep"],
        cwd,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return cwd / "sweep"


def test_speedrun_experiment_pins_the_race(race):
    for job, name in (("0", "adamw"), ("1", "muon")):
        cfg = (race / job / "config.yaml").read_text()
        assert f"name: {name}" in cfg and "name: wsd" in cfg and "decay_ratio: 0.2" in cfg
        assert not (race / job / "checkpoints").exists()  # no checkpoints by default
        rows = [json.loads(line) for line in (race / job / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "val_loss" in r] == [0, 30]  # evaluated at the start and the end only
    hashes = [
        [json.loads(line).get("batch_hash") for line in (race / job / "metrics.jsonl").read_text().splitlines()]
        for job in ("0", "1")
    ]
    assert hashes[0] == hashes[1]  # the same data, in the same order, for both optimizers


def test_report_ranks_both_runs_and_draws_the_plot(race, tmp_path):
    # A crashed third job: listed, not ranked.
    (race / "2" / ".hydra").mkdir(parents=True)
    (race / "2" / ".hydra" / "overrides.yaml").write_text("- optim=lion\n")
    out = tmp_path / "report"
    r = run([*ANYTRAIN, "speedrun-report", str(race), "--target-loss", "6.0", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| rank | run | optimizer |" in r.stdout
    for name in ("leaderboard.md", "leaderboard.csv", "speedrun.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "speedrun.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["rank"] for row in rows] == ["1", "2", "-"]
    assert {rows[0]["optimizer"], rows[1]["optimizer"]} == {"adamw", "muon"} and rows[2]["optimizer"] == "lion"
    assert float(rows[0]["final val loss"]) <= float(rows[1]["final val loss"])
    assert {rows[0]["overrides"], rows[1]["overrides"]} == {"optim=adamw", "optim=muon"}  # only what the sweep varied
    assert rows[0]["steps"] == "30" and int(rows[0]["tokens"]) == 30 * 8 * 64
    assert float(rows[0]["tokens/s"]) > 0 and float(rows[0]["wall time (s)"]) > 0
    assert rows[2]["status"].startswith("failed")
    runs = collect(race, target_loss=100.0)  # every run is below 100 at its first evaluation: step 0
    assert all(run.target_step == 0 for run in runs if run.ranked)


def test_report_on_an_empty_directory_is_a_clear_error(tmp_path):
    r = run([*ANYTRAIN, "speedrun-report", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and "holds no run directories" in r.stderr and "Traceback" not in r.stderr
