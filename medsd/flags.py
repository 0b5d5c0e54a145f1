"""Config fields that carry their own meaning, and the one reading of them for every command.

A config dataclass declares each field with :func:`flag`: its help, range, choices, resume policy, aliases
and secrecy sit in ``dataclasses.field(metadata=...)`` next to the field (the pattern of transformers'
``HfArgumentParser``, written here because medsd's flags also come from YAML, keep strings until the
whole config is read, and take aliases that convert their value). :func:`add_dataclass_arguments` makes
the ``--flags``, :func:`config_from_args` / :func:`config_from_dict` build the config (defaults, then YAML,
then flags), :func:`check_field_values` refuses a value out of range in one line naming the flag.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import functools
import json
import types
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from medsd.errors import MedsdConfigError, check_values

T = TypeVar("T")
SEED_MAX = 2**32 - 1
"""Seeds also seed numpy, whose seeds are 32-bit."""
RESUME_POLICIES = ("free", "refuse")
_META = "medsd"


@dataclasses.dataclass(frozen=True)
class Alias:
    """Another name of a field: an extra option string of its flag and an accepted YAML key.

    ``convert`` turns the value given under the alias into the field's (e.g. ``--no_c2st`` -> ``c2st``);
    ``part`` makes it one item of a tuple field (``--window_low`` / ``--window_high`` -> ``window``);
    ``removed_in`` says (once, when used) in which version the alias goes.
    """

    name: str
    convert: Callable[[Any], Any] | None = None
    part: int | None = None
    removed_in: str | None = None
    takes_bool: bool = False
    """The alias alone (``--center_crop``) means true, as a boolean flag does."""


def flag(
    default: Any = dataclasses.MISSING,
    *,
    help: str | None = None,
    choices: Any = None,
    min: float | None = None,
    max: float | None = None,
    positive: bool | None = None,
    resume: str | None = None,
    aliases: tuple[str | Alias, ...] = (),
    secret: bool | None = None,
    nargs: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field with its meaning in its metadata.

    ``choices``: the allowed values (or a function returning them, for lists that need an import);
    ``min`` / ``max``: inclusive bounds, ``positive``: above 0; ``resume``: ``"free"`` when a
    resume may change the field without ``--allow_config_change`` (the weights do not depend on it), else
    refused; ``secret``: never saved nor logged; ``nargs="+"``: several values after the flag. A subclass
    that redeclares a field with a plain default keeps the metadata of its base.
    """
    if resume is not None and resume not in RESUME_POLICIES:
        raise ValueError(f"resume: expected one of {RESUME_POLICIES}, got {resume!r}")
    given = dict(
        help=help, choices=choices, min=min, max=max, positive=positive, resume=resume, secret=secret,
        nargs=nargs, metavar=metavar,
    )  # fmt: skip
    meta = {k: v for k, v in given.items() if v is not None}
    if aliases:
        meta["aliases"] = tuple(a if isinstance(a, Alias) else Alias(a) for a in aliases)
    if isinstance(default, list | dict | set):
        value = default
        return dataclasses.field(default_factory=lambda: copy.copy(value), metadata={_META: meta})
    return dataclasses.field(default=default, metadata={_META: meta})


_EMPTY = dict(
    help="", choices=None, min=None, max=None, positive=False, resume="refuse", secret=False, aliases=(),
    nargs=None, metavar=None,
)  # fmt: skip


@functools.cache
def field_meta(cls: type, name: str) -> dict[str, Any]:
    """The metadata of field ``name`` of ``cls``: what :func:`flag` was given, a subclass's declaration over
    its base's (a plain redeclaration changes only the default)."""
    meta = dict(_EMPTY)
    for klass in reversed(cls.__mro__):
        fields = klass.__dict__.get("__dataclass_fields__") or {}
        if name in fields:
            meta.update(fields[name].metadata.get(_META, {}))
    return meta


def choices_of(cls: type, name: str) -> tuple[Any, ...] | None:
    choices = field_meta(cls, name)["choices"]
    return tuple(choices() if callable(choices) else choices) if choices is not None else None


def settable_fields(cls: Any) -> list[dataclasses.Field]:
    """The fields a user sets (flags, YAML keys); ``init=False`` fields are derived from them."""
    return [f for f in dataclasses.fields(cls) if f.init]


def secret_fields(cls: Any) -> set[str]:
    """Fields never written to a saved config nor logged (e.g. a Hub token)."""
    cls = cls if isinstance(cls, type) else type(cls)
    return {f.name for f in dataclasses.fields(cls) if field_meta(cls, f.name)["secret"]}


