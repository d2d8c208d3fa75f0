"""``dien export`` and ``dien serve``: a trained run for other serving stacks, or served here."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` and ``serve`` subcommands."""
    export = sub.add_parser(
        "export",
        help="A run's model -> ONNX or TorchScript, with a JSON sidecar.",
        description="Write the run's model with inputs (user, item, category, hist_items, "
        "hist_cats, hist_lengths) as vocabulary ids and outputs (probability, logit), for any "
        "batch size and history length, plus <file>.json describing them. The export is "
        "checked against the eager model before the command returns.",
    )
    export.add_argument("--run", type=Path, required=True, help="Run folder.")
    export.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    export.add_argument(
        "--out", type=Path, help="File to write (default: RUN/export/<model>.onnx or .pt)."
    )
    export.add_argument("--checkpoint", choices=("best", "last"), default="best")

    serve = sub.add_parser(
        "serve",
        help="Serve a run over HTTP: POST /v1/score, /healthz, /metrics.",
        description="Score candidate items for one user's behaviour sequence over HTTP. Raw "
        "ids are mapped through the run's dataset vocabularies; concurrent requests are "
        "batched. The OpenAPI schema is at /openapi.json, interactive docs at /docs.",
    )
    serve.add_argument("--run", type=Path, required=True, help="Run folder.")
    serve.add_argument("--port", type=int, required=True, help="TCP port to listen on.")
    serve.add_argument("--host", default="127.0.0.1", help="Address to bind (default: 127.0.0.1).")
    serve.add_argument(
        "--data", type=Path, help="Prepared dataset (default: the one the run was trained on)."
    )
    serve.add_argument("--checkpoint", choices=("best", "last"), default="best")
    serve.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu).")
    serve.add_argument(
        "--max-batch-window-ms",
        type=float,
        default=2.0,
        help="Wait up to this long for concurrent requests to score together (default: 2).",
    )
    serve.add_argument(
        "--max-batch-candidates",
        type=int,
        default=4096,
        help="Most candidates of all requests in one pass of the model (default: 4096).",
    )
    serve.add_argument(
        "--max-candidates", type=int, default=1000, help="Most candidates per request."
    )
    serve.add_argument(
        "--max-history",
        type=int,
        help="Longest accepted history (default: the run's data.max_history).",
    )
    serve.add_argument(
        "--truncate-history",
        action="store_true",
        help="Keep the most recent --max-history behaviours of a longer history instead of "
        "rejecting the request with 422.",
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=1,
        help="Torch threads of the model worker (default: 1; one request's tensors are too "
        "small to gain from more, and spare cores serve better as more server processes).",
    )
    serve.add_argument(
        "--per-candidate",
        action="store_true",
        help="Baseline for benchmarks: score each candidate as a full sample, repeating the "
        "history work per candidate.",
    )


def cmd_export(args: argparse.Namespace) -> int:
    from dien.export import export_run

    result = export_run(args.run, args.format, args.out, checkpoint=args.checkpoint)
    checked = (
        "not checked (onnxruntime missing)"
        if result.max_abs_diff is None
        else f"max abs diff vs eager {result.max_abs_diff:.2g}"
    )
    print(f"wrote {result.path} and {result.sidecar.name} ({checked})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from dien.serve import Scorer, ServeConfig, run_server

    torch.set_num_threads(args.threads)

    config = ServeConfig(
        max_candidates=args.max_candidates,
        max_history=args.max_history,
        truncate_history=args.truncate_history,
        batch_window_ms=args.max_batch_window_ms,
        max_batch_candidates=args.max_batch_candidates,
        shared_history=not args.per_candidate,
    )
    scorer = Scorer.from_run(
        args.run, args.data, config, device=args.device, checkpoint=args.checkpoint
    )
    print(
        f"serving {scorer.model_name} from {args.run} on http://{args.host}:{args.port} "
        f"(max history {scorer.max_history}, max candidates {config.max_candidates})",
        flush=True,
    )
    run_server(scorer, args.host, args.port)
    return 0


COMMANDS = {"export": cmd_export, "serve": cmd_serve}
