"""The ``dien`` command: the only place that parses flags and prints."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dien import __version__
from dien.cli import reproduce, serving
from dien.cli.flags import add_config_flags, config_from_args
from dien.config import MODEL_NAMES, Config, ConfigError
from dien.data.download import DownloadError
from dien.data.format import DatasetError, PreparedDataset

if TYPE_CHECKING:
    from dien.train.distributed import World

logger = logging.getLogger("dien")

DEMO_MODELS = ("base", "din", "dien")
# The demo keeps each user's 20 most recent behaviours (the paper caps at 100). MovieLens users
# rate 149 movies on average, and a sum-pooled history of 100 ratings spread over years drowns
# the recent taste that predicts the next one: the base model loses several points of AUC at
# 100, and every model trains faster on shorter histories.
DEMO_MAX_HISTORY = 20
DEMO_SEEDS = 3


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    prepare = sub.add_parser("prepare", help="Raw behaviour logs -> a prepared dataset folder.")
    kinds = prepare.add_subparsers(dest="kind", required=True, metavar="SOURCE")

    ml = kinds.add_parser(
        "movielens",
        help="MovieLens ratings (the bundled latest-small copy by default).",
        description="Every rating is a click; each gets a sampled negative with the same "
        "history; splits by time so every training event precedes every test event.",
    )
    ml.add_argument("--ratings", type=Path, help="ratings.csv (default: the bundled copy)")
    ml.add_argument("--movies", type=Path, help="movies.csv (default: the bundled copy)")
    ml.add_argument(
        "--min-history",
        type=int,
        default=1,
        help="Skip events with fewer earlier events of the same user.",
    )
    ml.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="Latest events before the test events that form the validation split.",
    )
    ml.add_argument(
        "--test-fraction", type=float, default=0.1, help="Latest events that form the test split."
    )
    ml.add_argument(
        "--split",
        choices=("user_time", "global_time"),
        default="user_time",
        help="user_time: each user's latest events are test (default); "
        "global_time: one calendar cut-off for all users.",
    )

    amazon = kinds.add_parser(
        "amazon",
        help="Amazon 2014 reviews + metadata, the DIEN authors' protocol.",
        description="Each user's last review gives a positive and a sampled negative with the "
        "same history; users split 9:1 into train and test; vocabularies from train only.",
    )
    amazon.add_argument("--reviews", type=Path, help="reviews_CATEGORY_5.json.gz")
    amazon.add_argument("--meta", type=Path, help="meta_CATEGORY.json.gz")
    amazon.add_argument(
        "--download", metavar="CATEGORY", help="Fetch both files first, e.g. Books or Electronics."
    )
    amazon.add_argument(
        "--download-dir",
        type=Path,
        default=Path("downloads"),
        help="Where --download puts the raw files (default: downloads).",
    )
    amazon.add_argument(
        "--train-fraction",
        type=float,
        default=0.9,
        help="Share of users in the training split (default: 0.9).",
    )
    amazon.add_argument(
        "--valid-fraction",
        type=float,
        default=0.0,
        help="Share of users moved from train to a validation split.",
    )

    release = kinds.add_parser(
        "dien-release",
        help="The DIEN authors' released prepared files (local_train_splitByUser, ...).",
    )
    release.add_argument("--path", type=Path, required=True, help="Folder of the files.")

    events = kinds.add_parser(
        "events",
        help="Your own event table (csv, parquet or jsonl); needs `pip install dien[events]`.",
        description="Histories from each user's earlier clicks; negatives are sampled where "
        "there is no label column; splits by time or by user.",
    )
    events.add_argument("--input", type=Path, required=True, help="csv, parquet or jsonl file.")
    for col in ("user", "item", "time"):
        events.add_argument(f"--{col}-col", required=True, help=f"Column of the {col}.")
    events.add_argument("--category-col", help="Column of the item's category.")
    events.add_argument("--label-col", help="Column with 1 for click and 0 for no click.")
    events.add_argument("--behavior-col", help="Column of the behaviour type.")
    events.add_argument(
        "--click-values",
        help="Comma-separated behaviour values that count as clicks (with --behavior-col).",
    )
    events.add_argument("--max-history", type=int, help="Store at most N recent behaviours.")
    events.add_argument(
        "--min-history",
        type=int,
        default=1,
        help="Skip events with fewer earlier clicks (default: 1).",
    )
    events.add_argument(
        "--negatives-per-positive",
        type=int,
        help="Sampled negatives per click (default: 1 without labels).",
    )
    events.add_argument("--split", choices=("time", "user"), default="time")
    events.add_argument("--valid-fraction", type=float, default=0.1)
    events.add_argument("--test-fraction", type=float, default=0.1)
    events.add_argument(
        "--min-item-count",
        type=int,
        default=1,
        help="Items seen fewer times in training map to the unknown id.",
    )

    for parser in (amazon, release, events):
        parser.add_argument(
            "--on-bad-lines",
            choices=("error", "skip"),
            default="error",
            help="Stop at the first bad line, or skip and count each kind.",
        )
    for parser in (ml, amazon, release, events):
        parser.add_argument("--out", type=Path, required=True, help="Folder to write.")
    for parser in (ml, amazon, events):
        parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling.")


def _add_train(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="Train a model on a prepared dataset into a run folder.",
        description="Train one model. Options come from the defaults, then --config, then flags.",
    )
    train.add_argument("--out", type=Path, required=True, help="Run folder to create.")
    train.add_argument(
        "--resume", action="store_true", help="Continue the run in --out from its last checkpoint."
    )
    add_config_flags(train)


def _add_run_readers(sub: argparse._SubParsersAction) -> None:
    for name, text in (
        ("evaluate", "AUC, GAUC and logloss of a run on a split."),
        ("predict", "Click probabilities of a run for every sample of a split, as CSV."),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--run", type=Path, required=True, help="Run folder.")
        p.add_argument(
            "--data", type=Path, help="Prepared dataset (default: the one the run was trained on)."
        )
        p.add_argument("--split", default="test", help="Split to score (default: test).")
        p.add_argument("--checkpoint", choices=("best", "last"), default="best")
        p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu).")
        if name == "predict":
            p.add_argument("--out", type=Path, required=True, help="CSV file to write.")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="Prepare the bundled MovieLens data and train base, din and dien on it.",
        description="Prepares the bundled MovieLens data, trains each model for each seed "
        "(finished runs are reused), and prints test AUC, GAUC and logloss per model. "
        f"Histories keep the {DEMO_MAX_HISTORY} most recent behaviours unless "
        "--max-history says otherwise.",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="Output folder.")
    demo.add_argument(
        "--models",
        default=",".join(DEMO_MODELS),
        help=f"Comma-separated models (any of {', '.join(MODEL_NAMES)}).",
    )
    demo.add_argument(
        "--seeds", type=int, default=DEMO_SEEDS, help=f"Seeds per model (default {DEMO_SEEDS})."
    )
    add_config_flags(demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dien",
        description="DIEN, DIN and the DIEN paper's baselines for click-through-rate prediction.",
    )
    parser.add_argument("--version", action="version", version=f"dien {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="Only warnings and errors.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_prepare(sub)
    _add_train(sub)
    _add_run_readers(sub)
    _add_demo(sub)
    serving.add_parsers(sub)
    reproduce.add_parsers(sub)
    return parser


def cmd_prepare(args: argparse.Namespace) -> int:
    command = " ".join(["dien", *sys.argv[1:]])
    if args.kind == "movielens":
        from dien.data.movielens import bundled_movielens_dir, prepare_movielens

        default = bundled_movielens_dir()
        dataset = prepare_movielens(
            args.ratings or default / "ratings.csv",
            args.movies or default / "movies.csv",
            args.out,
            seed=args.seed,
            min_history=args.min_history,
            valid_fraction=args.valid_fraction,
            test_fraction=args.test_fraction,
            split=args.split,
            command=command,
        )
    elif args.kind == "amazon":
        dataset = _prepare_amazon(args, command)
    elif args.kind == "dien-release":
        from dien.data.release import prepare_dien_release

        dataset = prepare_dien_release(
            args.path, args.out, on_bad_lines=args.on_bad_lines, command=command
        )
    else:
        from dien.data.events import prepare_events

        clicks = args.click_values.split(",") if args.click_values else None
        dataset = prepare_events(
            args.input,
            args.out,
            user_col=args.user_col,
            item_col=args.item_col,
            time_col=args.time_col,
            category_col=args.category_col,
            label_col=args.label_col,
            behavior_col=args.behavior_col,
            click_values=clicks,
            max_history=args.max_history,
            min_history=args.min_history,
            negatives_per_positive=args.negatives_per_positive,
            split=args.split,
            valid_fraction=args.valid_fraction,
            test_fraction=args.test_fraction,
            min_item_count=args.min_item_count,
            seed=args.seed,
            on_bad_lines=args.on_bad_lines,
            command=command,
        )
    print(_describe_dataset(dataset))
    return 0


def _prepare_amazon(args: argparse.Namespace, command: str) -> PreparedDataset:
    from dien.data.amazon import prepare_amazon
    from dien.data.download import download_amazon

    if args.download:
        reviews, meta = download_amazon(args.download, args.download_dir)
    elif args.reviews and args.meta:
        reviews, meta = args.reviews, args.meta
    else:
        raise ValueError("pass --reviews and --meta, or --download CATEGORY")
    return prepare_amazon(
        reviews,
        meta,
        args.out,
        seed=args.seed,
        train_fraction=args.train_fraction,
        valid_fraction=args.valid_fraction,
        on_bad_lines=args.on_bad_lines,
        command=command,
    )


def _describe_dataset(dataset: PreparedDataset) -> str:
    counts = dataset.manifest["counts"]
    samples = ", ".join(f"{k} {v:,}" for k, v in counts["samples"].items())
    lines = [
        f"prepared {dataset.path}",
        f"  users {counts['users']:,}, items {counts['items']:,}, "
        f"categories {counts['categories']:,}",
        f"  samples: {samples}",
    ]
    if "events" in counts:
        lines.insert(2, f"  events {counts['events']:,}")
    for reason, n in counts.get("filtered", {}).items():
        lines.append(f"  filtered: {reason}: {n:,}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    """Train one model; under ``torchrun``, one of the processes that train it together."""
    from dien.train import distributed

    world = distributed.init_from_env()
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports for all
    try:
        return _train(args, world)
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace, world: World) -> int:
    from dien.train.distributed import on_main
    from dien.train.loop import Trainer
    from dien.train.run import RunFolder

    if args.resume:
        config = config_from_args(args, on_main(RunFolder(args.out).config, world))
    else:
        config = config_from_args(args)
    if not config.data.path:
        raise ConfigError("no dataset: pass --data DIR (a folder made by `dien prepare`)")
    result = Trainer(config, args.out, resume=args.resume).fit()
    if not world.is_main:
        return 0
    print(f"run {args.out}: best step {result.best_step}")
    for split, metrics in (("valid", result.valid), ("test", result.test)):
        if metrics is not None:
            print(
                f"  {split:5s} AUC {metrics.auc:.4f}  GAUC {metrics.gauc:.4f}  "
                f"logloss {metrics.logloss:.4f}  ({metrics.samples:,} samples)"
            )
    return 0


def _open_for_run(args: argparse.Namespace):
    from dien.train.inference import load_run

    loaded = load_run(args.run, device=args.device, checkpoint=args.checkpoint)
    dataset = PreparedDataset.open(args.data or loaded.config.data.path)
    return loaded, dataset


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dien.train.inference import score_split

    loaded, dataset = _open_for_run(args)
    _, metrics = score_split(loaded, dataset, args.split)
    print(json.dumps({"run": str(args.run), "split": args.split, **metrics.as_dict()}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from dien.train.inference import score_split

    loaded, dataset = _open_for_run(args)
    probabilities, metrics = score_split(loaded, dataset, args.split)
    arrays = dataset.split(args.split)
    users, items = dataset.vocab("users"), dataset.vocab("items")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user", "item", "label", "probability"])
        for u, i, y, p in zip(arrays.user, arrays.item, arrays.label, probabilities, strict=True):
            writer.writerow([users[u], items[i], int(y), f"{p:.8f}"])
    print(f"wrote {len(probabilities):,} predictions to {args.out} (AUC {metrics.auc:.4f})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dien.data.movielens import bundled_movielens_dir, prepare_movielens
    from dien.train.suite import run_suite, suite_table, write_summary

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    data_dir = args.out / "data"
    if not (data_dir / "manifest.json").is_file():
        root = bundled_movielens_dir()
        print(
            _describe_dataset(
                prepare_movielens(
                    root / "ratings.csv", root / "movies.csv", data_dir, command=" ".join(sys.argv)
                )
            )
        )
    base = Config().replace("data", path=str(data_dir), max_history=DEMO_MAX_HISTORY)
    config = config_from_args(args, base)

    def report(model: str, seed: int, results: dict) -> None:
        t = results["test"]
        print(
            f"{model:>10s} seed {seed}: test AUC {t['auc']:.4f}  GAUC {t['gauc']:.4f}  "
            f"logloss {t['logloss']:.4f}",
            flush=True,
        )

    rows = run_suite(config, models, range(args.seeds), args.out / "runs", on_result=report)
    write_summary(args.out, rows)
    print()
    print(suite_table(rows))
    return 0


COMMANDS = {
    "prepare": cmd_prepare,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "demo": cmd_demo,
    **serving.COMMANDS,
    **reproduce.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command](args)
    except (
        ConfigError,
        DatasetError,
        DownloadError,
        FileNotFoundError,
        FileExistsError,
        ValueError,
    ) as e:
        print(f"dien {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dien {args.command}: interrupted", file=sys.stderr)
        return 130
