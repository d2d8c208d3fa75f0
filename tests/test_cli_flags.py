"""The command line: generated flags fill the typed config; bad flags are clear errors."""

import pytest

from dien.cli.flags import config_from_args
from dien.cli.main import build_parser, main
from dien.config import ConfigError


def parse(*argv):
    return build_parser().parse_args(["train", "--out", "r", *argv])


def test_flags_override_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nname = "din"\nembedding_dim = 8\n[train]\nepochs = 5\n')
    args = parse(
        "--config",
        str(path),
        "--embedding-dim",
        "12",
        "--mlp-sizes",
        "64,32",
        "--no-bucket-by-length",
        "--data",
        "d",
    )
    c = config_from_args(args)
    assert c.model.name == "din"  # from the file
    assert c.model.embedding_dim == 12  # flag beats file
    assert c.train.epochs == 5
    assert c.model.mlp_sizes == (64, 32)
    assert c.data.bucket_by_length is False
    assert c.data.path == "d"
    assert c.train.learning_rate == 0.001  # default


def test_bad_flag_values_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        parse("--model", "dein")
    assert "invalid choice: 'dein'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--mlp-sizes", "200,x")
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_semantic_errors_name_the_option():
    with pytest.raises(ConfigError, match="command line: data.batch_size must be at least 1"):
        config_from_args(parse("--batch-size", "0"))


def test_help_explains_each_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--augru-form",
        "--aux-loss-alpha",
        "--evolution-cell",
        "--activation",
        "--learning-rate",
        "--early-stopping-patience",
        "--max-history",
    ):
        assert flag in text
    assert "the public code's form" in text


def test_train_without_data_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r")]) == 2
    assert "no dataset: pass --data" in capsys.readouterr().err
