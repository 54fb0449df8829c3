"""One declaration per setting: a config dataclass field made with `option` carries its flag, help,
choices and range check, and the command line is generated from those fields (`add_options`,
`apply`), so that a new setting is one field in config.py (and its use where it acts)."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any, Callable, Iterator


NONE_EARLIER = object()  # an option that has always been there


def option(default: Any, help: str, *, flag: str | None = None, choices: tuple | None = None,
           parse: Callable[[str], Any] | None = None, metavar: str | None = None,
           check: tuple[Callable[[Any], bool], str] | None = None, listed: tuple | None = None,
           earlier: Any = NONE_EARLIER) -> Any:
    """A dataclass field that is also a command-line option: `flag` (default: --field-name),
    `parse` (default: the type of `default`; booleans get --x / --no-x), and `check`, a predicate on
    the value with the rule it states ("at least 1"), enforced by `check_values`, which names
    `listed` (default: `choices`) when a value is not one of the choices. `earlier`: for an option
    added later, the value that computes what runs did before it existed (results cached by those
    runs still match a config at that value: `unchanged_since`)."""
    metadata = {"help": help, "flag": flag, "choices": choices, "parse": parse, "metavar": metavar, "check": check,
                "listed": listed or choices, "earlier": earlier}
    if isinstance(default, (list, tuple, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)  # a copy per instance
    return field(default=default, metadata=metadata)


def declared(config_class: type, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, field) of every option in `config_class` and its nested config sections."""
    for f in fields(config_class):
        nested = f.default_factory if f.default_factory is not MISSING else None
        if nested is not None and is_dataclass(nested):
            yield from declared(nested, f"{prefix}{f.name}.")
        elif "help" in f.metadata:
            yield prefix + f.name, f


def flag_of(path: str, f) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def get(config: Any, path: str) -> Any:
    for name in path.split("."):
        config = getattr(config, name)
    return config


def put(config: Any, path: str, value: Any) -> None:
    *sections, name = path.split(".")
    for section in sections:
        config = getattr(config, section)
    setattr(config, name, value)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or '""'
    return str(value)


def add_options(parser: argparse.ArgumentParser, config_class: type, presets: dict[str, Any]) -> None:
    """Every option of `config_class` on `parser`; each help ends with its value in every preset
    (`presets`: name -> config). Nothing is set unless given, so that `apply` keeps the preset's."""
    for path, f in declared(config_class):
        values = {name: _shown(get(config, path)) for name, config in presets.items()}
        first, *others = values.items()
        shown = f"default: {first[1]}" + "".join(f"; --preset {n}: {v}" for n, v in others if v != first[1])
        meta, default = f.metadata, f.default if f.default is not MISSING else f.default_factory()
        help_text = f"{meta['help']} ({shown})%(default).0s"
        if isinstance(default, bool) or (default is None and meta["parse"] is bool):
            parser.add_argument(flag_of(path, f), dest=path, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
            continue
        parse = meta["parse"] or (str if meta["choices"] else type(default))
        parser.add_argument(flag_of(path, f), dest=path, type=parse, default=None, choices=meta["choices"],
                            metavar=meta["metavar"] or (None if meta["choices"] else f.name.upper()), help=help_text)


def apply(config: Any, args: argparse.Namespace) -> None:
    """Set every option the command line gave (`add_options`' destinations) on `config`."""
    for path, _ in declared(type(config)):
        value = getattr(args, path, None)
        if value is not None:
            put(config, path, value)


def unchanged_since(config: Any) -> list[str]:
    """The options added later (`earlier`) that `config` sets to the value runs had before them."""
    return [path for path, f in declared(type(config))
            if f.metadata["earlier"] is not NONE_EARLIER and get(config, path) == f.metadata["earlier"]]


def check_values(config: Any) -> str | None:
    """The first option whose value breaks its declared rule, as one line naming the flag; None if all hold."""
    for path, f in declared(type(config)):
        value, meta = get(config, path), f.metadata
        if meta["choices"] and value is not None and value not in meta["choices"]:
            return f"{flag_of(path, f)} must be one of {', '.join(meta['listed'])}, got {value!r}"
        if meta["check"] and value is not None and not meta["check"][0](value):
            return f"{flag_of(path, f)} must be {meta['check'][1]}, got {value}"
    return None
