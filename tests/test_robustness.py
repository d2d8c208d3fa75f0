"""A run survives kill -9 at any step, non-finite numbers and a full or unwritable disk.

The kill tests start ``python -m dien train`` on the tiny dataset with the test-only
``DIEN_TEST_STEP_DELAY`` (each step sleeps, so a kill lands mid-epoch), send SIGKILL once the
run has logged a randomly drawn step, continue with ``--resume``, and compare the finished run
with one that never stopped: results.json and every metrics line but the timing must be equal.
"""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_data import SMALL

from dien.config import Config
from dien.train import checkpoint
from dien.train.checkpoint import StorageError, load_checkpoint, save_checkpoint
from dien.train.loop import NonFiniteError, Trainer
from dien.train.run import RunFolder

TRAIN = dict(
    epochs=2,
    log_interval=1,
    eval_interval=10,
    checkpoint_interval=3,
    deterministic=True,
    progress=False,
    device="cpu",
    threads=1,
)
STEPS = 2 * 19  # 2 epochs of ceil(1200 / 64) batches
STEP_DELAY = 0.08  # seconds each step sleeps in a process that a test kills

pytestmark = pytest.mark.usefixtures("restore_torch_globals")


def small_config(tiny, **train) -> Config:
    c = Config().replace("data", path=str(tiny.path), batch_size=64, eval_batch_size=256)
    c = c.replace("model", name="dien", **SMALL)
    return c.replace("train", **{**TRAIN, **train})


def train_flags(tiny) -> list[str]:
    """The command-line flags of :func:`small_config`."""
    flags = ["--data", str(tiny.path), "--model", "dien", "--batch-size", "64"]
    flags += ["--eval-batch-size", "256", "--deterministic", "--no-progress"]
    for key, value in {**SMALL, **TRAIN}.items():
        if isinstance(value, bool):
            continue
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        flags += ["--" + key.replace("_", "-"), text]
    return flags


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """An uninterrupted run, in this process."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    run = tmp_path_factory.mktemp("reference") / "run"
    Trainer(small_config(tiny), run).fit()
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)
    return run


def comparable(run: Path) -> tuple[dict, list[dict]]:
    """results.json and the metrics lines without their timing."""
    records = [
        {k: v for k, v in r.items() if k != "samples_per_s"} for r in RunFolder(run).records()
    ]
    return json.loads((run / "results.json").read_text()), records


def logged_step(run: Path) -> int:
    """The last training step in metrics.jsonl (a half-written last line is ignored)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    step = 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("kind") == "train":
            step = max(step, record["step"])
    return step


