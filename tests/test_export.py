"""ONNX and TorchScript export: parity with the eager model at any batch size and length."""

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from model_fixtures import TINY, VOCAB
from tiny_data import train_tiny_dien

from dien.cli.main import main
from dien.config import MODEL_NAMES
from dien.export import INPUT_NAMES, export_run, load_exported, sidecar_path
from dien.export.export import example_inputs, export_onnx, trace_scoring_module
from dien.export.graph import ScriptedRecurrentLayer
from dien.layers.recurrent import RecurrentLayer
from dien.models import build_model
from dien.train.inference import load_run

# batch 1, empty histories, and histories longer than the 5 steps the export traced with
LENGTHS = ([0], [1], [4], [0, 0], [7, 2, 0, 12, 5], [30, 1, 0])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return train_tiny_dien(root, sizes=(256, 64, 64), batch_size=128)


def eager_probabilities(model, inputs) -> np.ndarray:
    from dien.data.batch import Batch

    with torch.no_grad():
        return torch.sigmoid(model(Batch(*inputs)).logit).numpy()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_run_matches_eager_model_at_other_batch_sizes_and_lengths(run_dir, tmp_path, fmt):
    result = export_run(run_dir, fmt, tmp_path / f"model.{fmt}")
    assert result.path.is_file() and result.max_abs_diff is not None
    assert result.max_abs_diff <= 1e-5
    loaded = load_run(run_dir)
    v = loaded.vocab
    run = load_exported(result.path, fmt)
    for seed, lengths in enumerate(LENGTHS):
        inputs = example_inputs(lengths, v.users, v.items, v.categories, seed=100 + seed)
        got = run(*inputs)
        assert got.shape == (len(lengths),)
        np.testing.assert_allclose(got, eager_probabilities(loaded.model, inputs), atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_sidecar_describes_inputs_vocabularies_and_history_limit(run_dir, tmp_path, fmt):
    result = export_run(run_dir, fmt, tmp_path / "m", verify=False)
    assert result.sidecar == sidecar_path(result.path) == tmp_path / "m.json"
    side = json.loads(result.sidecar.read_text())
    loaded = load_run(run_dir)
    assert [i["name"] for i in side["inputs"]] == list(INPUT_NAMES)
    assert side["inputs"][3]["shape"] == ["batch", "history"]
    assert [o["name"] for o in side["outputs"]] == ["probability", "logit"]
    assert side["vocab_sizes"] == {
        "users": loaded.vocab.users,
        "items": loaded.vocab.items,
        "categories": loaded.vocab.categories,
    }
    assert side["max_history"] == loaded.config.data.max_history == 100
    assert side["model"] == "dien" and side["format"] == fmt
    if fmt == "torchscript":
        extra = {"dien.json": ""}
        torch.jit.load(str(result.path), _extra_files=extra)
        assert json.loads(extra["dien.json"]) == side


def test_onnx_export_keeps_the_history_loop(run_dir, tmp_path):
    path = export_run(run_dir, "onnx", tmp_path / "m.onnx", verify=False).path
    graph = onnx.load(str(path)).graph
    assert any(node.op_type == "Loop" for node in graph.node)
    dims = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["hist_items"] == ["batch", "history"] and dims["user"] == ["batch"]


def test_logit_output_is_the_eager_logit(run_dir):
    loaded = load_run(run_dir)
    v = loaded.vocab
    traced = trace_scoring_module(
        loaded.model, example_inputs([3, 0, 5], v.users, v.items, v.categories)
    )
    inputs = example_inputs([9, 0], v.users, v.items, v.categories, seed=4)
    from dien.data.batch import Batch

    with torch.no_grad():
        probability, logit = traced(*inputs)
        expected = loaded.model(Batch(*inputs)).logit
    torch.testing.assert_close(logit, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(probability, torch.sigmoid(expected), atol=1e-6, rtol=0)


MODEL_CASES = [replace(TINY, name=name) for name in MODEL_NAMES] + [
    replace(TINY, name="dien", augru_form="authors"),
    replace(TINY, name="dien", evolution_cell="gru"),
]


@pytest.mark.parametrize("config", MODEL_CASES, ids=lambda c: f"{c.name}-{c.augru_form}")
def test_every_model_exports_with_dynamic_shapes(config, tmp_path):
    torch.manual_seed(0)
    model = build_model(config, VOCAB).eval()
    sizes = (VOCAB.users, VOCAB.items, VOCAB.categories)
    example = example_inputs([3, 0, 5], *sizes)
    traced = trace_scoring_module(model, example)
    export_onnx(model, example, tmp_path / "m.onnx")
    run_onnx = load_exported(tmp_path / "m.onnx", "onnx")
    for seed, lengths in enumerate(LENGTHS):
        inputs = example_inputs(lengths, *sizes, seed=seed)
        expected = eager_probabilities(model, inputs)
        with torch.no_grad():
            np.testing.assert_allclose(traced(*inputs)[0].numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(run_onnx(*inputs), expected, atol=1e-5)


@pytest.mark.parametrize(
    "cell,form",
    [
        ("gru", "paper"),
        ("aigru", "paper"),
        ("agru", "paper"),
        ("augru", "paper"),
        ("augru", "authors"),
    ],
)
def test_scripted_layer_equals_the_eager_layer(cell, form):
    torch.manual_seed(1)
    layer = RecurrentLayer(5, 4, cell, form)
    scripted = ScriptedRecurrentLayer(layer)
    inputs = torch.randn(3, 6, 5)
    mask = torch.arange(6)[None, :] < torch.tensor([[6], [0], [2]])
    attention = torch.rand(3, 6) * mask
    with torch.no_grad():
        want_all, want_final = layer(inputs, mask, attention)
        got_all, got_final = scripted(inputs, mask, attention)
    torch.testing.assert_close(got_all, want_all, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_final, want_final, atol=1e-6, rtol=0)
    assert scripted.weight_hh is layer.weights()[1]  # shares, does not copy


def test_cli_export_writes_model_and_sidecar(run_dir, tmp_path, capsys):
    out = tmp_path / "cli" / "dien.pt"
    code = main(["export", "--run", str(run_dir), "--format", "torchscript", "--out", str(out)])
    assert code == 0 and out.is_file() and sidecar_path(out).is_file()
    assert "max abs diff vs eager" in capsys.readouterr().out
    inputs = example_inputs([2, 0], 30, 60, 6, seed=9)
    got = load_exported(out, "torchscript")(*inputs)
    np.testing.assert_allclose(got, eager_probabilities(load_run(run_dir).model, inputs), atol=1e-5)


def test_unknown_format_is_a_clear_error(run_dir):
    with pytest.raises(ValueError, match="onnx or torchscript"):
        export_run(run_dir, "tflite")
