"""Configs: TOML files, one section per component, validated, overridable, saved.

A config is a frozen dataclass (the *schema*) whose fields are *sections*:
frozen dataclasses of :func:`option` fields (types, defaults, bounds, help)::

    [sde]   -> SDEConfig      [optim] -> OptimConfig    [sample] -> SampleConfig
    [model] -> ModelConfig    [train] -> TrainConfig    [data]   -> DataConfig
    [loss]  -> LossConfig

Each component is built from its own section only (``config.sde.build()``,
``Model(config.model)``), never from the whole config. :func:`make_schema`
puts sections together; the machinery here works for any such schema, with
sections nested to any depth.

:func:`load_config` layers three sources, later wins:

1. the schema's defaults;
2. a TOML file, read with the standard library's :mod:`tomllib`;
3. overrides ``"section.key=value"`` (the CLI's ``--set model.channels=64``),
   the value written as in TOML (``64``, ``2e-4``, ``true``, ``[1, 2, 2]``,
   ``"text"``, ``{snr = 0.16}``); a value that is not TOML is a string, so
   ``--set sample.sampler=ode`` needs no quotes. A key holding dots is quoted
   as in TOML: ``--set 'sample.options."corrector.snr"=0.1'``. A table value
   (``--set 'sample.options={snr = 0.1}'``) replaces the whole table; a dotted
   key sets one key inside it.

Every value is checked against its field. Types are TOML's own: an integer is
accepted where a float is expected, nothing else is converted (``lr = "1e-3"``
is an error). Arrays fill tuple and list fields (bounds and choices then apply
to each element), tables fill nested sections and ``dict`` fields (free tables
such as ``[sample.options]``), a ``T | None`` field left out stays None (TOML
has no null). Then each section's ``__post_init__`` checks what involves
several keys. The first problem raises :class:`ConfigError` naming the source
(file or override), the full key path (``model.channel_mult[1]``) and what is
allowed.

:func:`dump_config` writes the fully resolved config as TOML, every key
included, each with its help as a comment (a None value as a commented line);
``load_config`` of that text gives the same config back. :func:`save_config`
writes it atomically (the workdir's ``config.toml``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping

from .errors import OptionError, SdekitError
from .io import atomic_write
from .sde import SDE, SDES

# -- options: typed, bounded dataclass fields (configs and sampler options) -----------


def option(default: Any, help: str, *, ge=None, gt=None, le=None, lt=None, choices=None):
    """A setting: a dataclass field with help text, bounds and choices.

    Bounds and choices apply to the value, or to each element of a tuple or
    list. A mutable default (dict, list, set) is copied for each instance.
    """
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": tuple(choices) if choices else None}
    if isinstance(default, (dict, list, set)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def bounds_text(meta: Mapping) -> str:
    parts = []
    for key, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if meta.get(key) is not None:
            parts.append(f"{sym} {meta[key]}")
    return " and ".join(parts)


def value_problem(value: Any, meta: Mapping) -> str | None:
    """What is wrong with ``value`` under ``meta``'s choices and bounds ("must be >= 0, got -1"), or None."""
    choices = meta.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"must be one of {', '.join(map(str, choices))}, got {value!r}{hint}"
    ok = all((
        meta.get("ge") is None or value >= meta["ge"],
        meta.get("gt") is None or value > meta["gt"],
        meta.get("le") is None or value <= meta["le"],
        meta.get("lt") is None or value < meta["lt"],
    ))
    return None if ok else f"must be {bounds_text(meta)}, got {value!r}"


def _check_bounds(value: Any, meta: Mapping, where: str) -> None:
    """Raise OptionError "``where`` must be ..." when ``value`` breaks ``meta``'s choices or bounds."""
    problem = value_problem(value, meta)
    if problem:
        raise OptionError(f"{where} {problem}")


# -- errors and key paths ---------------------------------------------------------------


