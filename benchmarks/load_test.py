"""Load test of ``dien serve``: 1 user x 100 candidates per request, concurrency 1, 8 and 32.

What it does, all on 127.0.0.1 and bounded in requests and in time:

1. Generates Books-shaped data at the paper's vocabulary sizes (``synthetic.py``: 603,668
   users, 367,982 items, 1,600 categories, histories of mean length 13.7 capped at 100) with
   a few thousand samples, and trains DIEN at the paper's sizes (embedding 18, GRU 36, MLP
   200-80, auxiliary loss on) for one short epoch. Training quality does not matter here,
   only the model's shape; both are cached in ``--work``.
2. Starts ``dien serve`` on a free port in each of two modes, one after the other:
   ``shared`` (the service as shipped: the history is embedded and run through the interest
   extractor once per request, then the 100 candidates are scored against it) and
   ``per-candidate`` (the naive baseline: ``--per-candidate``, 100 full rows per request
   that each repeat the history work).
3. For each concurrency, ``C`` client threads each hold one keep-alive connection and send
   requests back to back (a test-split user's history, 100 candidate items) until
   ``--requests`` have been answered or ``--seconds`` have passed. Latency is measured at
   the client from sending to the last byte of the answer.

Prints p50 and p99 latency, requests/s and candidates/s per mode and concurrency, and the
paper's serving figures beside them. The client threads share the machine with the server:
on a small machine the client's own CPU time is part of the figures.

    python -m benchmarks.load_test                    # 400 requests or 20 s per cell
    python -m benchmarks.load_test --requests 100 --seconds 5
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.synthetic import SyntheticSpec, generate

PAPER = "paper (Taobao, production hardware): 6.6 ms per request, 360 requests/s per worker"
CANDIDATES = 100
CONCURRENCY = (1, 8, 32)
MODES = {"shared": [], "per-candidate": ["--per-candidate"]}


def prepare_run(work: Path, samples: int, seed: int = 0) -> Path:
    """A prepared Books-shaped dataset and a briefly trained DIEN run (cached in ``work``)."""
    from dien.config import Config
    from dien.train.loop import Trainer

    data_dir, run_dir = work / "data", work / "run"
    if (run_dir / "checkpoints" / "best.pt").is_file():
        return run_dir
    if not (data_dir / "manifest.json").is_file():
        spec = SyntheticSpec(train_samples=samples, test_samples=samples // 4, seed=seed)
        generate(spec).write_prepared(data_dir, command="benchmarks/load_test.py")
    config = Config().replace("data", path=str(data_dir)).replace("model", name="dien")
    config = config.replace("train", epochs=1, device="cpu", progress=False, log_interval=50)
    Trainer(config, run_dir).fit()
    return run_dir


def request_bodies(data_dir: Path, n: int, seed: int = 0) -> list[bytes]:
    """``n`` requests: a test-split sample's user and history, 100 random candidate items."""
    from dien.data.format import PreparedDataset

    dataset = PreparedDataset.open(data_dir)
    test = dataset.split("test")
    users, items, cats = (dataset.vocab(k) for k in ("users", "items", "categories"))
    rng = np.random.default_rng(seed)
    bodies = []
    for index in rng.integers(0, len(test), n):
        lo, hi = test.hist_offsets[index], test.hist_offsets[index + 1]
        history = [
            {"item": items[i], "category": cats[c]}
            for i, c in zip(test.hist_items[lo:hi], test.hist_cats[lo:hi], strict=True)
        ]
        candidates = [{"item": items[i]} for i in rng.integers(1, len(items), CANDIDATES)]
        body = {"user": users[test.user[index]], "history": history, "candidates": candidates}
        bodies.append(json.dumps(body).encode())
    return bodies


