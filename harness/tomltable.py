"""Strict, typed reading of TOML files whose every error names the file and the full key.

Shared by scenario files and remanence.toml: each passes the exception type its errors take.
"""
from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Callable

ErrorFactory = Callable[[Path, str, str], Exception]   # (path, key, message) -> the exception to raise


def load_toml(path: Path, error: ErrorFactory) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise error(path, "", f"not valid TOML: {e}") from None
    except RecursionError:
        raise error(path, "", "not usable TOML: nested too deeply") from None
    except ValueError as e:   # tomllib itself: e.g. an integer of more digits than Python converts
        raise error(path, "", f"not usable TOML: {e}") from None
    except OSError as e:
        raise error(path, "", f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise error(path, "", f"cannot read: {e}") from None


def _shown(value, limit: int = 60) -> str:
    """A value in an error message: its repr, cut short (a wrong value may be a huge table)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class TomlTable:
    def __init__(self, path: Path, table: dict, prefix: str, error: ErrorFactory):
        self.path, self.table, self.prefix, self.error = path, table, prefix, error

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, message: str) -> Exception:
        return self.error(self.path, self.key(name), message)

    def get(self, name: str, kind: type | tuple[type, ...], default=None, required: bool = False):
        if name not in self.table:
            if required:
                raise self.fail(name, "required key is missing")
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int and datetime a date to Python, never to a scenario author.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds) \
                or (isinstance(value, dt.datetime) and dt.datetime not in kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise self.fail(name, f"expected {expected}, got {type(value).__name__} {_shown(value)}")
        if isinstance(value, str) and "\0" in value:
            raise self.fail(name, "must not contain a NUL byte")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None, required: bool = False) -> str:
        value = self.get(name, str, default, required)
        if value not in choices:
            raise self.fail(name, f"{value!r} is not one of: {', '.join(choices)}")
        return value

    def string_list(self, name: str, default: list[str] | None = None) -> list[str] | None:
        value = self.get(name, list, default)
        for i, item in enumerate(value or []):
            if not isinstance(item, str):
                raise self.fail(f"{name}[{i}]", f"expected a string, got {_shown(item)}")
            if "\0" in item:
                raise self.fail(f"{name}[{i}]", "must not contain a NUL byte")
        return value

    def child(self, table: dict, prefix: str) -> "TomlTable":
        return TomlTable(self.path, table, prefix, self.error)

    def sub(self, name: str, required: bool = False) -> "TomlTable | None":
        table = self.get(name, dict, None, required)
        return None if table is None else self.child(table, self.key(name) + ".")

    def reject_unknown(self, allowed: tuple[str, ...]) -> None:
        for name in self.table:
            if name not in allowed:
                raise self.fail(name, f"unknown key (allowed: {', '.join(allowed)})")
