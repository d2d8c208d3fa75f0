"""Training samples/s of ``dien train`` on 1 and on 2 processes (``torchrun``, gloo on the CPU).

The data are Books-shaped (``benchmarks.synthetic``: Books' vocabulary sizes, so about 970,000
embedding rows of 18, histories of mean length 13.7 capped at 100), written once as a prepared
dataset into ``--work``. Each process count trains the same model (the paper's sizes: embedding
18, GRU 36, MLP 200-80, batch 128, DIEN with the auxiliary loss, sparse embedding gradients
with SparseAdam) for one epoch on the same samples, through ``torchrun --nproc-per-node N -m
dien train``, with ``--threads`` intra-op threads per process.

Samples/s is the training rate that the run logged in ``metrics.jsonl`` (training steps only:
no start-up, no evaluation, no checkpoint), over all log windows but the first (the warm-up,
and DDP's first steps). The wall time of the whole command, start-up and the test split's
evaluation included, is printed beside it. The machine's load average before and after each
run is printed too: on a machine shared with other work the ratio says less.

Run ``python -m benchmarks.distributed`` from the repository root (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.synthetic import SyntheticSpec, generate

LOG_INTERVAL = 20  # steps per metrics line


def prepare_data(folder: Path, samples: int, test_samples: int, seed: int = 0) -> Path:
    """A prepared Books-shaped dataset (no validation split), made once and kept in ``folder``."""
    if (folder / "manifest.json").is_file():
        return folder
    spec = SyntheticSpec(train_samples=samples, test_samples=test_samples, seed=seed)
    return generate(spec).write_prepared(folder, command="benchmarks/distributed.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(processes: int, data: Path, run: Path, threads: int) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    train = ["-m", "dien", "-q", "train", "--out", str(run), "--data", str(data)]
    train += ["--model", "dien", "--epochs", "1", "--eval-interval", "0"]
    train += ["--checkpoint-interval", "0", "--log-interval", str(LOG_INTERVAL)]
    train += ["--device", "cpu", "--threads", str(threads), "--no-progress"]
    return launcher + train


def logged_rate(run: Path) -> tuple[float, int]:
    """Training samples/s over the log windows after the first, and the samples they hold."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    windows = [
        (r["samples"] - prev["samples"], r["samples_per_s"])
        for prev, r in zip(train, train[1:], strict=False)
    ]
    samples = sum(n for n, _ in windows)
    seconds = sum(n / rate for n, rate in windows)
    return samples / seconds, samples


def run_once(processes: int, data: Path, work: Path, threads: int, timeout: float) -> dict:
    run = work / f"run-{processes}"
    shutil.rmtree(run, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    load_before = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(
        train_command(processes, data, run, threads),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{processes} processes: training failed\n{done.stderr[-3000:]}")
    rate, samples = logged_rate(run)
    test = json.loads((run / "results.json").read_text())["test"]
    return {
        "processes": processes,
        "samples_per_s": rate,
        "timed_samples": samples,
        "wall_s": wall,
        "test_auc": test["auc"],
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20_000, help="training samples")
    parser.add_argument("--test-samples", type=int, default=2_000)
    parser.add_argument("--processes", default="1,2", help="process counts to compare")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--work", type=Path, help="folder for the data and runs (default: temp)")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="dien-distributed-bench-"))
    data = prepare_data(work / "data", args.samples, args.test_samples)
    counts = [int(n) for n in args.processes.split(",")]
    print(f"Books-shaped data: {args.samples:,} training samples; DIEN at the paper's sizes,")
    print(f"batch 128, one epoch, gloo on the CPU, {args.threads} thread(s) per process;")
    print(f"machine: {os.cpu_count()} CPUs, load average {fmt_load(os.getloadavg())} at start")
    rows = [run_once(n, data, work, args.threads, args.timeout) for n in counts]

    print()
    print("| processes | train samples/s | vs 1 | wall s | test AUC | load avg before / after |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = rows[0]["samples_per_s"]
    for r in rows:
        print(
            f"| {r['processes']} | {r['samples_per_s']:,.0f} | {r['samples_per_s'] / base:.2f}x "
            f"| {r['wall_s']:.1f} | {r['test_auc']:.4f} "
            f"| {fmt_load(r['load_before'])} / {fmt_load(r['load_after'])} |"
        )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def fmt_load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    main()
