"""The `train` command: the Hydra app. Thin: compose once, validate, hand every rank the same config, call fit().

Under a launcher (torchrun, mpiexec, srun) only rank 0 runs Hydra: it composes and validates the config and picks
the run directory, then passes both to the other ranks through the rendezvous store. No rank composes on its own,
so there is one run directory and one resolved config per job.
"""

import contextlib
import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import distributed, run_lock
from ..checkpointing.run_state import adopt_checkpoint
from ..config import config_from_yaml, config_to_yaml, register_schemas, to_train_config, validate
from ..loop import fit

# hydra.run.dir falls back to a dated folder when trainer.run_dir is null.
OmegaConf.register_new_resolver("anytrain_or", lambda value, default: default if value is None else value, replace=True)
register_schemas()

# The configs are package data (configs/ of the checkout is installed as trainer.configs), found through the installed
# package wherever the command runs; users add their own with --config-dir or hydra.searchpath.
CONFIG_MODULE = "trainer.configs"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
log = logging.getLogger(__name__)
CONFIG_KEY, RUN_DIR_KEY = "anytrain/config", "anytrain/run_dir"
USER_ERRORS = (ValueError, FileNotFoundError)
# What `anytrain run` also reports in one line: a config.yaml the schema rejects (edited by hand, say).
CONFIG_ERRORS = (*USER_ERRORS, OmegaConfBaseException)


class _Job:
    """What the Hydra task needs besides the config: this process's ranks and the rendezvous store."""

    ranks = distributed.Ranks()
    store = None
    existing_dirs: set[Path] = set()  # trainer.run_dir paths given on the command line that existed at the start


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    run_dir, ranks = hc.runtime.output_dir, _Job.ranks
    try:
        train_cfg, taken = adopt_checkpoint(to_train_config(cfg), Path(run_dir), _given(hc.overrides.task))
        if taken:
            log.info("from checkpoint.load=%s: %s", train_cfg.checkpoint.load, " ".join(taken))
        if train_cfg.launcher.name != "local":  # render a job script into the run dir and submit it; no training here
            _submit(train_cfg, run_dir)
            return
        if ranks.world_size > 1:
            if hc.mode == RunMode.MULTIRUN:
                raise ValueError("a multirun (-m) sweep cannot run inside a multi-rank job: launch one job per run")
            validate(train_cfg, ranks.world_size)
            _Job.store.set(RUN_DIR_KEY, run_dir)
            _Job.store.set(CONFIG_KEY, config_to_yaml(train_cfg))
        fit(train_cfg, run_dir, ranks, _Job.store)
    except USER_ERRORS as e:  # config and data errors: one clear line, not a traceback
        if ranks.is_main:
            _discard_if_unused(Path(run_dir))
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except distributed.CollectiveTimeout as e:  # a hung peer: one line; exit 1, not 2, so that retries still apply
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def _discard_if_unused(run_dir: Path) -> None:
    """A run that failed before it wrote anything of its own leaves nothing behind: Hydra wrote its .hydra/ and
    log before the config was checked. Only those are removed, and the directory itself only when Hydra made it
    (not a trainer.run_dir that existed before, prepared with its striping, say). Anything else in it stays."""
    hydra_files = {run_dir / ".hydra", run_dir / f"{HydraConfig.get().job.name}.log"}
    if not run_dir.is_dir() or any(p not in hydra_files for p in run_dir.iterdir()):
        return
    for p in hydra_files:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if run_dir.resolve() not in _Job.existing_dirs:
        with contextlib.suppress(OSError):
            run_dir.rmdir()
        if run_dir.parent.name == "runs":  # the default parent of dated run dirs, when this run was all it held
            with contextlib.suppress(OSError):
                run_dir.parent.rmdir()


def _given(overrides: list[str]) -> set[str]:
    """The keys the command line sets (model=1b -> "model", +model.x=1 -> "model.x")."""
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides}


