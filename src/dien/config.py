"""Typed, frozen configuration: one dataclass per component, one place for each default.

A config file (TOML, sections ``[data]``, ``[model]``, ``[train]``) and command-line flags
only fill these dataclasses. An unknown section or key, or a value of the wrong type, is a
:class:`ConfigError` that names it. Nothing is ``eval``-ed.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin


class ConfigError(ValueError):
    """A config file or flag names an unknown key or gives a value of the wrong type."""


def _opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field whose help text feeds ``dien train --help``."""
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


MODEL_NAMES = (
    "base",
    "wide_deep",
    "pnn",
    "din",
    "gru_att",
    "gru_aigru",
    "gru_agru",
    "gru_augru",
    "dien",
)
EvolutionCell = Literal["gru", "aigru", "agru", "augru"]


@dataclass(frozen=True)
class DataConfig:
    """How a prepared dataset is read and batched."""

    path: str = _opt("", "Prepared dataset folder (made by `dien prepare`).")
    batch_size: int = _opt(128, "Samples per training batch (paper: 128).")
    eval_batch_size: int = _opt(1024, "Samples per batch when evaluating or predicting.")
    max_history: int = _opt(100, "Keep only the most recent N behaviours of each history.")
    bucket_by_length: bool = _opt(
        True,
        "Group training samples of similar history length into batches, so a batch pads "
        "to its own longest history. Batches are still drawn in random order.",
    )
    aux_negative_sampling: Literal["frequency", "uniform"] = _opt(
        "frequency",
        "How auxiliary-loss negatives are drawn: by item frequency in the training split "
        "(the authors' code) or uniformly over the item vocabulary.",
    )


@dataclass(frozen=True)
class ModelConfig:
    """Which model, and its sizes. ``None`` means the named model's own default."""

    name: str = _opt("dien", "Model: " + ", ".join(MODEL_NAMES) + ".", choices=MODEL_NAMES)
    embedding_dim: int = _opt(18, "Embedding width of user, item and category ids (paper: 18).")
    hidden_size: int = _opt(36, "Hidden width of the GRUs (paper: 36).")
    mlp_sizes: tuple[int, ...] = _opt((200, 80), "Hidden layers of the output MLP.")
    activation: Literal["dice", "prelu"] = _opt("dice", "Activation of the output MLP.")
    attention_mlp_sizes: tuple[int, ...] = _opt((80, 40), "Hidden layers of the attention MLP.")
    evolution_cell: EvolutionCell | None = _opt(
        None,
        "Interest-evolution cell of the DIEN family: gru, aigru, agru, augru "
        "(default: the one the model name implies).",
    )
    augru_form: Literal["paper", "authors"] = _opt(
        "paper",
        "AUGRU update: 'paper' scales the update gate by attention (attention 0 keeps the "
        "state); 'authors' is the public code's form (attention 0 gives a plain GRU).",
    )
    aux_loss_alpha: float | None = _opt(
        None, "Weight of the auxiliary loss; 0 turns it off (default: 1 for dien, else 0)."
    )
    aux_negatives: int = _opt(1, "Auxiliary-loss negatives drawn per history step.")
    aux_mlp_sizes: tuple[int, ...] = _opt((100, 50), "Hidden layers of the auxiliary-loss MLP.")
    sparse_embeddings: bool = _opt(
        True,
        "Sparse embedding gradients with a lazy (row-wise) Adam: only rows in the batch are "
        "updated, and their moment estimates advance only when the row is seen.",
    )


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop."""

    epochs: int = _opt(3, "Passes over the training split (paper: 3).")
    learning_rate: float = _opt(0.001, "Adam learning rate (paper: 0.001).")
    lr_decay: float = _opt(0.5, "Multiply the learning rate by this after each epoch (paper: 0.5).")
    weight_decay: float = _opt(0.0, "L2 weight decay on the dense (non-embedding) parameters.")
    seed: int = _opt(0, "Random seed for initialisation, shuffling and negative sampling.")
    eval_interval: int = _opt(
        0, "Evaluate on the validation split every N steps; 0 = once per epoch."
    )
    log_interval: int = _opt(100, "Write a metrics line every N training steps.")
    early_stopping_patience: int = _opt(
        0, "Stop after N validation checks without a better validation AUC; 0 = never."
    )
    checkpoint_interval: int = _opt(
        1000,
        "Also save checkpoints/last.pt every N training steps, so a killed run loses at most "
        "N steps; 0 = only at evaluations and epoch ends.",
    )
    on_nonfinite: Literal["stop", "skip"] = _opt(
        "stop",
        "On a non-finite loss or gradient: stop with an error naming the step and the last "
        "good checkpoint, or skip that step's update (costs one host sync per step).",
    )
    device: str = _opt("auto", "cpu, cuda, cuda:N, or auto (cuda when available).")
    threads: int = _opt(
        0, "CPU threads for torch's operators; 0 keeps torch's default (one per core)."
    )
    deterministic: bool = _opt(False, "Use deterministic kernels (slower on GPU).")
    progress: bool = _opt(True, "Show a progress bar when writing to a terminal.")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {
            s.name: {k: _plain(v) for k, v in dataclasses.asdict(getattr(self, s.name)).items()}
            for s in dataclasses.fields(self)
        }

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with ``changes`` applied to one section, each checked like a file value."""
        current = getattr(self, section)
        hints = typing.get_type_hints(type(current))
        checked = {
            k: coerce(v, hints[k], f"{section}.{k}") if k in hints else _unknown(section, k)
            for k, v in changes.items()
        }
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **checked)})


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _unknown(section: str, key: str) -> Any:
    known = ", ".join(f.name for f in dataclasses.fields(SECTIONS[section]))
    raise ConfigError(f"unknown key '{section}.{key}'; known keys of [{section}]: {known}")


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field's type hint; return it in the field's type."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{where} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def config_from_dict(raw: dict[str, Any], base: Config | None = None) -> Config:
    """Fill a Config from nested dicts such as a parsed TOML file; strict about keys and types."""
    config = base or Config()
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}]; known sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {values!r}")
        config = config.replace(section, **values)
    validate(config)
    return config