class ConfigError(SdekitError, ValueError):
    """A config value that is unknown, of the wrong type or out of range.

    The message reads ``"{source}: {key} {detail}"``: ``source`` is the file or
    the override (``--set optim.lr=-1``) that gave the value, ``key`` the full
    key path (``model.channel_mult[1]``). A section's ``__post_init__`` raises
    it with the key inside the section (``key="sigma_max"``); the loader adds
    the section's path and the source.
    """

    def __init__(self, detail: str, key: str | None = None, source: str | None = None):
        self.detail, self.key, self.source = detail, key, source
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.key} {self.detail}" if self.key else self.detail
        return f"{self.source}: {text}" if self.source else text

    def __str__(self) -> str:
        return self._message()

    def located(self, prefix: str, source: str | None) -> "ConfigError":
        """The same error with ``prefix.`` before its key and ``source`` (when it has none)."""
        key = ".".join(filter(None, (prefix, self.key))) or None
        return ConfigError(self.detail, key, self.source or source)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_str(s: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"TOML keys are strings, got {key!r}")
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def key_text(path: Iterable[str | int]) -> str:
    """A key path as the errors write it: ``("model", "channel_mult", 1)`` -> ``model.channel_mult[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{_toml_key(part)}" if out else _toml_key(part)
    return out


# -- types ------------------------------------------------------------------------------

_SCALAR_TEXT = {bool: "a boolean (true or false)", int: "an integer", float: "a float", str: "a string"}
_SCALAR_PLURAL = {bool: "booleans", int: "integers", float: "floats", str: "strings"}
_UNION_TYPES = (typing.Union, types.UnionType)


def _strip_none(tp):
    """``T | None`` -> ``T``; any other union is not a config type."""
    if typing.get_origin(tp) in _UNION_TYPES:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"config fields may be `T | None`, not the union {tp}")
        return inner[0]
    return tp


def _sequence_args(tp) -> tuple[type, tuple] | None:
    """(tuple or list, element types or (T, ...)) for sequence types, else None."""
    origin = typing.get_origin(tp) or tp
    if origin not in (tuple, list):
        return None
    args = typing.get_args(tp)
    if not args:
        args = (Any, ...)
    elif origin is list:
        args = (args[0], ...)
    return origin, args


def _type_text(tp) -> str:
    """What an error says a value must be: "a float", "an array of 2 floats", "one of 'a', 'b'"."""
    tp = _strip_none(tp)
    if tp in _SCALAR_TEXT:
        return _SCALAR_TEXT[tp]
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    seq = _sequence_args(tp)
    if seq:
        args = seq[1]
        if args[-1] is Ellipsis:
            return f"an array of {_SCALAR_PLURAL.get(args[0], 'values')}"
        if len(set(args)) == 1:
            return f"an array of {len(args)} {_SCALAR_PLURAL.get(args[0], 'values')}"
        return f"an array of {len(args)} values"
    if tp is Any:
        return "any value"
    return "a table"  # dict fields and nested sections


def _type_name(tp) -> str:
    """A compact type for docs: float, int, str | None, array of int, table, ..."""
    if typing.get_origin(tp) in _UNION_TYPES:
        return f"{_type_name(_strip_none(tp))} | None"
    if typing.get_origin(tp) is Literal:
        return "str"
    seq = _sequence_args(tp)
    if seq:
        args = seq[1]
        if args[-1] is Ellipsis:
            return f"array of {_type_name(args[0])}"
        return f"array of {len(args)}: " + ", ".join(_type_name(a) for a in args)
    if tp is Any:
        return "any"
    if typing.get_origin(tp) is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "table"
    return getattr(tp, "__name__", str(tp))


def _kind(raw: Any) -> str:
    """What a TOML value is, for "got ..." in errors."""
    if isinstance(raw, bool):
        return f"the boolean {str(raw).lower()}"
    if isinstance(raw, int):
        return f"the integer {raw}"
    if isinstance(raw, float):
        return f"the float {raw!r}"
    if isinstance(raw, str):
        return f"the string {raw!r}"
    if isinstance(raw, list):
        text = _toml_value(raw) if _writable(raw) else "..."
        return f"the array {text if len(text) <= 60 else text[:57] + '...'}"
    if isinstance(raw, dict):
        return "a table"
    return f"a {type(raw).__name__}"


# -- loading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Override:
    """A value given on the command line, with its text: a string field takes the text as it is."""

    value: Any
    text: str


@dataclass
class _Sources:
    """Where values came from: the file, and the override that set each key path."""

    file: str | None
    overrides: dict[tuple, str] = field(default_factory=dict)

    def label(self, path: tuple) -> str | None:
        for i in range(len(path), 0, -1):
            if path[:i] in self.overrides:
                return f"--set {self.overrides[path[:i]]}"
        below = [text for p, text in self.overrides.items() if p[:len(path)] == path]  # a table made by --set
        return f"--set {below[-1]}" if below else self.file

    def section_label(self, path: tuple) -> str | None:
        """The sources of a whole section: the file and every override inside (or above) it."""
        n = len(path)
        sets = [f"--set {text}" for p, text in self.overrides.items() if p[:n] == path or path[:len(p)] == p]
        return " and ".join(([self.file] if self.file else []) + sets) or None

    def error(self, path: tuple, detail: str) -> ConfigError:
        return ConfigError(detail, key_text(path) or None, self.label(path))


def read_toml(path: str | os.PathLike) -> dict:
    """The tables of a TOML file, or :class:`ConfigError` naming the file (and line, for bad TOML)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"is not UTF-8 text ({err.reason} at byte {err.start})", source=str(path)) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"invalid TOML: {err}", source=str(path)) from None


