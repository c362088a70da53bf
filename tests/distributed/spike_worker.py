"""Run under torchrun: a spike injected on rank 1 only must be skipped by every rank."""

import json
import sys

import torch
from hydra import compose, initialize_config_dir

import trainer.cli.train  # noqa: F401  (schema and resolvers)
from trainer import distributed as env
from trainer.build import build_run
from trainer.config import to_train_config
from trainer.loop import train_step

config_dir, run_dir, *overrides = sys.argv[1:]
with initialize_config_dir(config_dir=config_dir, version_base=None):
    cfg = to_train_config(compose("train", overrides=overrides))
ranks = env.discover_ranks()
device = torch.device("cpu")
env.init_distributed(ranks, device, "gloo", env.make_store(ranks), 120)
run = build_run(cfg, run_dir, ranks, device)
stream = iter(run.train_stream)
for _ in range(6):
    train_step(run, [next(stream) for _ in range(run.accum)])
run.spikes.read()  # count from here
before = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
if ranks.rank == 1:  # the corrupted batch reaches one rank only
    inner = run.model.module.forward
    run.model.module.forward = lambda x, y: inner(x, y) * 1000.0
train_step(run, [next(stream) for _ in range(run.accum)])
unchanged = all(torch.equal(v, run.model.state_dict()[k]) for k, v in before.items())
result = {"rank": ranks.rank, "unchanged": unchanged, "skipped": run.spikes.read()[0]}
with open(f"{run_dir}/spike-rank{ranks.rank}.json", "w") as f:  # one file per rank: stdout lines can interleave
    json.dump(result, f)
del run, stream  # the DDP model goes before the process group (env.end_distributed says why)
env.end_distributed()
