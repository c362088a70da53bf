"""The trainer: composes models, data and optim into a run.

Layout: `cli/` (the `train` and `anytrain` commands), `config.py` (the schema of a run), `run.py` (the Run),
`build.py` (building it) and `loop.py` (training it), `distributed/` (ranks, devices, process group, collectives,
parallel plans), `checkpointing/`, `interop/` (Hugging Face and safetensors), `cluster/` (job scripts, watchdog) and
`tools/` (bench, reports); `metrics.py`, `spikes.py`, `preemption.py` and `lr_finder.py` are the loop's
collaborators.
"""

import importlib.util
import sys
import time
from pathlib import Path

# When this process started, near enough: the commands import this package first, before torch. (A process's start
# in /proc is its shell's when `... && train` runs train in place of the shell, minutes before.)
STARTED = time.time()


def _check_siblings() -> None:
    """models, data and optim must be the ones installed next to this package. `python -m ...` (and a PYTHONPATH
    that holds ".") puts the current directory first on sys.path, where a research directory's own data.py or
    models/ would be imported in their place: stop with one line instead of training with someone else's module."""
    home = Path(__file__).resolve().parent.parent
    for name in ("models", "data", "optim"):
        spec = importlib.util.find_spec(name)  # finds without importing (nothing of the other module runs)
        origin = spec.origin if spec is not None else None
        if origin is None or Path(origin).resolve() != home / name / "__init__.py":
            found = origin or (list(spec.submodule_search_locations)[0] if spec else "nothing")
            print(
                f"error: `import {name}` finds {found}, not anytrain's {home / name}: a module of that name earlier on "
                f"sys.path shadows it (the current directory under `python -m`, or a PYTHONPATH entry). Use the "
                f"`train` / `anytrain` commands (also under torchrun --no-python, mpiexec and srun) with no "
                f"PYTHONPATH entry for that directory, or run from another directory",
                file=sys.stderr,
            )
            raise SystemExit(2)


_check_siblings()
