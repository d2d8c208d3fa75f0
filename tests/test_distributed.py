"""Training across processes: the pieces in one process, then real ranks started by torchrun.

In one process: every row of a global batch goes to exactly one rank, ranks draw their own
auxiliary-loss negatives, and the ranks' loss weights make their averaged gradient (what
DistributedDataParallel computes) the gradient of the global batch. With ``torchrun`` on the
CPU (gloo): two ranks log the same samples and the same first loss as one process, and their
evaluation, gathered from both ranks, equals scoring the saved model in one process. The slow
tests train on the bundled MovieLens data (two ranks reach one process's test AUC within
0.005) and kill both ranks of a run mid-epoch, then resume it on two ranks (it ends exactly
like a run that never stopped) and on one.
"""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_data import SMALL

from dien.config import Config, ConfigError, config_to_toml
from dien.data.batch import Batch
from dien.data.loader import BatchLoader
from dien.data.movielens import bundled_movielens_dir, prepare_movielens
from dien.data.sampling import NegativeSampler
from dien.train import distributed
from dien.train.checkpoint import load_checkpoint
from dien.train.distributed import SINGLE, Shard, World, shard_rows, sharded_batches
from dien.train.inference import load_run
from dien.train.loop import Trainer, evaluate_split
from dien.train.run import RunFolder

# Dice normalises by the batch's statistics, which under DDP are each rank's own rows' (as
# BatchNorm without SyncBatchNorm); PReLU depends on no other row, so the gradient is exact.
EXACT = dict(SMALL, activation="prelu")
TRAIN = dict(
    epochs=1,
    log_interval=1,
    eval_interval=0,
    checkpoint_interval=3,
    deterministic=True,
    progress=False,
    device="cpu",
    threads=1,
)
TIMEOUT = 300  # seconds any one torchrun may take
STEP_DELAY = 0.08  # seconds each step sleeps in a run that a test kills

pytestmark = pytest.mark.usefixtures("restore_torch_globals")


def tiny_config(tiny, model=SMALL, **train) -> Config:
    c = Config().replace("data", path=str(tiny.path), batch_size=64, eval_batch_size=256)
    c = c.replace("model", name="dien", **model)
    return c.replace("train", **{**TRAIN, **train})


def config_file(config: Config, folder: Path) -> str:
    """``config`` as a TOML file for ``--config``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(config_to_toml(config))
    return str(path)


# The pieces, in one process


def test_every_row_of_a_global_batch_goes_to_exactly_one_rank():
    index = np.random.default_rng(0).permutation(23)  # (B,) a global batch's rows
    for size in range(1, 5):
        parts = [shard_rows(index, World(rank, size)) for rank in range(size)]
        assert sorted(np.concatenate(parts)) == sorted(index)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_each_rank_draws_its_own_negatives_and_rank_0_those_of_one_process(tiny):
    sampler = NegativeSampler(tiny.item_frequency, tiny.item_category, mode="frequency")
    kwargs = dict(batch_size=64, max_history=100, shuffle=True, seed=3, aux_sampler=sampler)
    split = tiny.split("train")
    one = BatchLoader(split, **kwargs)  # a single process's loader
    rank0, rank1 = (BatchLoader(split, **kwargs, rank=r) for r in (0, 1))
    index = one.batch_indices()[0]
    assert all(np.array_equal(one.batch_indices()[0], x.batch_indices()[0]) for x in (rank0, rank1))
    alone, first, second = (x.assemble(index, 0).neg_items for x in (one, rank0, rank1))
    assert torch.equal(alone, first) and not torch.equal(alone, second)


def gradients(trainer: Trainer, shard: Shard) -> dict[str, torch.Tensor]:
    """Every parameter's gradient after one training step on ``shard`` (dense; zero if unused)."""
    trainer.model.zero_grad(set_to_none=True)
    trainer._step(shard.batch, 1, (shard.click_share, shard.aux_share))
    return {
        name: torch.zeros_like(p)
        if p.grad is None
        else (p.grad.to_dense() if p.grad.is_sparse else p.grad.clone())
        for name, p in trainer.model.named_parameters()
    }


