"""Command-line flags generated from the config dataclasses, so each default lives in one place.

Every field becomes ``--field-name`` with the field's help text; ``model.name`` is ``--model``
and ``data.path`` is ``--data``. Flags override the config file, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin

from dien.config import SECTIONS, Config, ConfigError, config_from_dict, load_config

RENAMED = {("model", "name"): "model", ("data", "path"): "data"}


def _flag(section: str, name: str) -> str:
    return RENAMED.get((section, name), name.replace("_", "-"))


def _parser_for(hint: Any) -> dict[str, Any]:
    """argparse keywords for a field's type hint."""
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return _parser_for(args[0])
    if get_origin(hint) is Literal:
        return {"choices": list(get_args(hint))}
    if get_origin(hint) is tuple:
        return {"type": _int_list, "metavar": "N,N,..."}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": hint, "metavar": hint.__name__.upper()}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, in groups named after the config sections."""
    parser.add_argument(
        "--config", metavar="FILE", help="TOML file with [data], [model], [train] sections."
    )
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"[{section}] options")
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            keywords = _parser_for(hints[field.name])
            if "choices" in field.metadata:
                keywords["choices"] = list(field.metadata["choices"])
            default = field.default
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            group.add_argument(
                f"--{_flag(section, field.name)}",
                dest=f"{section}.{field.name}",
                default=argparse.SUPPRESS,
                help=f"{field.metadata['help']} (default: {shown})",
                **keywords,
            )


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """Defaults, then ``--config FILE``, then the flags given on the command line."""
    config = base or Config()
    if getattr(args, "config", None):
        config = load_config(args.config, config)
    given: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        section, _, name = key.partition(".")
        if section in SECTIONS and name:
            given.setdefault(section, {})[name] = value
    try:
        return config_from_dict(given, config)
    except ConfigError as e:
        raise ConfigError(f"command line: {e}") from None