def run_and_kill(command: list[str], run: Path, at_step: int, rng: random.Random) -> int:
    """Start ``command``; SIGKILL it once ``run`` has logged ``at_step``. The step reached."""
    env = {**os.environ, "DIEN_TEST_STEP_DELAY": str(STEP_DELAY)}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while logged_step(run) < at_step:
            if process.poll() is not None:
                raise AssertionError(
                    f"training ended before step {at_step}: {process.stderr.read()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"step {at_step} not reached in 300 s")
            time.sleep(0.01)
        time.sleep(rng.uniform(0, STEP_DELAY))  # anywhere in the next step
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return logged_step(run)


def dien(*args: str) -> list[str]:
    return [sys.executable, "-m", "dien", "-q", *args]


def test_killed_once_and_resumed_ends_like_an_uninterrupted_run(tiny, tmp_path, reference):
    rng = random.Random(1)
    run = tmp_path / "run"
    at = rng.randint(4, 19)
    reached = run_and_kill(dien("train", "--out", str(run), *train_flags(tiny)), run, at, rng)
    print(f"killed at step {reached} (drawn {at}) of {STEPS}")
    saved = load_checkpoint(run / "checkpoints" / "last.pt")["progress"]["step"]
    assert 0 <= reached - saved <= TRAIN["checkpoint_interval"]

    Trainer(RunFolder(run).config(), run, resume=True).fit()
    assert comparable(run) == comparable(reference)


@pytest.mark.slow
def test_killed_at_random_steps_and_resumed_from_the_command_line(tiny, tmp_path, reference):
    rng = random.Random(7)
    run = tmp_path / "run"
    targets = sorted(rng.sample(range(2, STEPS), 4))
    start = dien("train", "--out", str(run), *train_flags(tiny))
    resume = dien("train", "--out", str(run), "--resume", "--no-progress")
    reached = 0
    for i, target in enumerate(targets):
        target = max(target, reached + 2)
        reached = run_and_kill(resume if i else start, run, target, rng)
        print(f"kill {i + 1}: at step {reached} (drawn {target})")
    subprocess.run(resume, check=True, capture_output=True, timeout=600)
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert comparable(run) == comparable(reference)


def test_resume_rewinds_metrics_and_removes_interrupted_writes(tiny, tmp_path):
    run = tmp_path / "run"
    Trainer(small_config(tiny, epochs=1), run).fit()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    size = (run / "metrics.jsonl").stat().st_size
    assert state["metrics_bytes"] == size - len(
        (run / "metrics.jsonl").read_text().splitlines(keepends=True)[-1]
    )  # everything but the test line that finishing the run wrote
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 99, "los')  # a line cut short by a kill
    (run / "checkpoints" / ".last.pt.abc.tmp").write_bytes(b"half a checkpoint")

    Trainer(small_config(tiny, epochs=1), run, resume=True)
    assert (run / "metrics.jsonl").stat().st_size == state["metrics_bytes"]
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_a_run_killed_before_its_first_checkpoint_starts_over(tiny, tmp_path):
    run = tmp_path / "run"
    Trainer(small_config(tiny, epochs=1), run)
    (run / "checkpoints" / "last.pt").unlink()
    (run / "metrics.jsonl").write_text('{"kind": "tr')
    Trainer(small_config(tiny, epochs=1), run, resume=True).fit()
    steps = [r["step"] for r in RunFolder(run).records() if r["kind"] == "train"]
    assert steps == list(range(1, 20))


# Non-finite losses and gradients


def poison_forward(trainer: Trainer, bad_steps: set[int]) -> None:
    """Make the model's logits NaN in the given training steps (1-based)."""
    forward, calls = trainer.model.forward, [0]

    def patched(batch):
        out = forward(batch)
        if trainer.model.training:
            calls[0] += 1
            if calls[0] in bad_steps:
                out.logit = out.logit * float("nan")
        return out

    trainer.model.forward = patched


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nonfinite_loss_stops_naming_the_step_and_the_last_good_checkpoint(tiny, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(small_config(tiny, log_interval=5, eval_interval=0), run)
    poison_forward(trainer, {7})
    with pytest.raises(NonFiniteError, match=r"non-finite loss .* at step 7") as error:
        trainer.fit()
    last = run / "checkpoints" / "last.pt"
    assert f"{last} (step 6)" in str(error.value)  # checkpoint_interval 3
    state = load_checkpoint(last)
    assert state["progress"]["step"] == 6 and all_finite(state)
    losses = [r["loss"] for r in RunFolder(run).records() if r["kind"] == "train"]
    assert len(losses) == 1 and all(map(torch.isfinite, torch.tensor(losses)))  # step 5 only


def test_nonfinite_gradient_with_a_finite_loss_is_named_as_such(tiny, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(small_config(tiny, checkpoint_interval=0, eval_interval=0), run)
    weight = trainer.model.dense_parameters()[0]
    calls = [0]

    def hook(grad):
        calls[0] += 1
        return grad * float("inf") if calls[0] == 2 else grad

    weight.register_hook(hook)
    with pytest.raises(NonFiniteError, match=r"non-finite gradient .* at step 2") as error:
        trainer.fit()
    assert f"{run / 'checkpoints' / 'last.pt'} (step 0)" in str(error.value)
    assert all_finite(load_checkpoint(run / "checkpoints" / "last.pt"))


def test_nonfinite_steps_are_skipped_when_configured(tiny, tmp_path, caplog):
    run = tmp_path / "run"
    trainer = Trainer(small_config(tiny, on_nonfinite="skip"), run)
    poison_forward(trainer, {4, 30})
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    results = json.loads((run / "results.json").read_text())
    assert results["skipped_steps"] == 2 and results["steps"] == STEPS
    assert "step 4: non-finite" in caplog.text and "step 30: non-finite" in caplog.text
    assert all_finite(load_checkpoint(run / "checkpoints" / "last.pt"))
    steps = [r["step"] for r in RunFolder(run).records() if r["kind"] == "train"]
    assert 4 not in steps and 30 not in steps and len(steps) == STEPS - 2  # log_interval 1
    assert result.test is not None and 0 < result.test.logloss < 1
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_a_skipped_step_leaves_the_weights_as_they_were(tiny, tmp_path):
    trainer = Trainer(small_config(tiny, on_nonfinite="skip"), tmp_path / "run")
    poison_forward(trainer, {1})
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batch = next(trainer.train_loader.iterate(0))
    assert trainer._step(batch, 1) is None
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# Storage


def test_unwritable_run_folder_is_an_error_before_training(tiny, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match=r"a-file/run is not writable"):
        Trainer(small_config(tiny), blocker / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_run_folder_is_an_error_before_training(tiny, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="not writable"):
            Trainer(small_config(tiny), folder / "run")
    finally:
        folder.chmod(0o700)


def test_full_disk_is_an_error_before_training(tiny, tmp_path, monkeypatch):
    real = checkpoint.shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: real(p)._replace(free=200_000))
    with pytest.raises(StorageError, match=r"195\.3 KiB free .* need about"):
        Trainer(small_config(tiny), tmp_path / "run")
    assert not (tmp_path / "run" / "config.toml").exists()


def test_checkpoint_size_estimate_covers_the_real_file(tiny, tmp_path):
    trainer = Trainer(small_config(tiny, epochs=1), tmp_path / "run")
    trainer.fit()
    actual = (tmp_path / "run" / "checkpoints" / "last.pt").stat().st_size
    tensors = checkpoint.estimate_checkpoint_bytes([trainer.model]) - checkpoint._OVERHEAD_BYTES
    assert tensors <= actual <= tensors + checkpoint._OVERHEAD_BYTES


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(StorageError, match="No space left on device; the previous checkpoint"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