def _submit(train_cfg, run_dir: str) -> None:
    from ..cluster import launcher

    nodes, world = launcher.validate_launcher(train_cfg.launcher)
    try:
        validate(train_cfg, world)
    except ValueError as e:
        lc = train_cfg.launcher
        raise ValueError(
            f"{e} (the job has {world} ranks: launcher.nodes={nodes} x launcher.ranks_per_node={lc.ranks_per_node})"
        ) from None
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(train_cfg), Path(run_dir) / "config.yaml")
    try:
        launcher.launch(train_cfg, run_dir)
    except RuntimeError as e:  # sbatch/qsub refused the job: their message, no traceback
        sys.exit(f"error: {e}")


def _job_ranks() -> distributed.Ranks:
    """This process's ranks; a launcher environment that cannot work (a rank variable without its world size, an
    MPI job with no rendezvous and no mpi4py) is one line and exit 2, like a config error."""
    try:
        return distributed.discover_ranks()
    except RuntimeError as e:  # discover_ranks and rendezvous_address raise it for the environment alone
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _configs_installed() -> None:
    """The configs are package data: a checkout on PYTHONPATH, or an editable install made before they were, has
    none, and Hydra's own message then points at a file that exists."""
    import importlib.util

    if importlib.util.find_spec(CONFIG_MODULE) is None:
        print(
            f"error: anytrain's configs ({CONFIG_MODULE}) are not installed: install the package (pip install . ; in "
            f"a checkout pip install -e ., again after pulling a change of its layout)",
            file=sys.stderr,
        )
        sys.exit(2)


def _check_run_dirs(given: list[str]) -> None:
    """A trainer.run_dir given on the command line that is a file, cannot be written or is in use by another job:
    one line before Hydra writes its own files into it (and before a job script is rendered there)."""
    try:
        for d in given:
            run_lock.preflight(Path(d).expanduser())
    except run_lock.RunDirError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _configs_installed()
    given = [a.split("=", 1)[1] for a in sys.argv[1:] if a.lstrip("+").startswith("trainer.run_dir=")]
    _Job.existing_dirs = {Path(d).expanduser().resolve() for d in given if Path(d).expanduser().exists()}
    ranks = _job_ranks()
    if ranks.is_main and "-m" not in sys.argv and "--multirun" not in sys.argv:
        _check_run_dirs(given)
    if ranks.world_size == 1:
        _hydra_main()
        return
    try:
        _Job.ranks, _Job.store = ranks, distributed.make_store(ranks)
    except RuntimeError as e:
        print(f"error (rank {ranks.rank}): {e}", file=sys.stderr)
        sys.exit(2)
    if ranks.is_main:
        try:
            _hydra_main()
        finally:  # rank 0 stopped before publishing a config (an error, --cfg, --help): release the others
            if not _Job.store.check([CONFIG_KEY]):
                _Job.store.set(CONFIG_KEY, "")
        return
    text = _Job.store.get(CONFIG_KEY).decode()
    if not text:
        sys.exit("rank 0 did not start training (see its output)")
    run_dir = _Job.store.get(RUN_DIR_KEY).decode()
    try:
        fit(config_from_yaml(text), run_dir, ranks, _Job.store)
    except USER_ERRORS as e:
        print(f"error (rank {ranks.rank}): {e}", file=sys.stderr)
        sys.exit(2)
    except distributed.CollectiveTimeout as e:
        print(f"error (rank {ranks.rank}): {e}", file=sys.stderr)
        sys.exit(1)


def run_from_dir(run_dir: str | Path) -> dict:
    """Start or resume the run whose resolved config is RUN_DIR/config.yaml, on every rank of this job. Every rank
    reads that one file, so job scripts need no Hydra composition at all."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give a run directory that `train` created")
    ranks = _job_ranks()
    try:
        return fit(config_from_yaml(path.read_text()), run_dir, ranks)
    except CONFIG_ERRORS as e:  # as `train` does: one clear line in the job log, exit code 2
        print(f"error (rank {ranks.rank}): {e}", file=sys.stderr)
        sys.exit(2)
    except distributed.CollectiveTimeout as e:
        print(f"error (rank {ranks.rank}): {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
