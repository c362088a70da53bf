"""anytrain's Hydra configs, installed as the package `trainer.configs` (Hydra: pkg://trainer.configs)."""
