"""Typed config: strict keys and types, TOML round trip."""

import pytest

from dien.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_toml,
    load_config,
)


def test_defaults_are_the_papers_settings():
    c = Config()
    assert (c.model.embedding_dim, c.model.hidden_size, c.model.mlp_sizes) == (18, 36, (200, 80))
    assert (c.data.batch_size, c.data.max_history) == (128, 100)
    assert (c.train.learning_rate, c.train.lr_decay, c.train.epochs) == (0.001, 0.5, 3)
    assert c.model.aux_mlp_sizes == (100, 50)


def test_toml_round_trip(tmp_path):
    c = config_from_dict(
        {
            "model": {"name": "din", "mlp_sizes": [64, 32], "aux_loss_alpha": 0.5},
            "data": {"path": 'a "quoted" dir', "batch_size": 7},
            "train": {"learning_rate": 1, "deterministic": True},
        }
    )
    assert c.train.learning_rate == 1.0 and isinstance(c.train.learning_rate, float)
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(c))
    assert load_config(path) == c


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"model": {"embeding_dim": 8}}, "unknown key 'model.embeding_dim'"),
        ({"modle": {}}, "unknown section [modle]"),
        ({"model": {"embedding_dim": "8"}}, "model.embedding_dim must be int"),
        ({"model": {"embedding_dim": True}}, "model.embedding_dim must be an integer"),
        ({"model": {"activation": "relu"}}, "model.activation must be one of 'dice', 'prelu'"),
        ({"model": {"mlp_sizes": 200}}, "model.mlp_sizes must be a list"),
        ({"model": {"mlp_sizes": [200, "x"]}}, "model.mlp_sizes[1] must be int"),
        ({"model": {"name": "dein"}}, "model.name must be one of"),
        ({"train": {"deterministic": "yes"}}, "train.deterministic must be true or false"),
        ({"train": {"lr_decay": 0}}, "train.lr_decay must lie in (0, 1]"),
        ({"data": {"batch_size": 0}}, "data.batch_size must be at least 1"),
    ],
)
def test_bad_values_are_clear_errors(raw, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert message in str(e.value)


def test_bad_file_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nembedding_dim = \n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(path)
    path.write_text("[train]\nepochz = 3\n")
    with pytest.raises(ConfigError, match="bad.toml: unknown key 'train.epochz'"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