def model_ms(run_dir: Path, bodies: list[bytes], threads: int) -> dict[str, float]:
    """Median milliseconds of the model's work for one request, per mode, in this process.

    The same requests as the load, mapped to ids beforehand and scored one at a time without
    HTTP, JSON or batching: the part of a request's latency that the shared history saves on.
    """
    import torch

    from dien.serve.config import ServeConfig
    from dien.serve.scorer import Scorer

    torch.set_num_threads(threads)
    medians = {}
    for mode, flags in MODES.items():
        scorer = Scorer.from_run(run_dir, config=ServeConfig(shared_history=not flags))
        requests = []
        for body in map(json.loads, bodies):
            history = [(h["item"], h["category"]) for h in body["history"]]
            candidates = [(c["item"], None) for c in body["candidates"]]
            requests.append(scorer.encode(body["user"], history, candidates))
        seconds = []
        for request in requests[:20] + requests:  # the first 20 warm up
            start = time.perf_counter()
            scorer.score([request])
            seconds.append(time.perf_counter() - start)
        medians[mode] = 1000 * float(np.median(seconds[20:]))
    return medians


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, flags: list[str], threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "dien", "-q", "serve", "--run", str(run_dir)]
    command += ["--port", str(port), "--threads", str(threads), *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dien serve exited: {process.stderr.read().decode()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            time.sleep(0.3)
    stop_server(process)
    raise RuntimeError("dien serve did not answer /healthz within 120 s")


def stop_server(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def load(port: int, bodies: list[bytes], concurrency: int, requests: int, seconds: float) -> dict:
    """Send up to ``requests`` requests from ``concurrency`` threads for at most ``seconds``."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"content-type": "application/json"}
        while time.perf_counter() < stop_at:
            with lock:
                k = next(counter, None)
            if k is None:
                break
            start = time.perf_counter()
            connection.request("POST", "/v1/score", body=bodies[k % len(bodies)], headers=headers)
            response = connection.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - start
            with lock:
                if response.status == 200:
                    latencies.append(elapsed)
                else:
                    failures.append(payload.decode()[:200])
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "failures": len(failures),
        "p50_ms": float(np.percentile(ms, 50)) if ms.size else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if ms.size else float("nan"),
        "requests_per_s": len(latencies) / wall,
        "candidates_per_s": len(latencies) * CANDIDATES / wall,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| mode | concurrency | requests | p50 ms | p99 ms | requests/s | candidates/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['requests_per_s']:.1f} | {r['candidates_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/load_test"))
    parser.add_argument("--samples", type=int, default=4000, help="Training samples.")
    parser.add_argument("--requests", type=int, default=400, help="Most requests per cell.")
    parser.add_argument("--seconds", type=float, default=20.0, help="Most seconds per cell.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads of the server.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    run_dir = prepare_run(args.work, args.samples)
    bodies = request_bodies(args.work / "data", 256)
    lengths = [len(json.loads(b)["history"]) for b in bodies]
    rows = []
    for mode, flags in MODES.items():
        process, port = start_server(run_dir, flags, args.threads)
        try:
            load(port, bodies, 1, 20, 10.0)  # warm-up
            for concurrency in CONCURRENCY:
                result = load(port, bodies, concurrency, args.requests, args.seconds)
                rows.append({"mode": mode, **result})
                print(
                    f"{mode:>13s} x{concurrency:<2d}: p50 {result['p50_ms']:.1f} ms  "
                    f"p99 {result['p99_ms']:.1f} ms  {result['requests_per_s']:.1f} req/s",
                    flush=True,
                )
        finally:
            stop_server(process)

    print()
    print(
        f"DIEN at paper sizes, 1 user x {CANDIDATES} candidates per request, history length "
        f"mean {np.mean(lengths):.1f} (max {max(lengths)}); server: 1 process, "
        f"{args.threads} torch thread(s); {os.cpu_count()} CPUs {platform.machine()}; "
        f"load average at start {load_before:.1f}"
    )
    print(table(rows))
    model = model_ms(run_dir, bodies[:200], args.threads)
    print(
        "model time per request in process (no HTTP, JSON or batching), median: "
        + ", ".join(f"{mode} {ms:.2f} ms" for mode, ms in model.items())
    )
    print(PAPER)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
