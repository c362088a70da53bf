"""Run under torchrun: `fit` or `bench`, each also as `-fails` (every rank raises in its third step), with DDP.
Records how many DDP modules are alive when the process group is destroyed."""

import gc
import json
import sys

import torch.distributed as dist
from hydra import compose, initialize_config_dir
from torch.nn.parallel import DistributedDataParallel

import trainer.cli.train  # noqa: F401  (schema and resolvers)
import trainer.loop
import trainer.tools.bench
from trainer import distributed as env
from trainer.config import to_train_config
from trainer.loop import fit
from trainer.tools.bench import BenchOptions, bench

mode, config_dir, run_dir, *overrides = sys.argv[1:]
with initialize_config_dir(config_dir=config_dir, version_base=None):
    cfg = to_train_config(compose("train", overrides=overrides))
alive_at_destroy = []
destroy = dist.destroy_process_group


def recording_destroy(*args, **kwargs):
    alive_at_destroy.append(sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))
    return destroy(*args, **kwargs)


dist.destroy_process_group = recording_destroy
ranks = env.discover_ranks()
if mode.endswith("-fails"):
    step = trainer.loop.train_step

    def failing_step(run, batches, *args, **kwargs):
        if run.scheduler.last_epoch == 2:
            raise OSError("disk gone")
        return step(run, batches, *args, **kwargs)

    trainer.loop.train_step = trainer.tools.bench.train_step = failing_step
try:
    if mode.startswith("fit"):
        fit(cfg, run_dir, ranks)
    else:
        bench(cfg, BenchOptions(steps=2, warmup=1, data="real", accum=1, data_seconds=0.0, profile=0), ranks)
except OSError:
    assert mode.endswith("-fails")
with open(f"{run_dir}/teardown-rank{ranks.rank}.json", "w") as f:
    json.dump(alive_at_destroy, f)
