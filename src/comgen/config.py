"""Typed configs as dataclasses that round-trip through YAML.

Why: every output directory gets the exact config that produced it (``config.yaml``), and a stable
hash of it, so results are reproducible and stale stages can be detected and redone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from comgen.errors import ConfigError
from comgen.io import atomic_write_text

T = TypeVar("T", bound="ConfigBase")


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a plain YAML value into the annotated field type (nested dataclasses, tuples, Paths)."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        for candidate in non_none:
            try:
                return _coerce(candidate, value, where)
            except (ConfigError, TypeError, ValueError):
                continue
        raise ConfigError(where, f"value {value!r} does not match {tp}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping for {tp.__name__}, got {value!r}")
        return tp.from_dict(value, where=where) if issubclass(tp, ConfigBase) else tp(**value)
    if origin in (tuple, list) and not isinstance(value, (list, tuple)):
        raise ConfigError(where, f"expected a list, got {value!r}")
    if origin in (tuple,):
        if args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(where, f"expected a list of {len(args)} values, got {value!r}")
            return tuple(_coerce(a, v, where) for a, v in zip(args, value))
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where) for v in value)
    if origin in (list,):
        inner = args[0] if args else Any
        return [_coerce(inner, v, where) for v in value]
    if origin in (dict,):
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(where, f"{value!r} is not one of {list(args)}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(where, f"expected a path, got {value!r}")
        return Path(value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)  # NaN and inf pass here; a config's own checks refuse them where they matter
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = " (YAML reads quoted numbers and ones like 1e-3 as text: write 1.0e-3, unquoted)"
            except ValueError:
                pass
        raise ConfigError(where, f"expected a number, got {value!r}{hint}")
    if tp in (int, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(where, f"expected {tp.__name__}, got {value!r}")
    return value


def _drop_retired(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """Options a class no longer has (``RETIRED_OPTIONS``: name -> the value now built in) are dropped when a saved
    file holds them at that value, so configs written by an older comgen still load; any other value would now
    mean something else, so it is refused."""
    for name, built_in in getattr(cls, "RETIRED_OPTIONS", {}).items():
        if name in data:
            value = data.pop(name)
            if value != built_in:
                raise ConfigError(f"{where}.{name}", f"this option was removed; only {built_in!r} is left, got {value!r}")
    return data


@dataclasses.dataclass
class ConfigBase:
    """Mixin for config dataclasses: YAML load/save, dict round-trip, stable hash."""

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
        data = _drop_retired(cls, dict(data or {}), where)
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(where, f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
        kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(where, str(exc)) from None

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(path, "config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(path, f"not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise ConfigError(path, "expected a mapping at the top level")
        try:
            return cls.from_dict(data, where=str(path))
        except ConfigError as exc:  # a check inside the config names its option; the message also names the file
            if exc.where == str(path):
                raise
            if exc.where is not None and exc.where.startswith(f"{path}."):  # a nested section's option
                raise ConfigError(path, f"{exc.where[len(str(path)) + 1:]}: {exc.problem}") from None
            raise ConfigError(path, str(exc)) from None

    def hash(self) -> str:
        """Short stable hash of the config's content (used to detect stale stage outputs)."""
        normalised = type(self).from_dict(self.to_dict()).to_dict()  # 1 and 1.0 hash alike
        blob = json.dumps(normalised, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
