"""Run under torchrun: rank 0 fails inside env.together; every rank must learn it at once."""

import json
import sys

import torch

from trainer import distributed as env

out = sys.argv[1]
ranks = env.discover_ranks()
env.init_distributed(ranks, torch.device("cpu"), "gloo", env.make_store(ranks), 60)


def rank0_only_io() -> str:
    if ranks.rank == 0:
        raise OSError("disk full")
    return "fine"


try:
    result = env.together(rank0_only_io)
except Exception as e:  # noqa: BLE001 (recorded for the test)
    result = f"{type(e).__name__}: {e}"
ok = env.together(lambda: "ok")  # and the group still works afterwards
with open(f"{out}/rank{ranks.rank}.json", "w") as f:
    json.dump([result, ok], f)
torch.distributed.destroy_process_group()
