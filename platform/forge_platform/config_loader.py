"""Job specs: TOML files loaded into nested dataclasses, overridden from the command line.

Precedence, highest first: command line (`--train.lr 3e-4`) > the TOML file > dataclass defaults
(a section may start from a named preset: `[model] preset = "hybrid-debug"`, and its other keys
then override the preset's values).

Every value is checked against its field's type where it is born; a wrong type, a value outside a
`Literal`, or an unknown key (a typo must never be silently ignored) raises `ConfigError` naming the
dotted field, the value and what is allowed. Values the dataclasses' own `__post_init__` rejects are
re-raised with the field path in front.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import inspect
import json
import textwrap
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

# Maps a config dataclass to the function that builds it from a preset name.
PresetResolvers = Mapping[type, Callable[[str], Any]]

PRESET_KEY = "preset"


class ConfigError(ValueError):
    """A job spec or an override that does not fit the config schema."""


@dataclasses.dataclass(frozen=True)
class _CliText:
    """A raw command-line value: parsed according to the type of the field it lands in."""

    text: str


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    presets: PresetResolvers | None = None,
) -> T:
    """Build `cls` from defaults, then the TOML file at `path`, then `--a.b value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"job spec {path} does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"job spec {path} is not valid TOML: {err}") from None
    _deep_merge(data, parse_overrides(overrides))
    return from_dict(cls, data, presets=presets)


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Turn `["--train.lr", "3e-4", "--run.name=x"]` into `{"train": {"lr": _CliText("3e-4")}, ...}`."""
    nested: dict[str, Any] = {}
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"override {arg!r} must look like --section.field VALUE")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(items):
                raise ConfigError(f"override --{key} has no value")
            value = items[i + 1]
            i += 1
        i += 1
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override --{key} conflicts with another override")
        node[leaf] = _CliText(value)
    return nested


def from_dict(cls: type[T], data: Mapping[str, Any], presets: PresetResolvers | None = None) -> T:
    """Build the dataclass `cls` from a plain mapping, validating every key and value."""
    return _build(cls, data, presets or {}, path="", base=None)


def _build(cls: type[T], data: Mapping[str, Any], presets: PresetResolvers, path: str, base: Any) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'the spec'}: expected a table of {cls.__name__} fields, got {data!r}")
    data = dict(data)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    preset = data.pop(PRESET_KEY, None)
    if preset is not None:
        if cls not in presets:
            raise ConfigError(f"{_join(path, PRESET_KEY)}: {cls.__name__} has no presets")
        preset = _unwrap_cli(preset)
        try:
            base = presets[cls](preset)
        except (KeyError, ValueError) as err:
            raise ConfigError(f"{_join(path, PRESET_KEY)} = {preset!r}: {_message(err)}") from None
    for key in data:
        if key not in fields:
            allowed = sorted(fields) + ([PRESET_KEY] if cls in presets else [])
            hint = difflib.get_close_matches(key, allowed, n=1)
            maybe = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"{_join(path, key)}: unknown key for {cls.__name__}{maybe} (allowed: {', '.join(allowed)})"
            )
    if base is None:
        base = cls()
    hints = typing.get_type_hints(cls)
    changes = {}
    for key, value in data.items():
        field_path = _join(path, key)
        changes[key] = _coerce(hints[key], value, field_path, presets, getattr(base, key))
    try:
        return dataclasses.replace(base, **changes)
    except (ValueError, TypeError) as err:
        message = _message(err)
        if path and message.startswith(f"{path}."):  # the section already names the whole path
            raise ConfigError(message) from None
        raise ConfigError(f"{path or cls.__name__}: {message}") from None


def _coerce(hint: Any, value: Any, path: str, presets: PresetResolvers, current: Any) -> Any:
    """Check `value` against the type `hint`; raw command-line text is parsed to fit it."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if _unwrap_cli(value) in (None, "none", "None") and type(None) in args:
            return None
        if len(non_none) == 1:
            return _coerce(non_none[0], value, path, presets, current)
        raise ConfigError(f"{path}: unions other than Optional are not supported in configs")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, _CliText):
            raise ConfigError(f"{path}: is a section; override its fields as --{path}.FIELD VALUE")
        return _build(hint, value, presets, path, base=current if dataclasses.is_dataclass(current) else None)
    if origin is Literal:
        raw = _parse_cli(value, str if all(isinstance(a, str) for a in args) else None)
        if raw not in args:
            raise ConfigError(f"{path} = {raw!r}: must be one of {', '.join(repr(a) for a in args)}")
        return raw
    if origin in (list, tuple, Sequence):
        item = args[0] if args else Any
        if isinstance(value, Mapping) and isinstance(current, (list, tuple)):
            # `--stages.1.train.steps 5` addresses one item of a list that the file or defaults hold.
            items = list(current)
            for index, update in value.items():
                if not str(index).isdigit() or int(index) >= len(items):
                    raise ConfigError(f"{path}.{index}: no such item (the list has {len(items)})")
                items[int(index)] = _coerce(item, update, f"{path}.{index}", presets, items[int(index)])
            return tuple(items) if origin is tuple else items
        raw = _parse_cli(value, None)
        if isinstance(raw, str) and isinstance(value, _CliText):
            # Each item is command-line text too, read as the item type (`4096,16384` -> ints).
            raw = [_CliText(part) for part in raw.split(",") if part]
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{path} = {raw!r}: expected a list")
        items = [_coerce(item, v, f"{path}.{i}", presets, None) for i, v in enumerate(raw)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        raw = _parse_cli(value, None)
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path} = {raw!r}: expected a table")
        return {str(k): _coerce(args[1] if args else Any, v, f"{path}.{k}", presets, None) for k, v in raw.items()}
    if hint is Any:
        return _parse_cli(value, None)
    raw = _parse_cli(value, hint)
    if hint is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if hint in (int, float, str, bool) and not (isinstance(raw, hint) and not (hint is int and isinstance(raw, bool))):
        raise ConfigError(f"{path} = {raw!r}: expected {hint.__name__}, got {type(raw).__name__}")
    return raw


def _parse_cli(value: Any, hint: Any) -> Any:
    """Command-line text is read as a TOML value (`3e-4`, `true`, `[1, 2]`), or kept as text."""
    if not isinstance(value, _CliText):
        return value
    if hint is str:
        return value.text
    try:
        return tomllib.loads(f"v = {value.text}")["v"]
    except tomllib.TOMLDecodeError:
        return value.text


def _unwrap_cli(value: Any) -> Any:
    return value.text if isinstance(value, _CliText) else value


def _deep_merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        elif isinstance(value, Mapping) and isinstance(into.get(key), list):
            for index, item_update in value.items():  # `--stages.0.x v` into a list from the file
                items = into[key]
                if str(index).isdigit() and int(index) < len(items) and isinstance(items[int(index)], dict):
                    _deep_merge(items[int(index)], item_update)
                else:
                    raise ConfigError(f"override --{key}.{index}: no such item (the list has {len(items)})")
        else:
            into[key] = value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _message(err: BaseException) -> str:
    return str(err.args[0]) if err.args else repr(err)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (TOML/JSON friendly)."""
    return dataclasses.asdict(cfg)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """`{"train.lr": 3e-4, ...}`: the form MLflow params and `--overrides` use."""
    flat: dict[str, Any] = {}
    for key, value in (to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg).items():
        name = _join(prefix, key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def config_hash(cfg: Any) -> str:
    """A short stable hash of a config (a dataclass, or a mapping of them), stored with checkpoints."""
    blob = json.dumps(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass, its bases' included: the string literal under each field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring for a field it redeclares wins
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per field, dotted, with type, default and docstring: the `--help` of a job."""
    lines = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        name = _join(prefix, f.name)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            lines.append(f"[{name}] {docs.get(f.name, '')}")
            lines.extend(describe(hint, name))
        else:
            default = getattr(defaults, f.name)
            lines.append(f"  --{name} (default {default!r}): {docs.get(f.name, '')}")
    return lines
