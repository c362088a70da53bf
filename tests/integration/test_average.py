"""`anytrain average`: the weighted mean of a run's checkpoints, as a model-only checkpoint that export-hf and
checkpoint.load= take; checkpoints of another shape or tokenizer are refused in one line."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from models import ModelConfig, build_model
from trainer import checkpointing as ckpt
from trainer import distributed as env
from trainer.build import build_run
from trainer.cli.anytrain import main as anytrain
from trainer.config import to_train_config
from trainer.loop import fit

from ..conftest import ANYTRAIN
from .test_checkpoint import RUN


@pytest.fixture(scope="module")
def run_dir(compose, tok_cache, tmp_path_factory) -> Path:
    """A tiny run with checkpoints at steps 2, 4 and 6, shared by the tests (they only read it)."""
    out = tmp_path_factory.mktemp("run")
    overrides = [*RUN, tok_cache, "trainer.max_steps=6", "checkpoint.every=2", "checkpoint.keep_last=0"]
    fit(to_train_config(compose(*overrides)), out)
    return out


def steps(run_dir: Path, *ns: int) -> list[str]:
    return [str(run_dir / "checkpoints" / f"step-{n}") for n in ns]


def by_hand(paths: list[str], weights: list[float]) -> dict[str, torch.Tensor]:
    """sum_i w_i * state_i in fp64, from load_model_state of each checkpoint, cast to fp32."""
    states = [ckpt.load_model_state(p)[1] for p in paths]
    return {k: sum(w * s[k].double() for w, s in zip(weights, states)).float() for k in states[0]}


def assert_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for k in expected:  # exact up to one fp32 rounding of the fp64 sum
        torch.testing.assert_close(actual[k], expected[k], rtol=1.2e-7, atol=0, msg=k)


def fails(argv: list[str], capsys) -> str:
    """The error line of an anytrain call that must exit 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        anytrain(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_uniform_average_is_the_mean_of_the_weights(run_dir, tmp_path, capsys):
    # listed out of order: the checkpoints are taken by step whatever order a glob gave
    sources = steps(run_dir, 6, 2, 4)
    anytrain(["average", *sources, str(tmp_path / "avg")])
    assert "wrote" in capsys.readouterr().out
    cfg, state, meta = ckpt.load_model_state(tmp_path / "avg")
    ordered = steps(run_dir, 2, 4, 6)
    assert_state(state, by_hand(ordered, [1 / 3] * 3))
    newest = ckpt.read_meta(Path(ordered[-1]))
    assert not torch.equal(state["norm.weight"], ckpt.load_model_state(ordered[-1])[1]["norm.weight"])
    avg = meta["averaged"]
    assert avg["method"] == "uniform" and avg["steps"] == [2, 4, 6] and avg["weights"] == pytest.approx([1 / 3] * 3)
    assert [s["path"] for s in avg["sources"]] == [str(Path(p).resolve()) for p in ordered]
    assert meta["model_only"] and meta["step"] == 0 and meta["tokens_seen"] == newest["tokens_seen"] > 0
    assert meta["model"] == newest["model"] and meta["tokenizer"] == newest["tokenizer"]
    assert (tmp_path / "avg" / ckpt.TOKENIZER).read_bytes() == (Path(ordered[-1]) / ckpt.TOKENIZER).read_bytes()


def test_ema_and_explicit_weights(run_dir, tmp_path):
    anytrain(["average", str(run_dir), str(tmp_path / "ema"), "--weights", "ema", "--decay", "0.5"])
    _, state, meta = ckpt.load_model_state(tmp_path / "ema")
    expected = [0.25 / 1.75, 0.5 / 1.75, 1 / 1.75]  # decay^(n-1-i) for steps 2, 4, 6, normalized
    assert meta["averaged"]["steps"] == [2, 4, 6] and meta["averaged"]["weights"] == pytest.approx(expected)
    assert meta["averaged"]["method"] == "ema" and meta["averaged"]["decay"] == 0.5
    assert_state(state, by_hand(steps(run_dir, 2, 4, 6), expected))
    # explicit weights, in step order, normalized; --last keeps the newest two of the run
    anytrain(["average", str(run_dir / "checkpoints"), str(tmp_path / "w"), "--last", "2", "--weights", "1,3"])
    _, state, meta = ckpt.load_model_state(tmp_path / "w")
    assert meta["averaged"]["steps"] == [4, 6] and meta["averaged"]["weights"] == [0.25, 0.75]
    assert_state(state, by_hand(steps(run_dir, 4, 6), [0.25, 0.75]))


def test_another_shape_or_tokenizer_is_refused_in_one_line(run_dir, tmp_path, capsys):
    newest = Path(steps(run_dir, 6)[0])
    cfg, state, meta = ckpt.load_model_state(newest)
    narrow = ModelConfig(**{**meta["model"], "dim": 32})
    other = tmp_path / "narrow"
    ckpt.write_model_checkpoint(other, narrow, build_model(narrow).state_dict(), tokenizer=newest / ckpt.TOKENIZER)
    err = fails(["average", str(other), str(newest), str(tmp_path / "o1")], capsys)
    assert f"checkpoint {other} has model.dim=32" in err and "64" in err
    # the same weights with another token -> id map
    tok = json.loads((newest / ckpt.TOKENIZER).read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (tmp_path / "tok.json").write_text(json.dumps(tok))
    swapped = ckpt.write_model_checkpoint(tmp_path / "swapped", cfg, state, tokenizer=tmp_path / "tok.json")
    err = fails(["average", str(swapped), str(newest), str(tmp_path / "o2")], capsys)
    assert f"checkpoint {swapped} has another tokenizer.json" in err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_bad_arguments_are_one_line(run_dir, tmp_path, capsys):
    two = steps(run_dir, 2, 4)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    tampered = tmp_path / "copy" / "step-2"
    shutil.copytree(two[0], tampered)
    shard = next(tampered.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # same size, other content: only the digest tells
    shard.write_bytes(bytes(data))
    cases = [
        (["average", str(tampered), two[1], str(tmp_path / "o")], "does not match the digest"),
        (["average", *two, str(tmp_path / "o"), "--weights", "1,2,3"], "3 value(s) for 2 checkpoint(s)"),
        (["average", *two, str(tmp_path / "o"), "--weights", "ema", "--decay", "1.5"], "(0, 1]"),
        (["average", *two, str(tmp_path / "o"), "--decay", "0.5"], "--weights ema only"),
        (["average", *two, two[0], str(tmp_path / "o")], "named twice"),
        (["average", str(run_dir), str(tmp_path / "o"), "--last", "4"], "hold 3 checkpoint"),
        (["average", *two, str(tmp_path / "busy")], "--force"),
        (["average", *two, str(run_dir / "checkpoints" / "step-8")], "pass for a checkpoint of the run"),
        (["average", *two, str(run_dir / "checkpoints"), "--force"], "is or holds a checkpoint averaged"),
        (["average", str(tmp_path / "nope"), str(tmp_path / "o")], "no complete checkpoint"),
    ]
    for argv, words in cases:
        assert words in fails(argv, capsys), argv
    assert not (tmp_path / "o").exists()


def test_the_average_loads_in_export_hf_and_checkpoint_load(run_dir, tmp_path, compose, tok_cache):
    avg = tmp_path / "avg"
    anytrain(["average", *steps(run_dir, 4, 6), str(avg), "--weights", "ema"])
    _, averaged, _ = ckpt.load_model_state(avg)
    r = subprocess.run([*ANYTRAIN, "export-hf", str(avg), str(tmp_path / "hf")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    provenance = json.loads((tmp_path / "hf" / "anytrain_provenance.json").read_text())
    assert provenance["tokens_seen"] == ckpt.read_meta(run_dir / "checkpoints" / "step-6")["tokens_seen"]
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    cfg = to_train_config(compose(*RUN, tok_cache, "trainer.max_steps=3", f"checkpoint.load={avg}"))
    run = build_run(cfg, tmp_path / "b", env.Ranks(), torch.device("cpu"))
    assert run.start_step == 0  # load_state=model: weights only
    loaded = run.model.state_dict()
    for k, v in averaged.items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0, msg=k)