def concatenate(batches: list[Batch]) -> Batch:
    """One batch of the rows of ``batches``, histories padded to the longest."""
    T = max(b.hist_items.shape[1] for b in batches)
    fields = {}
    for f in dataclasses.fields(Batch):
        parts = [getattr(b, f.name) for b in batches]
        if parts[0].dim() > 1:  # (B, T) or (B, T, K): pad the steps with id 0
            parts = [
                torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, T - p.shape[1]))
                for p in parts
            ]
        fields[f.name] = torch.cat(parts)
    return Batch(**fields)


@pytest.mark.parametrize("batch_size", [67, 1199])  # 1199: one global batch of 1 row, a stand-in
def test_two_ranks_averaged_gradient_is_the_global_batch_gradient(tiny, tmp_path, batch_size):
    config = tiny_config(tiny, EXACT).replace("data", batch_size=batch_size)
    trainer = Trainer(config, tmp_path / "run")
    trainer.optimizers = []  # keep the gradients, change no weight
    loader = trainer.train_loader
    position = int(np.argmin([len(index) for index in loader.batch_indices()]))
    shards = [next(sharded_batches(loader, position, World(r, 2))) for r in range(2)]
    assert shards[0].samples == 1200 % batch_size  # the last batch: 61 rows (31 and 30), or 1

    per_rank = []
    for rank, shard in enumerate(shards):
        trainer.world = World(rank, 2)
        per_rank.append(gradients(trainer, shard))
    trainer.world = SINGLE
    rows = [s.batch for s in shards if s.click_share > 0]  # a stand-in row weighs nothing
    whole = gradients(trainer, Shard(concatenate(rows), shards[0].samples, 1.0, 1.0))

    assert any(g.abs().sum() > 0 for g in whole.values())
    for name, expected in whole.items():
        averaged = (per_rank[0][name] + per_rank[1][name]) / 2  # DDP averages over the ranks
        torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-7, msg=name)


def test_sparse_gradients_on_gpus_and_too_few_gpus_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="nccl .* cannot all-reduce sparse gradients"):
        distributed.check_sparse_gradients(True, torch.device("cuda"), World(0, 2))
    distributed.check_sparse_gradients(True, torch.device("cpu"), World(0, 2))
    distributed.check_sparse_gradients(False, torch.device("cuda"), World(0, 2))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.rank_device(torch.device("cuda"), World(0, 2, 0)).index == 0
    with pytest.raises(ConfigError, match="local rank 1 has no GPU"):
        distributed.rank_device(torch.device("cuda"), World(1, 2, 1))


