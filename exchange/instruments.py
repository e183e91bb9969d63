"""Instrument configuration from TOML (R1: the list of classes and their bounds is
configuration, not code).

    [instruments.H100]
    tick = 1000
    min_price = 100000
    gate_s = 300

Every key of a table is a field of `orderbook.config.BookConfig`; what a table leaves
out keeps BookConfig's default.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

from orderbook.config import BookConfig

CONFIG_FIELDS = {f.name for f in fields(BookConfig)} - {"name"}


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says where and why."""


def read_toml(path: Path) -> dict:
    """A TOML file's tables; ConfigError naming the file when it cannot be read or parsed."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_instruments(path: str | Path) -> dict[str, BookConfig]:
    """Every ``[instruments.NAME]`` table of a TOML file, as BookConfigs by class name."""
    path = Path(path)
    data = read_toml(path)
    tables = data.get("instruments")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{path}: no [instruments.NAME] tables")
    return {name: _book_config(path, name, table) for name, table in tables.items()}


def instrument_config(name: str, path: str | Path | None = None) -> BookConfig:
    """The configuration of one class: from the file when given, else the defaults."""
    if path is None:
        return BookConfig(name=name)
    instruments = load_instruments(path)
    if name not in instruments:
        raise ConfigError(f"{path}: no [instruments.{name}] table (it has {', '.join(sorted(instruments))})")
    return instruments[name]


def _book_config(path: Path, name: str, table: object) -> BookConfig:
    where = f"{path}: [instruments.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - CONFIG_FIELDS)
    if unknown:
        known = ", ".join(sorted(CONFIG_FIELDS))
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {known}")
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
    try:
        return BookConfig(name=name, **table)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
