import os
from pathlib import Path

import pytest

# Nothing may reach a hub from the tests; wandb stays on this machine.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def compose():
    """Compose configs/train.yaml with overrides through Hydra's compose API, as `train` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import trainer.cli  # noqa: F401  (registers the schema and resolvers)

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
            return hydra_compose("train", overrides=list(overrides))

    return _compose