# Real ranks, started by torchrun


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(ranks: int, *args: str) -> list[str]:
    """``torchrun --nproc-per-node ranks -m dien -q ARGS`` on this machine, at a free port."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    return [*launcher, "-m", "dien", "-q", *args]


def run_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def check_run(command: list[str]) -> None:
    done = subprocess.run(command, env=run_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def train_records(run: Path) -> list[dict]:
    return [r for r in RunFolder(run).records() if r["kind"] == "train"]


def test_two_ranks_see_one_process_samples_and_gather_exact_metrics(tiny, tmp_path):
    config = tiny_config(tiny, EXACT)
    cfg = config_file(config, tmp_path / "config")
    Trainer(config, tmp_path / "one").fit()
    check_run(torchrun(2, "train", "--out", str(tmp_path / "two"), "--config", cfg))
    one, two = results(tmp_path / "one"), results(tmp_path / "two")

    assert (two["steps"], two["samples_seen"]) == (one["steps"], one["samples_seen"]) == (19, 1200)
    steps = [r["step"] for r in train_records(tmp_path / "two")]
    assert steps == list(range(1, 20))  # rank 0 alone writes metrics.jsonl
    first_one, first_two = train_records(tmp_path / "one")[0], train_records(tmp_path / "two")[0]
    assert first_two["samples"] == first_one["samples"] == 64
    assert first_two["bce_loss"] == pytest.approx(first_one["bce_loss"], abs=1e-6)

    model = load_run(tmp_path / "two").model  # the best checkpoint, scored in this process
    test = evaluate_split(model, tiny.split("test"), config.data, torch.device("cpu"))
    assert two["test"]["auc"] == pytest.approx(test.auc, abs=1e-9)
    assert two["test"]["gauc"] == pytest.approx(test.gauc, abs=1e-9)
    assert two["test"]["samples"] == len(tiny.split("test"))


# Slow: the bundled MovieLens data, and ranks killed mid-epoch

MOVIELENS_MODEL = dict(
    embedding_dim=8, hidden_size=8, mlp_sizes=(16,), attention_mlp_sizes=(8,), aux_mlp_sizes=(8,)
)


@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
    raw = bundled_movielens_dir()
    out = tmp_path_factory.mktemp("movielens") / "ds"
    return prepare_movielens(raw / "ratings.csv", raw / "movies.csv", out)


@pytest.mark.slow
def test_two_ranks_reach_one_process_test_auc_on_movielens(movielens, tmp_path):
    config = Config().replace(
        "data", path=str(movielens.path), batch_size=256, eval_batch_size=2048, max_history=10
    )
    config = config.replace("model", name="dien", **MOVIELENS_MODEL)
    config = config.replace("train", **{**TRAIN, "log_interval": 100, "deterministic": False})
    cfg = config_file(config, tmp_path / "config")
    check_run(torchrun(1, "train", "--out", str(tmp_path / "one"), "--config", cfg))
    check_run(torchrun(2, "train", "--out", str(tmp_path / "two"), "--config", cfg))
    one, two = results(tmp_path / "one"), results(tmp_path / "two")
    print(f"test AUC: 1 process {one['test']['auc']:.4f}, 2 processes {two['test']['auc']:.4f}")
    assert two["samples_seen"] == one["samples_seen"] == len(movielens.split("train"))
    assert two["steps"] == one["steps"]
    assert abs(two["test"]["auc"] - one["test"]["auc"]) < 0.005
    assert abs(two["test"]["gauc"] - one["test"]["gauc"]) < 0.005


def logged_step(run: Path) -> int:
    """The last training step in metrics.jsonl (a half-written last line is ignored)."""
    step = 0
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "train":
            step = max(step, record["step"])
    return step


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux: /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def kill_ranks_at(command: list[str], run: Path, at_step: int) -> int:
    """Start torchrun; SIGKILL it and every rank once ``run`` logged ``at_step``. Step reached.

    torchrun starts each rank in a session of its own, so the ranks are killed one by one.
    """
    env = run_env(DIEN_TEST_STEP_DELAY=str(STEP_DELAY))
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT
        while logged_step(run) < at_step:
            assert launcher.poll() is None, f"ended before step {at_step}: {launcher.stderr.read()}"
            assert time.monotonic() < deadline, f"step {at_step} not reached in {TIMEOUT} s"
            time.sleep(0.01)
    finally:
        ranks = children(launcher.pid) if launcher.poll() is None else []
        launcher.kill()
        for pid in ranks:
            os.kill(pid, signal.SIGKILL)
        launcher.wait(timeout=30)
    assert len(ranks) == 2
    time.sleep(0.5)  # a killed rank writes nothing more; let the kernel take them down
    return logged_step(run)


def comparable(run: Path) -> tuple[dict, list[dict]]:
    """results.json and the metrics lines without their timing."""
    records = [
        {k: v for k, v in r.items() if k != "samples_per_s"} for r in RunFolder(run).records()
    ]
    return results(run), records


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks in /proc")
def test_ranks_killed_mid_epoch_resume_on_two_ranks_exactly_and_on_one(tiny, tmp_path):
    config = tiny_config(tiny, epochs=2, eval_interval=10)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    cfg = config_file(config, tmp_path / "config")
    check_run(torchrun(2, "train", "--out", str(reference), "--config", cfg))
    reached = kill_ranks_at(torchrun(2, "train", "--out", str(killed), "--config", cfg), killed, 12)
    saved = load_checkpoint(killed / "checkpoints" / "last.pt")["progress"]
    assert 0 < saved["step"] < 38 and reached - saved["step"] <= TRAIN["checkpoint_interval"]
    on_one = tmp_path / "on-one"
    shutil.copytree(killed, on_one)

    check_run(torchrun(2, "train", "--out", str(killed), "--resume", "--no-progress"))
    assert comparable(killed) == comparable(reference)

    Trainer(RunFolder(on_one).config(), on_one, resume=True).fit()
    finished, expected = results(on_one), results(reference)
    assert (finished["steps"], finished["samples_seen"]) == (38, 2400)
    assert [r["step"] for r in train_records(on_one)] == list(range(1, 39))
    assert abs(finished["test"]["auc"] - expected["test"]["auc"]) < 0.05
