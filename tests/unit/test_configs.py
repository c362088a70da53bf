import subprocess
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from trainer.build import resolve_vocab
from trainer.config import to_train_config, validate

from ..conftest import TRAIN

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GROUPS = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name != "experiment")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONFIGS / g).glob("*.yaml"))]
EXPERIMENTS = sorted(f.stem for f in (CONFIGS / "experiment").glob("*.yaml"))


def check(cfg, world_size: int = 1):
    train_cfg = resolve_vocab(to_train_config(cfg), 4096)
    validate(train_cfg, world_size)
    return train_cfg


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_group_option_composes_and_validates(compose, group, option):
    multi = group == "parallel" and option != "single"  # multi-process plans are checked on 2 ranks
    extra = ["trainer.micro_batch=8"] if multi else []  # the default global batch of 16 over 2 ranks
    if (group, option) == ("data", "blend"):
        extra.append("data.blend=corpora.txt")  # the one field it leaves to the user
    check(compose(f"{group}={option}", *extra), world_size=2 if multi else 1)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_validates(compose, name):
    check(compose(f"+experiment={name}"))


def test_shipped_configs_cover_the_expected_names():
    assert {"debug", "125m", "1b", "2b", "8b"} <= {o for g, o in OPTIONS if g == "model"}
    assert {"debug", "2b_scaling"} <= set(EXPERIMENTS)


def test_2b_scaling_experiment(compose):
    cfg = check(compose("+experiment=2b_scaling"))
    m = cfg.model
    assert (m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_hidden, m.vocab_size) == (2048, 12, 16, 4, 11008, 256128)
    assert m.rope_theta == 50000 and cfg.data.seq_len == 8192 and cfg.schedule.name == "wsd"


def test_command_line_group_beats_the_experiment(compose):
    cfg = check(
        compose(
            "+experiment=2b_scaling",
            "model=debug",
            "data.seq_len=256",
            "trainer.max_steps=7",
            "schedule.warmup_steps=2",
        )
    )
    assert cfg.model.dim == 128 and cfg.trainer.max_steps == 7


def test_typo_is_rejected_with_the_key_named(compose):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as e:
        compose("model.dimm=3")
    assert "model.dimm" in str(e.value) + str(e.value.__cause__)


def test_wrong_type_is_rejected_with_the_key_named(compose):
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose("model.dim=abc")
    assert "model.dim" in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["trainer.global_batch=12", "trainer.micro_batch=8"], "trainer.global_batch=12 is not divisible"),
        (["model.n_heads=5"], "model.n_heads=5 does not divide model.dim=128"),
        (["schedule.warmup_steps=500"], "schedule.warmup_steps=500 is longer than the run"),
        (["data.seq_len=4096"], "data.seq_len=4096 exceeds model.max_seq_len"),
    ],
)
def test_cross_field_errors_name_the_field(compose, overrides, match):
    with pytest.raises(ValueError, match=match):
        check(compose(*overrides))


def test_tokenizer_larger_than_model_vocab_is_an_error(compose):
    with pytest.raises(ValueError, match="model.vocab_size=1000"):
        resolve_vocab(to_train_config(compose("model.vocab_size=1000")), 4096)


def test_cfg_job_prints_the_resolved_config():
    out = subprocess.run(
        [*TRAIN, "--cfg", "job", "+experiment=2b_scaling"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "vocab_size: 256128" in out and "seq_len: 8192" in out and "name: wsd" in out


def test_wrong_type_on_the_command_line_exits_before_training(tmp_path):
    r = subprocess.run(
        [*TRAIN, "model.dim=abc", f"trainer.run_dir={tmp_path}/run"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "model.dim" in r.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["optim=lion", "optim.eps=1e-6"], "eps"),  # Lion has no epsilon
        (["optim=adamw", "optim.muon_lr=0.01"], "muon_lr"),  # AdamW has no Muon part
        (["optim=muon", "optim.muon_lrr=0.01"], "muon_lrr"),  # a typo of Muon's own field
    ],
)
def test_each_optimizer_group_accepts_only_its_own_fields(compose, overrides, key):
    with pytest.raises(ConfigCompositionException, match=f"Could not override 'optim.{key}'"):
        compose(*overrides)


@pytest.mark.parametrize("name", ["adamw", "muon", "lion"])
def test_a_run_config_round_trips_with_its_optimizer_class(compose, name):
    from trainer.config import config_from_yaml, config_to_yaml

    cfg = check(compose(f"optim={name}", "optim.lr=0.005"))
    again = config_from_yaml(config_to_yaml(cfg))
    assert again == cfg and type(again.optim) is type(cfg.optim) and again.optim.lr == 0.005


def test_a_config_yaml_with_a_retired_field_still_loads(compose, caplog):
    from trainer.config import config_from_yaml, config_to_yaml

    cfg = check(compose())
    old = config_to_yaml(cfg).replace("lr_find:\n", "lr_find:\n  slope_window: 5\n")  # as runs before 2026-12 wrote
    assert "slope_window" in old
    assert config_from_yaml(old) == cfg and "dropped lr_find.slope_window" in caplog.text
    with pytest.raises(Exception, match="not_a_field"):  # any other unknown key stays an error
        config_from_yaml(config_to_yaml(cfg).replace("lr_find:\n", "lr_find:\n  not_a_field: 5\n"))


def test_an_optimizer_field_is_checked_before_the_model_exists(compose):
    with pytest.raises(ValueError, match="optim.weight_decay must be >= 0"):
        check(compose("optim=lion", "optim.weight_decay=-0.1"))


PLUS_TYPOS = ["+optim.eps=1e-6", "+model.dimm=3", "+trainer.max_stepz=3", "+data.tokenizer.x=1"]


@pytest.mark.parametrize("override", PLUS_TYPOS)
def test_a_key_added_with_plus_that_no_field_reads_is_an_error(compose, override):
    """Hydra's hint after refusing optim.eps under Lion is `+optim.eps`, which it then accepts: the key would be
    carried along and never read."""
    with pytest.raises(ValueError, match=f"unknown config key.*{override[1:].split('=')[0]}"):
        to_train_config(compose("optim=lion", override))