def _single_path(doc: dict) -> tuple[tuple[str, ...], Any] | None:
    """``{"a": {"b": v}}`` -> ``(("a", "b"), v)``; None when a table has several keys."""
    path: list[str] = []
    node: Any = doc
    while isinstance(node, dict):
        if len(node) != 1:
            return None
        (key, node), = node.items()
        path.append(key)
    return tuple(path), node


def parse_override(text: str) -> tuple[tuple[str, ...], Any, str]:
    """``"model.channel_mult=[1, 2, 2]"`` -> ``(("model", "channel_mult"), [1, 2, 2], "[1, 2, 2]")``.

    The key is a TOML dotted key; the value is parsed as TOML, and a value that
    is not TOML (a bare word) is taken as the string it is. Raises
    :class:`ConfigError` for anything else.
    """
    source = f"--set {text}"
    key, eq, value = str(text).partition("=")
    key, value = key.strip(), value.strip()
    if not eq or not key:
        raise ConfigError("is not of the form section.key=value (e.g. --set model.channels=64)", source=source)
    try:
        found = _single_path(tomllib.loads(f"{key} = 0"))
    except tomllib.TOMLDecodeError:
        found = None
    if found is None or found[1] != 0:
        raise ConfigError(f"{key!r} is not a key path like model.channels (dots separate keys; quote a key "
                          f"holding other characters, as in TOML)", source=source)
    try:
        doc = tomllib.loads(f"v = {value}")
        if list(doc) != ["v"]:
            raise tomllib.TOMLDecodeError("one value expected")
        parsed = doc["v"]
    except tomllib.TOMLDecodeError as err:
        if value[:1] in ("[", "{", '"', "'"):
            raise ConfigError(f"the value {value!r} is not valid TOML ({err})", source=source) from None
        parsed = value  # a bare word: the string it is
    return found[0], parsed, value


def _apply_override(tree: dict, path: tuple[str, ...], value: Any, text: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value if isinstance(value, dict) else _Override(value, text)


def _takes_str(tp) -> bool:
    tp = _strip_none(tp)
    return tp is str or (typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp)))


