import os
import sys
from pathlib import Path

import pytest

# Nothing may reach a hub from the tests; wandb stays on this machine.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

REPO = Path(__file__).resolve().parent.parent
# The installed commands, as users run them: console scripts put their own directory first on sys.path, not the cwd.
TRAIN = [str(Path(sys.executable).parent / "train")]
ANYTRAIN = [str(Path(sys.executable).parent / "anytrain")]


@pytest.fixture(scope="session")
def compose():
    """Compose configs/train.yaml with overrides through Hydra's compose API, as `train` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from trainer.cli.train import CONFIG_MODULE  # also registers the schema and resolvers

    def _compose(*overrides: str):
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            return hydra_compose("train", overrides=list(overrides))

    return _compose


# A model and data small enough that a CPU step takes milliseconds, on the real Shakespeare corpus.
TINY = [
    "model.dim=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.ffn_hidden=128",
    "data.seq_len=64",
    "data.tokenizer.vocab_size=512",
    "data.tokenizer.train_docs=4000",
    "trainer.micro_batch=4",
    "trainer.global_batch=8",
    "trainer.eval_batches=4",
    "trainer.progress_bar=false",
    "schedule.warmup_steps=5",
]


@pytest.fixture(scope="session")
def tok_cache(tmp_path_factory):
    """One tokenizer cache for the whole session: the first run trains the BPE, the others load it."""
    return f"data.tokenizer.cache_dir={tmp_path_factory.mktemp('tok')}"
