"""The `anytrain` command: subcommands for the tools around training runs."""

import argparse
import sys

from omegaconf import OmegaConf

import models


def _preset_file(preset: str):
    """A model preset YAML: a path, or the name of one of the installed presets (configs/model/NAME.yaml)."""
    from importlib import resources
    from pathlib import Path

    if Path(preset).is_file():
        return Path(preset)
    installed = resources.files("trainer.configs").joinpath("model")
    found = installed.joinpath(f"{preset}.yaml")
    if not found.is_file():
        names = sorted(p.name.removesuffix(".yaml") for p in installed.iterdir() if p.name.endswith(".yaml"))
        print(
            f"anytrain params: error: {preset!r} is neither a file nor a model preset ({', '.join(names)})",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return found


def _params(args: argparse.Namespace) -> None:
    with _preset_file(args.preset).open() as f:
        cfg = OmegaConf.merge(OmegaConf.structured(models.ModelConfig), OmegaConf.load(f))
    cfg = OmegaConf.to_object(cfg)
    if cfg.vocab_size is None:
        cfg.vocab_size = args.vocab
    body = models.num_params(cfg, embeddings=False)
    print(f"parameters: {models.num_params(cfg):,} ({body:,} without the input embedding)")
    print(f"training FLOPs per token at seq {args.seq_len}: {models.flops_per_token(cfg, args.seq_len) / 1e9:.3f} G")


def _run(args: argparse.Namespace) -> None:
    from .train import run_from_dir

    result = run_from_dir(args.run_dir)
    if result.get("preempted"):
        print("preempted: checkpoint saved; run the same command again to resume")


def _fail_clearly(fn, args: argparse.Namespace) -> None:
    """Bad input to export/import/consolidate: one error line and exit code 2, no traceback."""
    try:
        path = fn(args)
    except (ValueError, OSError) as e:  # CheckpointError, ExportError and HFConversionError are ValueErrors
        print(f"anytrain {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {path}")


def _export_hf(args: argparse.Namespace) -> None:
    from ..interop import export_hf

    _fail_clearly(lambda a: export_hf(a.checkpoint, a.out_dir, a.dtype, a.max_shard_size, a.force), args)


def _import_hf(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ..interop import import_hf

    _fail_clearly(lambda a: import_hf(a.hf_dir, a.out_dir, a.force), args)
    if not (Path(args.out_dir) / "tokenizer.json").is_file():
        print(
            f"note: {args.hf_dir} has no tokenizer.json, so the import has none: train from it with its tokenizer "
            f"named, e.g. data.tokenizer.kind=file data.tokenizer.path=PATH/tokenizer.json"
        )
    print(
        f"train from it: train checkpoint.load={args.out_dir} (its architecture and tokenizer are taken from it; "
        f"add 'data.sources=[{{path: YOUR_DATA}}]' for your own corpus, trainer.max_steps=0 to evaluate it only)"
    )


def _consolidate(args: argparse.Namespace) -> None:
    from ..interop import consolidate

    _fail_clearly(lambda a: consolidate(a.checkpoint, a.out_file, a.dtype, a.force), args)


def _average(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from ..tools.average import average

    _fail_clearly(lambda a: average(a.checkpoints, a.out_dir, a.weights, a.decay, a.last, a.accumulate, a.force), args)
    for s in json.loads((Path(args.out_dir) / "meta.json").read_text())["averaged"]["sources"]:
        print(f"  weight {s['weight']:.4f}  step {s['step']}  {s['path']}")
    print(f"train from it: train checkpoint.load={args.out_dir}; export it: anytrain export-hf {args.out_dir} HF_DIR")


def _lr_report(args: argparse.Namespace) -> None:
    from ..lr_finder import lr_report

    _fail_clearly(lambda a: print(lr_report(a.multirun_dir), end="") or f"{a.multirun_dir}/lr_report.png", args)


def _watchdog(args: argparse.Namespace) -> None:
    from ..cluster import watchdog

    watchdog.main(args)


def _speedrun_report(args: argparse.Namespace) -> None:
    from ..tools.reports import speedrun_report

    try:
        markdown, _ = speedrun_report(args.multirun_dir, args.target_loss, args.out)
    except ValueError as e:
        print(f"anytrain speedrun-report: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(markdown)


def _plot(args: argparse.Namespace) -> None:
    from ..tools.plot import plot_runs

    _fail_clearly(lambda a: plot_runs(a.run_dirs, a.out, a.x), args)


def _bench(args: argparse.Namespace) -> None:
    import json

    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ..config import to_train_config
    from ..tools.bench import BenchOptions, bench, format_table
    from .train import CONFIG_MODULE  # also registers the schemas and resolvers

    opts = BenchOptions(args.steps, args.warmup, args.data, args.accum, args.data_seconds, args.profile)
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = to_train_config(compose("train", overrides=[f"+experiment={args.preset}", *args.overrides]))
        result = bench(cfg, opts)
    except (ValueError, HydraException, OmegaConfBaseException) as e:  # as `train`: one line naming the problem
        print(f"anytrain bench: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from .. import distributed

    if distributed.discover_ranks().is_main:
        print(json.dumps(result) if args.json else format_table(result), flush=True)
        if result["profile"] and not args.json:
            print(f"\ntop operators over {args.profile} profiled steps:\n{result['profile']}")


def _tokenize(args: argparse.Namespace) -> None:
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ..config import to_train_config
    from ..distributed import PeerFailed
    from ..tools.tokenize import summary, tokenize
    from .train import CONFIG_MODULE

    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = to_train_config(compose("train", overrides=args.overrides))
        result = tokenize(cfg, args.out_dir, args.workers, args.dtype)
    except (ValueError, OSError, HydraException, OmegaConfBaseException, PeerFailed) as e:  # one line, exit 2
        print(f"anytrain tokenize: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if result["is_main"]:
        print(summary(result, args.out_dir), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="anytrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="parameter count and FLOPs per token of a model preset YAML")
    p.add_argument("preset", help="a preset name (debug, 125m, 1b, 2b, 8b) or a model YAML file")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary when the preset leaves it null")
    p.set_defaults(func=_params)
    p = sub.add_parser("run", help="start or resume the run in RUN_DIR from its config.yaml (what job scripts call)")
    p.add_argument("run_dir")
    p.set_defaults(func=_run)
    p = sub.add_parser("watchdog", help="run CMD, kill it after --idle-timeout silent seconds (exit 124), retry it")
    from ..cluster.watchdog import add_arguments as _watchdog_arguments

    _watchdog_arguments(p)
    p.set_defaults(func=_watchdog)
    p = sub.add_parser("export-hf", help="checkpoint -> Hugging Face model directory (Llama; Qwen3 with qk_norm)")
    p.add_argument("checkpoint", help="a step-N directory, or a run / checkpoints directory (its newest checkpoint)")
    p.add_argument("out_dir")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--max-shard-size", default="5GB", help="split the weights into shards of at most this size")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    p.set_defaults(func=_export_hf)
    p = sub.add_parser("import-hf", help="local Hugging Face Llama directory -> model-only checkpoint")
    p.add_argument("hf_dir")
    p.add_argument("out_dir", help="start training from it with checkpoint.load=OUT_DIR")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    p.set_defaults(func=_import_hf)
    p = sub.add_parser("consolidate", help="checkpoint's model -> one safetensors file with anytrain's names")
    p.add_argument("checkpoint")
    p.add_argument("out_file")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="fp32")
    p.add_argument("--force", action="store_true", help="replace an existing OUT_FILE")
    p.set_defaults(func=_consolidate)
    p = sub.add_parser("average", help="uniform or EMA average of checkpoints of one run -> model-only checkpoint")
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CKPT",
        help="step-N directories, or run / checkpoints directories (all their complete checkpoints)",
    )
    p.add_argument("out_dir", metavar="OUT", help="the model-only checkpoint to write")
    p.add_argument(
        "--weights",
        default="uniform",
        metavar="W",
        help="uniform, ema (w_i ~ decay^(n-1-i), newest weighs most), or a list like 0.2,0.3,0.5; in step order, "
        "normalized to sum 1 (default: uniform)",
    )
    p.add_argument("--decay", type=float, default=None, metavar="D", help="the ratio of --weights ema (default 0.9)")
    p.add_argument("--last", type=int, default=None, metavar="K", help="only the newest K of the checkpoints")
    p.add_argument("--accumulate", choices=["fp64", "fp32"], default="fp64", help="the sum's dtype (default fp64)")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(func=_average)
    p = sub.add_parser("speedrun-report", help="leaderboard (md, csv) and loss plot of a multirun's runs")
    p.add_argument("multirun_dir", help="the folder of a `train -m` sweep, e.g. multirun/<date>/<time>")
    p.add_argument("--target-loss", type=float, default=None, help="report steps and time to this held-out loss")
    p.add_argument("--out", default=None, help="where to write the report (default: MULTIRUN_DIR)")
    p.set_defaults(func=_speedrun_report)
    p = sub.add_parser("lr-report", help="table and overlaid curves of the LR finder runs of a multirun")
    p.add_argument("multirun_dir", help="the folder of a `train -m +experiment=lr_find ...` sweep")
    p.set_defaults(func=_lr_report)
    p = sub.add_parser("plot", help="training and held-out loss of several runs overlaid in one PNG")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (each holds a metrics.jsonl)")
    p.add_argument("--out", default="runs.png", help="the PNG to write")
    p.add_argument("--x", choices=["auto", "steps", "tokens"], default="auto", help="auto: tokens when known")
    p.set_defaults(func=_plot)
    p = sub.add_parser("tokenize", help="data.sources -> a token store in OUT_DIR (train from it by its path)")
    p.add_argument("out_dir", help="the store's directory; rerun the same command to finish a stopped one")
    p.add_argument("overrides", nargs="*", help="config overrides as for `train`, e.g. data.tokenizer.kind=gpt2")
    p.add_argument("--workers", type=int, default=None, help="processes on this rank (default: its share of cores)")
    p.add_argument("--dtype", choices=["auto", "uint16", "uint32"], default="auto", help="auto: uint16 if ids fit")
    p.set_defaults(func=_tokenize)
    p = sub.add_parser(
        "bench",
        help="tokens/s, MFU, memory, compile time of a training config (default llama-1b)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="config overrides as for `train`, e.g. trainer.micro_batch=16")
    p.add_argument("--preset", default="bench", help="the experiment composed first (configs/experiment/NAME)")
    p.add_argument("--steps", type=int, default=20, help="steady-state steps measured")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the medians (compile, autotune)")
    p.add_argument(
        "--data", choices=["synthetic", "real"], default="synthetic", help="random tokens on the device, or the corpus"
    )
    p.add_argument("--accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--data-seconds", type=float, default=3.0, help="time the CPU data path this long (0: skip)")
    p.add_argument("--profile", type=int, default=0, help="then profile this many steps and print the top operators")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=_bench)
    # Overrides may come before and after the options (argparse alone takes only one run of positionals).
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in ("bench", "tokenize") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.func(args)


if __name__ == "__main__":
    main()