def resume_may_change(cls: Any, name: str) -> bool:
    """Whether a resume may change field ``name`` without ``--allow_config_change``."""
    cls = cls if isinstance(cls, type) else type(cls)
    return name in {f.name for f in dataclasses.fields(cls)} and field_meta(cls, name)["resume"] == "free"


def public_values(config: Any) -> dict[str, Any]:
    """The settable field values of ``config`` without its secrets (what is saved and logged)."""
    hidden = secret_fields(config)
    names = {f.name for f in settable_fields(config)} - hidden
    return {k: v for k, v in dataclasses.asdict(config).items() if k in names}


# -- aliases -------------------------------------------------------------------------------------------
_WARNED: set[str] = set()


def deprecate(name: str, version: str, message: str) -> None:
    """Say once per process that ``name`` goes in ``version`` (diffusers' ``deprecate`` style)."""
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"{name} is deprecated and will be removed in medsd {version}: {message}", FutureWarning,
                      stacklevel=3)  # fmt: skip


def _aliases(cls: type) -> dict[str, tuple[str, Alias]]:
    """alias -> (field, Alias), read from the fields' metadata."""
    return {a.name: (f.name, a) for f in settable_fields(cls) for a in field_meta(cls, f.name)["aliases"]}


def resolve_aliases(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with every alias key replaced by its field (value converted); unknown keys are kept."""
    aliases = _aliases(cls)
    out: dict[str, Any] = {}
    parts: dict[str, dict[int, tuple[str, Any]]] = {}
    for key, value in data.items():
        if key not in aliases:
            out[key] = value
            continue
        name, alias = aliases[key]
        if alias.removed_in:
            deprecate(f"--{key}", alias.removed_in, f"use --{name}")
        if alias.part is not None:
            parts.setdefault(name, {})[alias.part] = (key, value)
        else:
            out[name] = alias.convert(value) if alias.convert else value
    for name, given in parts.items():
        names = [a.name for a in field_meta(cls, name)["aliases"] if a.part is not None]
        if len(given) != len(names):
            raise MedsdConfigError(f"--{' / --'.join(names)}: give all of them (or --{name})")
        if given[0][1] is not None:
            out[name] = tuple(given[i][1] for i in sorted(given))
    return out


class AliasedInit(type):
    """Metaclass of a config dataclass: its constructor also takes the fields' aliases as keywords."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(*args, **resolve_aliases(cls, kwargs))


# -- values --------------------------------------------------------------------------------------------
def field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def type_name(tp: Any) -> str:
    """How an error names the type a field expects ("an integer", "a list of str", ...)."""
    base, optional = unwrap_optional(tp)
    name = _TYPE_NAMES.get(base)
    if name is None:
        origin = typing.get_origin(base)
        args = ", ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(base))
        name = f"a {getattr(origin, '__name__', None) or getattr(base, '__name__', str(base))}" + (
            f" of {args}" if args else ""
        )
    return f"{name} (or none)" if optional else name


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError
    if value not in (0, 1) or isinstance(value, float | list | dict):
        raise ValueError
    return bool(value)


def convert(value: Any, tp: Any, name: str) -> Any:
    """``value`` (a flag's string, a YAML value) as type ``tp``; a ``ValueError`` naming ``name`` when not."""
    base, optional = unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if not optional and value is None:
            raise ValueError(f"{name}: expected {type_name(tp)}, got None")
        return None
    origin = typing.get_origin(base)
    try:
        if base is bool:
            return _to_bool(value)
        if base in (int, float, str):
            # YAML gives true/false, lists and mappings their own types: never silently cast them
            if isinstance(value, bool | list | dict) and not (base is str and isinstance(value, bool)):
                raise ValueError
            if base is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return base(value)
        if origin in (list, tuple):
            (item_tp, *_) = typing.get_args(base) or (Any,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v != ""]
            items = [convert(v, item_tp, name) if item_tp is not Any else v for v in value]
            return items if origin is list else tuple(items)
        if origin is dict or base is dict:
            return json.loads(value) if isinstance(value, str) else dict(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {type_name(tp)}, got {value!r}") from None
    return value


def to_bool(name: str) -> Callable[[Any], bool]:
    """An alias converter: the value as true / false (``--center_crop false``)."""
    return lambda value: convert(value, bool, name)


def unknown_keys_error(source: str, unknown: list[str], known: Any) -> str:
    """``SOURCE: unknown field 'x' (did you mean 'y'?)``, or the known fields when nothing is close."""
    known = sorted(known)
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    tail = "" if all("did you mean" in p for p in parts) else f"; known fields: {known}"
    return f"{source}: unknown field{'s' if len(parts) > 1 else ''} {', '.join(parts)}{tail}"


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "config", flags: Any = ()) -> T:
    """Build ``cls`` from a mapping (aliases accepted), converting types and rejecting unknown keys.

    An error names ``SOURCE: key`` (e.g. the YAML file), or ``--key`` for the keys in ``flags``.
    """
    data = resolve_aliases(cls, data)
    fields = {f.name: f for f in settable_fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise MedsdConfigError(unknown_keys_error(source, unknown, fields))
    kwargs = {}
    for k, v in data.items():
        try:
            kwargs[k] = convert(v, field_type(cls, k), k)
        except ValueError as e:
            raise MedsdConfigError(f"--{e}" if k in flags else f"{source}: {e}") from None
    return cls(**kwargs)


# -- the command line ----------------------------------------------------------------------------------
class _Given(argparse.Action):
    """Records a flag's raw value under the option string used (its field's name or an alias); an option in
    ``bool_options`` given alone means true."""

    def __init__(self, *args: Any, bool_options: frozenset[str] = frozenset(), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.bool_options = bool_options

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        if values is None:
            if option_string not in self.bool_options:
                parser.error(f"argument {option_string}: expected one argument")
            values = "true"
        given = dict(getattr(namespace, "_given", {}))
        given[(option_string or self.dest).lstrip("-")] = values
        namespace._given = given
        setattr(namespace, self.dest, values)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None if f.default is dataclasses.MISSING else f.default


def add_dataclass_arguments(parser: Any, cls: type, config_file: bool = True) -> None:
    """``--config FILE`` (when ``config_file``) and one ``--<field>`` per settable field of ``cls``, its
    aliases as extra option strings, its help from :func:`flag`; values stay strings until
    :func:`config_from_args` converts them with the YAML's."""
    if config_file:
        parser.add_argument(
            "--config", default=None, help="YAML file with field: value pairs (flags override it)"
        )
    for f in settable_fields(cls):
        meta = field_meta(cls, f.name)
        names = [f"--{f.name}", *(f"--{a.name}" for a in meta["aliases"])]
        tp, _ = unwrap_optional(field_type(cls, f.name))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        help_text = meta["help"] if required else f"{meta['help']} (default: {_default_of(f)})".strip()
        kw: dict[str, Any] = dict(action=_Given, dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if required:
            kw["required"] = True
        bools = {n for n, a in zip(names[1:], meta["aliases"]) if a.takes_bool}
        bools |= set(names) if tp is bool else set()
        kw.update(nargs=meta["nargs"], metavar=meta["metavar"] or ("BOOL" if tp is bool else f.name.upper()))
        if bools:
            kw.update(nargs="?", bool_options=frozenset(bools))
        parser.add_argument(*names, **kw)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Defaults, then the YAML given by ``--config``, then explicit flags (aliases resolved in each)."""
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        data.update(resolve_aliases(cls, load_yaml(args.config)))
    flags = resolve_aliases(cls, getattr(args, "_given", {}))
    data.update(flags)
    return config_from_dict(cls, data, source=getattr(args, "config", None) or "command line", flags=flags)


def check_field_values(config: Any) -> None:
    """Refuse, in one line naming the flag, a value outside its field's range or choices."""
    cls = type(config)
    limits: dict[str, dict[str, Any]] = {"at_least": {}, "at_most": {}, "one_of": {}}
    positive, unit = [], []
    for f in dataclasses.fields(cls):
        meta = field_meta(cls, f.name)
        if (meta["min"], meta["max"]) == (0, 1):
            unit.append(f.name)
        else:
            if meta["min"] is not None:
                limits["at_least"][f.name] = meta["min"]
            if meta["max"] is not None:
                limits["at_most"][f.name] = meta["max"]
        if meta["positive"]:
            positive.append(f.name)
        if meta["choices"] is not None:
            limits["one_of"][f.name] = choices_of(cls, f.name)
    check_values(config, positive=tuple(positive), unit_interval=tuple(unit), **limits)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file; every problem is one line naming the file (and the line
    and column of a syntax error)."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise MedsdConfigError(f"--config {path} is a folder; expected a YAML file of field: value lines")
    if not path.is_file():
        raise MedsdConfigError(f"--config {path} does not exist; expected a YAML file of field: value lines")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MedsdConfigError(f"{path}: not a text file; expected YAML field: value lines") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise MedsdConfigError(
            f"{path}: YAML syntax error{where} ({problem}); expected field: value lines"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MedsdConfigError(
            f"{path}: expected a mapping of field: value at the top level, got a {type(data).__name__}"
        )
    return data
