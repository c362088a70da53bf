"""`python -m trainer.tools run|watchdog ...`: what job scripts rendered before the `anytrain` entry moved to
trainer/cli/anytrain.py still call (chained jobs and watchdog retries rerun the same script). Deprecated: new scripts
start `anytrain` as trainer/cluster/launcher.py's `entry` says."""

from ..cli.anytrain import main

if __name__ == "__main__":
    main()
