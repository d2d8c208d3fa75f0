"""End to end: training, the run folder, resume, evaluate and predict from the command line."""

import csv
import json

import numpy as np
import pytest
import torch
from tiny_data import SMALL

from dien.cli.main import main
from dien.config import Config
from dien.data.format import PreparedDataset
from dien.train.inference import load_run, score_split
from dien.train.loop import Trainer, eval_loader, predict_logits


def small_config(tiny, model="dien", **train) -> Config:
    c = Config().replace("data", path=str(tiny.path), batch_size=64, eval_batch_size=256)
    c = c.replace("model", name=model, **SMALL)
    return c.replace("train", **{"epochs": 2, "log_interval": 5, "progress": False, **train})


@pytest.mark.parametrize("model", ["base", "din", "dien"])
def test_training_writes_a_complete_run_folder(tiny, tmp_path, model):
    result = Trainer(small_config(tiny, model), tmp_path / "run").fit()
    run = tmp_path / "run"
    for name in (
        "config.toml",
        "metrics.jsonl",
        "results.json",
        "report.md",
        "learning_curves.png",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "eval" and r["split"] == "valid"]
    assert len(valid) == 2  # once per epoch
    assert set(train[0]) == {
        "kind",
        "step",
        "epoch",
        "samples",
        "loss",
        "bce_loss",
        "aux_loss",
        "lr",
        "samples_per_s",
    }
    assert (train[0]["aux_loss"] is not None) == (model == "dien")
    assert train[-1]["lr"] == pytest.approx(0.0005)  # halved after the first epoch
    results = json.loads((run / "results.json").read_text())
    best_valid = max(r["auc"] for r in valid)
    assert results["valid"]["auc"] == pytest.approx(best_valid)  # best chosen on validation
    assert result.test is not None and results["test"]["auc"] == pytest.approx(result.test.auc)
    assert results["steps"] == 2 * int(np.ceil(1200 / 64))


def test_training_learns_the_signal(tiny, tmp_path):
    result = Trainer(
        small_config(tiny, "din", epochs=4, learning_rate=0.03, lr_decay=1.0), tmp_path / "r"
    ).fit()
    assert result.test.auc > 0.7


def test_same_seed_same_result_and_save_load_gives_identical_predictions(tiny, tmp_path):
    trainer = Trainer(small_config(tiny, "dien"), tmp_path / "a")
    a = trainer.fit()  # leaves the best weights in trainer.model
    b = Trainer(small_config(tiny, "dien"), tmp_path / "b").fit()
    assert a.test.auc == b.test.auc and a.test.logloss == b.test.logloss
    loaded = load_run(tmp_path / "a")
    probabilities, metrics = score_split(loaded, tiny, "test")
    assert metrics.auc == a.test.auc and metrics.logloss == pytest.approx(a.test.logloss)
    loader = eval_loader(tiny.split("test"), trainer.config.data)
    in_memory = predict_logits(trainer.model.eval(), loader, torch.device("cpu"))
    np.testing.assert_array_equal(
        probabilities, torch.sigmoid(torch.from_numpy(in_memory).double())
    )
    again, _ = score_split(load_run(tmp_path / "a"), tiny, "test")
    np.testing.assert_array_equal(probabilities, again)


def test_resume_after_a_stop_ends_like_an_uninterrupted_run(tiny, tmp_path):
    full = Trainer(small_config(tiny, "dien", epochs=3), tmp_path / "full").fit()
    Trainer(small_config(tiny, "dien", epochs=1), tmp_path / "part").fit()
    resumed = Trainer(small_config(tiny, "dien", epochs=3), tmp_path / "part", resume=True).fit()
    assert resumed.test.auc == full.test.auc
    assert resumed.test.logloss == pytest.approx(full.test.logloss, abs=1e-7)


def test_existing_run_is_not_overwritten(tiny, tmp_path):
    Trainer(small_config(tiny, "base", epochs=1), tmp_path / "r").fit()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(small_config(tiny, "base", epochs=1), tmp_path / "r")


def test_early_stopping_and_eval_interval(tiny, tmp_path):
    config = small_config(
        tiny, "base", epochs=50, eval_interval=3, early_stopping_patience=2, learning_rate=0.05
    )
    result = Trainer(config, tmp_path / "r").fit()
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["stopped_early"] and results["steps"] < 50 * 19
    assert result.best_step % 3 == 0


def test_cli_train_evaluate_predict(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    flags = [
        "--embedding-dim",
        "4",
        "--hidden-size",
        "6",
        "--mlp-sizes",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--no-progress",
    ]
    assert (
        main(["-q", "train", "--model", "din", "--data", str(tiny.path), "--out", str(run), *flags])
        == 0
    )
    assert "test  AUC" in capsys.readouterr().out
    assert main(["-q", "evaluate", "--run", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    results = json.loads((run / "results.json").read_text())
    assert evaluated["auc"] == pytest.approx(results["test"]["auc"])
    out = tmp_path / "p.csv"
    assert main(["-q", "predict", "--run", str(run), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(PreparedDataset.open(tiny.path).split("test"))
    assert rows[1]["user"].startswith("u") or rows[1]["user"] == "<unk>"
    assert all(0.0 < float(r["probability"]) < 1.0 for r in rows)
    assert main(["-q", "evaluate", "--run", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_training_uses_sparse_gradients_for_embeddings(tiny):
    from dien.models import build_model
    from dien.train.loop import build_optimizers

    config = small_config(tiny, "dien")
    model = build_model(config.model, tiny.vocab_sizes)
    optimizers = build_optimizers(model, config.train)
    assert [type(o).__name__ for o in optimizers] == ["Adam", "FusedSparseAdam"]
    assert isinstance(optimizers[1], torch.optim.SparseAdam)
    assert optimizers[0].defaults["fused"]  # one kernel for all dense parameters on the CPU
    assert all(p.dim() == 2 for p in model.sparse_parameters())
    assert torch.is_tensor(model.sparse_parameters()[0])
