"""The command-line entry points: `train` (train.py, the Hydra app) and `anytrain` (anytrain.py, the tools)."""
