"""dien reproduce: the tables, the report's numbers against the run files, resuming a suite."""

import json
import shutil
import statistics

import numpy as np
import pytest
from tiny_data import SMALL

from dien.cli.main import main
from dien.config import Config
from dien.train import suite
from dien.train.loop import Trainer
from dien.train.reproduce import PAPER_AUC, paper_dataset, table_models, write_report
from dien.train.run import RunFolder
from dien.train.suite import SuiteMismatch, run_dir_for, run_suite, suite_config

SMALL_FLAGS = [
    "--embedding-dim", "4", "--hidden-size", "6", "--mlp-sizes", "8",
    "--attention-mlp-sizes", "6", "--aux-mlp-sizes", "6", "--batch-size", "64",
    "--epochs", "1", "--no-progress",
]  # fmt: skip


def small_config(path, **train) -> Config:
    c = Config().replace("data", path=str(path), batch_size=64, eval_batch_size=256)
    c = c.replace("model", **SMALL)
    return c.replace("train", **{"epochs": 1, "progress": False, **train})


def as_amazon(tiny, tmp_path, reviews: str):
    """A copy of the tiny dataset whose manifest says it is an Amazon preparation."""
    copy = tmp_path / "amazon"
    shutil.copytree(tiny.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source"] = "amazon"
    manifest["params"] = {"reviews": reviews, "meta": reviews.replace("reviews", "meta"), "seed": 0}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def table_rows(text: str, column: str) -> list[dict[str, str]]:
    """The rows of every markdown table in ``text`` that has a column named ``column``."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells if column in cells else []
        elif header and not set(cells[0]) <= {"-"}:
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def fake_results(out, models, seeds, seed=0) -> dict:
    """Finished-run results.json files with random test metrics; returns them by (model, seed)."""
    rng = np.random.default_rng(seed)
    written = {}
    for model in models:
        for s in seeds:
            run = RunFolder(run_dir_for(out / "runs", model, s))
            run.path.mkdir(parents=True)
            auc, gauc, logloss = (
                rng.uniform(0.55, 0.85),
                rng.uniform(0.5, 0.8),
                rng.uniform(0.4, 0.7),
            )
            results = {
                "model": model,
                "best_step": int(rng.integers(1, 100)),
                "steps": 100,
                "test": {"auc": auc, "gauc": gauc, "logloss": logloss, "samples": 300},
                "seconds_per_epoch": float(rng.uniform(1, 50)),
            }
            run.write_results(results)
            written[model, s] = results
    return written


def test_tables_follow_the_paper():
    assert table_models("2") == ("base", "wide_deep", "pnn", "din", "gru_att", "dien")
    assert table_models("4") == ("gru_aigru", "gru_agru", "gru_augru", "dien")
    both = table_models("all")
    assert len(both) == 9 and both.count("dien") == 1 and both[-1] == "dien"
    for figures in PAPER_AUC.values():
        assert set(figures) == set(both)
    assert PAPER_AUC["Books"]["dien"] == 0.8453 and PAPER_AUC["Electronics"]["base"] == 0.7435


@pytest.mark.parametrize(
    ("source", "params", "expected"),
    [
        ("amazon", {"reviews": "downloads/reviews_Books_5.json.gz"}, "Books"),
        ("amazon", {"reviews": "raw/reviews_Electronics_5.json.gz"}, "Electronics"),
        ("amazon", {"reviews": "raw/reviews_Beauty_5.json.gz"}, None),
        ("amazon", {"reviews": "Books_and_Electronics.json"}, None),
        ("dien-release", {"path": "release"}, "Books"),
        ("dien-release", {"path": "release/electronics"}, "Electronics"),
        ("movielens", {"ratings": "books.csv"}, None),
        ("events", {}, None),
    ],
)
def test_paper_dataset_is_recognised_from_the_manifest(source, params, expected):
    assert paper_dataset({"source": source, "params": params}) == expected


@pytest.mark.parametrize("amazon", [False, True])
def test_report_numbers_equal_the_run_files(tiny, tmp_path, amazon):
    models, seeds = ("base", "din", "dien"), (0, 1, 2)
    data = as_amazon(tiny, tmp_path, "dl/reviews_Books_5.json.gz") if amazon else tiny.path
    out = tmp_path / "out"
    written = fake_results(out, models, seeds)
    result = write_report(out, small_config(data), models, seeds, table="2", command="dien x")
    text = result.report.read_text()
    assert result.paper == ("Books" if amazon else None)
    assert "```\ndien x\n```" in text

    summary = table_rows(text, "runs")
    assert [r["model"] for r in summary] == ["BaseModel (`base`)", "DIN (`din`)", "DIEN (`dien`)"]
    for row, model in zip(summary, models, strict=True):
        for key, column in (
            ("auc", "test AUC"),
            ("gauc", "test GAUC"),
            ("logloss", "test logloss"),
        ):
            values = [written[model, s]["test"][key] for s in seeds]
            mean, std = statistics.mean(values), statistics.stdev(values)  # sample std
            assert row[column] == f"{mean:.4f} +- {std:.4f}"
        paper_column = "paper AUC (Books)" if amazon else "paper AUC"
        if amazon:
            figure = PAPER_AUC["Books"][model]
            assert row[paper_column] == f"{figure:.4f}"
            assert float(row["ours - paper"]) == pytest.approx(
                mean_auc(written, model) - figure, abs=1e-4
            )
        else:
            assert row[paper_column] == "-" and row["ours - paper"] == "-"
        seconds = np.mean([written[model, s]["seconds_per_epoch"] for s in seeds])
        assert row["s / epoch"] == f"{seconds:.1f}"
    assert ("Amazon Books" in text) and (("is not one of them" in text) != amazon)

    per_run = table_rows(text, "seed")
    assert len(per_run) == len(models) * len(seeds)
    for row in per_run:
        t = written[row["model"], int(row["seed"])]["test"]
        assert (row["test AUC"], row["test GAUC"]) == (f"{t['auc']:.4f}", f"{t['gauc']:.4f}")

    exact = json.loads((out / "summary.json").read_text())
    assert exact["rows"][0]["auc_mean"] == pytest.approx(mean_auc(written, "base"), abs=1e-12)
    assert result.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def mean_auc(written, model) -> float:
    return statistics.mean(r["test"]["auc"] for (m, _), r in written.items() if m == model)


def test_a_finished_run_is_reused_only_with_the_same_settings(tiny, tmp_path, monkeypatch):
    base = small_config(tiny.path)
    written = fake_results(tmp_path, ["din"], [0])
    run = RunFolder(run_dir_for(tmp_path / "runs", "din", 0))
    run.create(suite_config(base, "din", 0))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(suite, "Trainer", no_training)
    seen = []
    rows = run_suite(base, ["din"], [0], tmp_path / "runs", lambda m, s, r: seen.append(r))
    assert seen == [written["din", 0]] and rows[0].auc_mean == written["din", 0]["test"]["auc"]
    assert rows[0].auc_std == 0.0  # one seed
    # where and how visibly a run happens does not matter; what it computes does
    run_suite(base.replace("train", threads=1, progress=True), ["din"], [0], tmp_path / "runs")
    with pytest.raises(SuiteMismatch, match="model.hidden_size = 6 there, 7 now"):
        run_suite(base.replace("model", hidden_size=7), ["din"], [0], tmp_path / "runs")


def test_cli_rejects_model_seed_and_models_outside_the_table(tiny, tmp_path, capsys):
    common = ["-q", "reproduce", "--data", str(tiny.path), "--out", str(tmp_path / "o")]
    assert main([*common, "--model", "din"]) == 2
    assert "--models" in capsys.readouterr().err
    assert main([*common, "--seed", "3"]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main([*common, "--table", "4", "--models", "din"]) == 2
    assert "not in table 4: din" in capsys.readouterr().err
    assert not (tmp_path / "o" / "runs").exists()


@pytest.mark.slow
def test_reduced_reproduction_matches_run_files_and_resumes(tiny, tmp_path, capsys):
    out = tmp_path / "rep"
    argv = ["-q", "reproduce", "--data", str(tiny.path), "--table", "2", "--models", "din,base"]
    argv += ["--seeds", "2", "--out", str(out), *SMALL_FLAGS]
    assert main(argv) == 0
    text = (out / "report.md").read_text()
    results = {
        (m, s): json.loads((run_dir_for(out / "runs", m, s) / "results.json").read_text())
        for m in ("base", "din")
        for s in (0, 1)
    }
    summary = table_rows(text, "runs")
    assert [r["model"] for r in summary] == ["BaseModel (`base`)", "DIN (`din`)"]  # paper order
    for row, model in zip(summary, ("base", "din"), strict=True):
        aucs = [results[model, s]["test"]["auc"] for s in (0, 1)]
        assert row["test AUC"] == f"{np.mean(aucs):.4f} +- {np.std(aucs, ddof=1):.4f}"
        assert row["paper AUC"] == "-"
        assert results[model, 0]["seconds_per_epoch"] > 0
    assert results["base", 0]["test"]["auc"] != results["base", 1]["test"]["auc"]  # seeds differ
    assert "model.embedding_dim = 4" in text and "train.epochs = 1" in text

    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing trained again
    assert sorted(p for p in (out / "runs").rglob("*") if p.is_file()) == sorted(stamps)
    assert (out / "report.md").read_text().split("```")[2] == text.split("```")[2]
    assert capsys.readouterr().out.count("test AUC") == 4


@pytest.mark.slow
def test_a_stopped_run_continues_from_its_checkpoint(tiny, tmp_path):
    config = suite_config(small_config(tiny.path, epochs=2), "din", 0)
    full = Trainer(config, tmp_path / "full").fit()
    stopped = Trainer(config, run_dir_for(tmp_path / "runs", "din", 0))
    stopped._train_epoch()  # as if killed after the first epoch's checkpoint
    assert not stopped.run.results_path.exists()
    rows = run_suite(small_config(tiny.path, epochs=2), ["din"], [0], tmp_path / "runs")
    assert rows[0].auc_mean == full.test.auc
    records = RunFolder(run_dir_for(tmp_path / "runs", "din", 0)).records()
    valid_epochs = [r["epoch"] for r in records if r["kind"] == "eval" and r["split"] == "valid"]
    assert valid_epochs == [1, 2]  # the first epoch was not trained twice
