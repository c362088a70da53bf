"""`python -m trainer.cli` runs `train`. Prefer the `train` command: `-m` puts the current directory first on
sys.path, where a research directory's own data.py or models/ would shadow anytrain's (trainer/__init__.py stops
with a one-line error when that happens)."""

from .train import main

if __name__ == "__main__":
    main()
