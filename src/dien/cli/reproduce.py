"""``dien reproduce``: the DIEN paper's Table 2 and Table 4, several seeds, beside the paper."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dien.cli.flags import add_config_flags, config_from_args
from dien.config import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` subcommand."""
    from dien.train.reproduce import TABLES

    p = sub.add_parser(
        "reproduce",
        help="Train the paper's Table 2 / Table 4 models over several seeds; report vs the paper.",
        description="Trains each model of the DIEN paper's Table 2 ("
        + ", ".join(TABLES["2"])
        + ") and/or Table 4 ("
        + ", ".join(TABLES["4"])
        + ") once per seed with the paper's settings (the config defaults; flags override "
        "them), then writes OUT/report.md and OUT/report.png: test AUC mean +- std, GAUC, "
        "logloss and time per epoch per model, beside the paper's AUC when the data is Amazon "
        "Books or Electronics. Runs go to OUT/runs; running the same command again reuses "
        "finished runs and continues stopped ones.",
    )
    p.add_argument("--out", type=Path, required=True, help="Folder for the runs and the report.")
    p.add_argument(
        "--table", choices=("2", "4", "all"), default="all", help="Which table (default: all)."
    )
    p.add_argument(
        "--seeds", type=int, default=5, help="Runs per model, seeds 0..N-1 (default: 5)."
    )
    p.add_argument(
        "--models",
        help="Comma-separated subset of the table's models (default: all of them).",
    )
    add_config_flags(p)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from dien.train.reproduce import reproduce

    if "model.name" in vars(args):
        raise ConfigError("--model: reproduce trains the table's models; choose with --models")
    if "train.seed" in vars(args):
        raise ConfigError("--seed: reproduce uses seeds 0..N-1; choose N with --seeds")
    config = config_from_args(args)
    if not config.data.path:
        raise ConfigError("no dataset: pass --data DIR (a folder made by `dien prepare`)")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None

    def report(model: str, seed: int, results: dict) -> None:
        t = results["test"]
        print(
            f"{model:>10s} seed {seed}: test AUC {t['auc']:.4f}  GAUC {t['gauc']:.4f}  "
            f"logloss {t['logloss']:.4f}",
            flush=True,
        )

    result = reproduce(
        config,
        args.out,
        table=args.table,
        seeds=args.seeds,
        models=models,
        command=shlex.join(["dien", *sys.argv[1:]]),
        on_result=report,
    )
    print(f"\nwrote {result.report} and {result.chart}")
    if result.paper is None:
        print("(the data is not Amazon Books or Electronics: no paper figures beside ours)")
    return 0


COMMANDS = {"reproduce": cmd_reproduce}
