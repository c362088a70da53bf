"""`anytrain`: subcommands for tools around training runs."""

import argparse

from omegaconf import OmegaConf

import models


def _params(args: argparse.Namespace) -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(models.ModelConfig), OmegaConf.load(args.preset))
    cfg = OmegaConf.to_object(cfg)
    if cfg.vocab_size is None:
        cfg.vocab_size = args.vocab
    print(f"parameters: {models.num_params(cfg):,} ({models.num_params(cfg, embeddings=False):,} without embeddings)")
    print(f"training FLOPs per token at seq {args.seq_len}: {models.flops_per_token(cfg, args.seq_len) / 1e9:.3f} G")


def _run(args: argparse.Namespace) -> None:
    from .cli import run_from_dir

    result = run_from_dir(args.run_dir)
    if result.get("preempted"):
        print("preempted: checkpoint saved; run the same command again to resume")


def _watchdog(args: argparse.Namespace) -> None:
    from . import watchdog

    watchdog.main(args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="anytrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="parameter count and FLOPs per token of a model preset YAML")
    p.add_argument("preset", help="e.g. configs/model/2b.yaml")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary when the preset leaves it null")
    p.set_defaults(func=_params)
    p = sub.add_parser("run", help="start or resume the run in RUN_DIR from its config.yaml (what job scripts call)")
    p.add_argument("run_dir")
    p.set_defaults(func=_run)
    p = sub.add_parser("watchdog", help="run CMD, kill it after --idle-timeout silent seconds (exit 124), retry it")
    from .watchdog import add_arguments as _watchdog_arguments

    _watchdog_arguments(p)
    p.set_defaults(func=_watchdog)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