def load_config(path: str | Path, base: Config | None = None) -> Config:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        return config_from_dict(raw, base)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def validate(config: Config) -> None:
    """Checks of values that the type alone does not express."""
    m, d, t = config.model, config.data, config.train
    if m.name not in MODEL_NAMES:
        raise ConfigError(f"model.name must be one of {', '.join(MODEL_NAMES)}, got {m.name!r}")
    positive = {
        "model.embedding_dim": m.embedding_dim,
        "model.hidden_size": m.hidden_size,
        "model.aux_negatives": m.aux_negatives,
        "data.batch_size": d.batch_size,
        "data.eval_batch_size": d.eval_batch_size,
        "data.max_history": d.max_history,
        "train.epochs": t.epochs,
        "train.log_interval": t.log_interval,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if m.aux_loss_alpha is not None and m.aux_loss_alpha < 0:
        raise ConfigError(f"model.aux_loss_alpha must be >= 0, got {m.aux_loss_alpha}")
    if not 0 < t.lr_decay <= 1:
        raise ConfigError(f"train.lr_decay must lie in (0, 1], got {t.lr_decay}")
    if t.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate must be > 0, got {t.learning_rate}")
    for name, value in {
        "train.checkpoint_interval": t.checkpoint_interval,
        "train.eval_interval": t.eval_interval,
    }.items():
        if value < 0:
            raise ConfigError(f"{name} must be >= 0 (0 turns it off), got {value}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def config_to_toml(config: Config) -> str:
    """The config as a TOML file that :func:`load_config` reads back to an equal Config.

    Keys whose value is ``None`` (the model's own default) are written as comments.
    """
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} = (model default)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