def _plain(raw: Any) -> Any:
    """TOML data with the overrides' wrappers removed (values of ``Any`` fields)."""
    if isinstance(raw, _Override):
        return _plain(raw.value)
    if isinstance(raw, dict):
        return {k: _plain(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_plain(v) for v in raw]
    return raw


_BAD = object()


def _scalar(tp: type, raw: Any) -> Any:
    if isinstance(raw, bool):
        return raw if tp is bool else _BAD
    if tp is int:
        return raw if isinstance(raw, int) else _BAD
    if tp is float:
        return float(raw) if isinstance(raw, (int, float)) else _BAD
    if tp is str:
        return raw if isinstance(raw, str) else _BAD
    return _BAD


def _build(tp, raw: Any, path: tuple, meta: Mapping, src: _Sources) -> Any:
    """Validate TOML data ``raw`` at ``path`` into a value of type ``tp``."""
    if isinstance(raw, _Override):
        raw = raw.text if (_takes_str(tp) and not isinstance(raw.value, str)) else raw.value
    tp = _strip_none(tp)
    if tp is Any:
        return _plain(raw)
    if dataclasses.is_dataclass(tp):
        return _build_section(tp, raw, path, src)
    if typing.get_origin(tp) is Literal:
        args = typing.get_args(tp)
        if not any(type(raw) is type(a) and raw == a for a in args):
            raise src.error(path, f"must be {_type_text(tp)}, got {_kind(raw)}")
        return raw
    seq = _sequence_args(tp)
    if seq:
        kind, args = seq
        if not isinstance(raw, list):
            raise src.error(path, f"must be {_type_text(tp)}, got {_kind(raw)}")
        if args[-1] is Ellipsis:
            args = (args[0],) * len(raw)
        elif len(raw) != len(args):
            raise src.error(path, f"must be {_type_text(tp)}, got {len(raw)} item{'s' * (len(raw) != 1)}")
        return kind(_build(t, r, path + (i,), meta, src) for i, (t, r) in enumerate(zip(args, raw)))
    if typing.get_origin(tp) is dict or tp is dict:
        if not isinstance(raw, dict):
            raise src.error(path, f"must be a table, got {_kind(raw)}")
        value_type = (typing.get_args(tp) or (str, Any))[1]
        return {k: _build(value_type, v, path + (k,), meta, src) for k, v in raw.items()}
    if tp not in _SCALAR_TEXT:
        raise TypeError(f"config key {key_text(path)}: unsupported type {tp!r}")
    value = _scalar(tp, raw)
    if value is _BAD:
        raise src.error(path, f"must be {_type_text(tp)}, got {_kind(raw)}")
    problem = value_problem(value, meta)
    if problem:
        raise src.error(path, problem)
    return value


def _build_section(cls: type, raw: Any, path: tuple, src: _Sources) -> Any:
    if not isinstance(raw, dict):
        raise src.error(path, f"must be a table ([{key_text(path)}] in TOML), got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            full = key_text(path + (key,))
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            if path:
                hint = f"; did you mean {key_text(path + (close[0],))}?" if close else ""
                detail = f"is not a key of [{key_text(path)}]{hint} (valid keys: {', '.join(fields)})"
            else:
                hint = f"; did you mean [{close[0]}]?" if close else ""
                detail = f"is not a section{hint} (sections: {', '.join(fields)})"
            raise ConfigError(detail, full, src.label(path + (key,)))
    values = {}
    for name, f in fields.items():
        tp = hints[name]
        if name in raw:
            values[name] = _build(tp, raw[name], path + (name,), f.metadata, src)
        elif dataclasses.is_dataclass(tp) and f.default is dataclasses.MISSING and f.default_factory in (
                tp, dataclasses.MISSING):  # a section left out: its defaults, and errors for its required keys
            values[name] = _build_section(tp, {}, path + (name,), src)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise src.error(path + (name,), "is required (it has no default)")
    try:
        return cls(**values)
    except ConfigError as err:
        raise err.located(key_text(path), src.section_label(path)) from None
    except (SdekitError, ValueError) as err:
        raise ConfigError(f"is invalid: {err}", key_text(path) or None, src.section_label(path)) from None


def load_config(path: str | os.PathLike | None, schema: type, overrides: Iterable[str] = ()) -> Any:
    """The config of type ``schema`` from its defaults, the TOML file ``path`` (None: no file) and
    ``overrides`` (``"section.key=value"`` strings, later ones win), validated.

    Raises :class:`ConfigError` naming the file or override, the key path and what is allowed.
    """
    data = {} if path is None else read_toml(path)
    return _from_tree(data, schema, None if path is None else str(path), overrides)


def loads_config(text: str, schema: type, source: str, overrides: Iterable[str] = ()) -> Any:
    """:func:`load_config` from TOML text (a checkpoint's saved config, say); errors name ``source``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"invalid TOML: {err}", source=source) from None
    return _from_tree(data, schema, source, overrides)


def _from_tree(data: dict, schema: type, source: str | None, overrides: Iterable[str]) -> Any:
    src = _Sources(source)
    for text in overrides:
        keys, value, value_text = parse_override(text)
        _apply_override(data, keys, value, value_text)
        src.overrides[keys] = text
    return _build_section(schema, data, (), src)


def make_schema(name: str = "Config", **sections: type) -> type:
    """A frozen schema dataclass with one field per section, each defaulting to its section's defaults.

    ``make_schema(sde=SDEConfig, model=ModelConfig)`` -> a class whose instances
    have ``.sde`` (an SDEConfig) and ``.model`` (a ModelConfig).
    """
    for key, cls in sections.items():
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"section {key!r} must be a dataclass, got {cls!r}")
    return dataclasses.make_dataclass(name, [(key, cls, field(default_factory=cls)) for key, cls in sections.items()],
                                      frozen=True)


# -- writing ----------------------------------------------------------------------------


def _writable(value: Any) -> bool:
    try:
        _toml_value(value)
    except TypeError:
        return False
    return True


def _fields(obj: Any) -> Iterator[tuple[str, Any, Mapping]]:
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield f.name, getattr(obj, f.name), f.metadata
    else:
        for key, value in obj.items():
            yield key, value, {}


def _toml_value(value: Any) -> str:
    """One TOML value (inline: arrays and inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        items = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v, _ in _fields(value) if v is not None]
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to TOML")


def _allowed(meta: Mapping) -> str:
    if meta.get("choices"):
        return f" [one of: {', '.join(map(str, meta['choices']))}]"
    bounds = bounds_text(meta)
    return f" [{bounds}]" if bounds else ""


def _emit(obj: Any, path: tuple, lines: list[str]) -> None:
    tables = []
    for name, value, meta in _fields(obj):
        if isinstance(value, dict) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            tables.append((name, value))
            continue
        help = " ".join(str(meta.get("help", "")).split())
        if value is None:
            lines.append(f"# {_toml_key(name)} is unset" + (f": {help}" if help else ""))
            continue
        if help:
            lines.append(f"# {help}{_allowed(meta)}")
        try:
            lines.append(f"{_toml_key(name)} = {_toml_value(value)}")
        except TypeError as err:
            raise TypeError(f"config key {key_text(path + (name,))}: {err}") from None
    for name, value in tables:
        lines += ["", f"[{key_text(path + (name,))}]"]
        _emit(value, path + (name,), lines)


def dump_config(config: Any) -> str:
    """The fully resolved ``config`` as TOML text: every key, defaults included, help as comments.

    ``load_config`` of the text (with the same schema) equals ``config``.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"dump_config needs a config dataclass instance, got {config!r}")
    lines = ["# sdekit config, fully resolved: every key is written out, defaults included.",
             "# Load it with sdekit.config.load_config; override a key with --set section.key=value."]
    _emit(config, (), lines)
    return "\n".join(lines) + "\n"


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write :func:`dump_config` of ``config`` to ``path`` atomically (UTF-8)."""
    text = dump_config(config)
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def describe_config(schema: type, prefix: tuple = ()) -> list[dict]:
    """One row per key, for docs and ``--help``: key path, type, default, help, bounds, choices."""
    rows = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if not f.init:
            continue
        tp, path = hints[f.name], prefix + (f.name,)
        if dataclasses.is_dataclass(tp):
            rows += describe_config(tp, path)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        choices = f.metadata.get("choices")
        if typing.get_origin(_strip_none(tp)) is Literal:
            choices = typing.get_args(_strip_none(tp))
        rows.append({"key": key_text(path), "type": _type_name(tp),
                     "default": None if default is dataclasses.MISSING else default,
                     "required": default is dataclasses.MISSING, "help": f.metadata.get("help", ""),
                     "bounds": bounds_text(f.metadata), "choices": list(choices) if choices else None})
    return rows


# -- the sections defined here (model, loss and data live with their components) -------


@dataclass(frozen=True)
class SDEConfig:
    """``[sde]``: the forward SDE (:mod:`sdekit.sde`).

    Each SDE takes only its own parameters (vp and subvp: beta_min, beta_max;
    ve: sigma_min, sigma_max). The others must keep their defaults (so that a
    saved config, which writes every key, loads back), and setting one to
    another value is an error: it would be silently ignored otherwise.
    """

    name: str = option("vp", "forward SDE: vp (continuous DDPM), subvp (sub-VP), ve (continuous NCSN)",
                       choices=tuple(SDES))
    beta_min: float = option(0.1, "vp, subvp: beta(0), the noise rate at t = 0", ge=0.0)
    beta_max: float = option(20.0, "vp, subvp: beta(1), the noise rate at t = T = 1", gt=0.0)
    sigma_min: float = option(0.01, "ve: sigma(0), the smallest noise std", gt=0.0)
    sigma_max: float = option(50.0, "ve: sigma(1), the prior's std (about the largest distance between "
                                    "training points)", gt=0.0)

    def __post_init__(self):
        if self.name not in SDES:
            raise ConfigError(value_problem(self.name, {"choices": tuple(SDES)}), "name")
        takes = self.parameters()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "name" and f.name not in takes and value != f.default:
                users = [n for n, cls in SDES.items() if f.name in {g.name for g in dataclasses.fields(cls)}]
                raise ConfigError(f"= {value!r} does not apply to the {self.name!r} SDE, which takes "
                                  f"{', '.join(takes)}; leave it out, or choose an SDE that takes it "
                                  f"({', '.join(users)})", f.name)
        if "beta_max" in takes and self.beta_max < self.beta_min:
            raise ConfigError(f"= {self.beta_max!r} must be >= beta_min = {self.beta_min!r}", "beta_max")
        if "sigma_max" in takes and self.sigma_max <= self.sigma_min:
            raise ConfigError(f"= {self.sigma_max!r} must be > sigma_min = {self.sigma_min!r}", "sigma_max")

    def parameters(self) -> tuple[str, ...]:
        """The keys of this section that the chosen SDE takes."""
        own = {f.name for f in dataclasses.fields(self)}
        return tuple(f.name for f in dataclasses.fields(SDES[self.name]) if f.name in own)

    def build(self) -> SDE:
        """The :class:`~sdekit.sde.SDE` object (``VPSDE(beta_min, beta_max)``, ...)."""
        return SDES[self.name](**{key: getattr(self, key) for key in self.parameters()})


@dataclass(frozen=True)
class OptimConfig:
    """``[optim]``: optimizer, learning-rate warmup, gradient clipping and EMA of the weights."""

    name: str = option("adam", "optimizer: adam (weight decay added to the gradient) or adamw (decoupled)",
                       choices=("adam", "adamw"))
    lr: float = option(2e-4, "learning rate after warmup", gt=0.0)
    weight_decay: float = option(0.0, "weight decay", ge=0.0)
    betas: tuple[float, float] = option((0.9, 0.999), "Adam's (beta1, beta2)", ge=0.0, lt=1.0)
    eps: float = option(1e-8, "Adam's epsilon", gt=0.0)
    warmup: int = option(1000, "steps of linear learning-rate warmup from 0 (0: none)", ge=0)
    grad_clip: float = option(1.0, "clip the gradients' global norm to this (0: no clipping)", ge=0.0)
    ema_decay: float = option(0.999, "decay of the exponential moving average of the weights used for "
                                     "sampling (0: the EMA is the current weights)", ge=0.0, lt=1.0)
    ema_warmup: bool = option(True, "EMA decay min(ema_decay, (1 + n) / (10 + n)) after n updates, so that the "
                                    "untrained initial weights do not linger in the average (0.999^2100 = 12% "
                                    "of them after 2100 steps without it)")

    def ema_decay_at(self, step: int) -> float:
        """The EMA decay of the update after step ``step`` (counted from 0)."""
        if not self.ema_warmup:
            return self.ema_decay
        return min(self.ema_decay, (1 + step) / (10 + step))

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (counted from 0): lr * min(1, (step + 1) / warmup)."""
        return self.lr if self.warmup == 0 else self.lr * min(1.0, (step + 1) / self.warmup)

    def build(self, params):
        """The torch optimizer over ``params`` (its lr is the post-warmup lr; see :meth:`lr_at`)."""
        import torch

        cls = torch.optim.AdamW if self.name == "adamw" else torch.optim.Adam
        # foreach: one fused op per update for all tensors (the default on CUDA only; ~1.1x a step on the CPU)
        return cls(params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay, foreach=True)


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: the training loop: length, batches, seed, cadence of logs, evals, samples and
    checkpoints, device and precision."""

    steps: int = option(20000, "training steps", ge=1)
    batch_size: int = option(256, "examples per step", ge=1)
    seed: int = option(0, "seed of the model's initialization, the data order and the noise", ge=0)
    log_every: int = option(100, "log the loss every this many steps", ge=1)
    eval_every: int = option(1000, "evaluate every this many steps (0: never)", ge=0)
    sample_every: int = option(5000, "draw and save samples every this many steps (0: never)", ge=0)
    bpd_every: int = option(0, "held-out bits/dim through the probability-flow ODE every this many steps, as "
                               "TensorBoard likelihood/* (0: never)", ge=0)
    bpd_items: int = option(128, "items (held-out, else training) scored by bpd_every", ge=2)
    checkpoint_every: int = option(1000, "save a checkpoint every this many steps (and at the end)", ge=1)
    keep_last: int = option(3, "checkpoints kept besides the best", ge=1)
    device: str = option("auto", "auto (CUDA when available), cpu or cuda", choices=("auto", "cpu", "cuda"))
    amp: str = option("none", "mixed precision: none (float32) or bf16 (autocast to bfloat16)",
                      choices=("none", "bf16"))
    compile: bool = option(False, "torch.compile the model")


@dataclass(frozen=True)
class SampleConfig:
    """``[sample]``: how samples are drawn (during training and by ``sdekit sample``).

    ``options`` is a free table handed to the sampler registry; :meth:`check`
    validates it (and the sampler's name) against a registry.
    """

    sampler: str = option("pc", "sampler name (sdekit samplers list)")
    steps: int = option(0, "steps of the time grid (0: the sampler's recommended number)", ge=0)
    schedule: str = option("uniform", "time grid: uniform, logsnr, karras, quadratic, vp_quadratic; parameters "
                                      "after a colon (karras:rho=5)")
    t_min: float | None = option(None, "time at which sampling stops (unset: the SDE's default)", ge=0.0, lt=1.0)
    num_samples: int = option(64, "samples to draw", ge=1)
    batch_size: int = option(0, "samples per batch (0: all at once)", ge=0)
    seed: int = option(0, "seed of the first sample (sample i has seed seed + i)", ge=0)
    options: dict[str, Any] = option({}, "options of the sampler (sdekit samplers show NAME), key = value")

    def __post_init__(self):
        from .grids import parse_schedule

        try:
            parse_schedule(self.schedule)
        except SdekitError as err:
            raise ConfigError(f"is invalid: {err}", "schedule") from None

    def check(self, registry) -> None:
        """Raise :class:`ConfigError` unless ``registry`` has the sampler and it takes the options."""
        from .api import resolve_sampler

        if self.sampler not in registry:
            raise ConfigError(value_problem(self.sampler, {"choices": tuple(registry.names())}), "sample.sampler")
        try:
            resolve_sampler(self.sampler, self.options, registry)
        except SdekitError as err:
            raise ConfigError(f"do not fit sampler {self.sampler!r}: {err}", "sample.options") from None

    def sample_kwargs(self) -> dict:
        """Keyword arguments of :func:`sdekit.sample` (besides score, SDE and shape)."""
        return {"sampler": self.sampler, "steps": self.steps or None, "schedule": self.schedule,
                "t_min": self.t_min, "seed": self.seed, "batch_size": self.batch_size or None,
                "options": dict(self.options)}
