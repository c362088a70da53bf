"""`train`: the Hydra app. Thin: compose, validate, hand over to fit()."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .config import register_schemas, to_train_config
from .loop import fit

# hydra.run.dir falls back to a dated folder when trainer.run_dir is null.
OmegaConf.register_new_resolver("anytrain_or", lambda value, default: default if value is None else value, replace=True)
register_schemas()

# An absolute path: Hydra would otherwise look for a Python module named "configs" under a console script.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        fit(to_train_config(cfg), run_dir)
    except (ValueError, FileNotFoundError) as e:  # config and data errors: one clear line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
