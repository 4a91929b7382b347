"""Settings machinery shared by the global and the JIT settings: sources, the override file, error messages.

Sources, lowest to highest priority: field defaults < TOML override file < environment < .py override file
< code. `load_settings()` reads them in that order into the existing singletons in place (users hold
references to them) and keeps every field that code set or mutated before the load.

Why not pydantic-settings' own source chain: every value must carry where it came from (env var name, file
and line) so that a bad value is reported against its source, env must accept comma lists, and reading must
happen when the hook chooses, not at import. So a model reads nothing at construction
(`settings_customise_sources` keeps only init arguments) and this module is the explicit source chain.

Known limits:
- TOML line numbers come from scanning the text for `key =` under the right table header; a key inside a
  multi-line value, or a dotted key, is reported with the file but without a line.
- A field mutated in place from code (`config.skip_modules.append(...)`) is detected by comparing it with
  what the last load applied; mutating it back to that exact value counts as not set from code.
- Env var names match case-insensitively. Unknown `AITUNE_*` names are only logged, since launchers and test
  suites may use the prefix for their own variables.
"""

from __future__ import annotations

import copy
import difflib
import enum
import importlib
import json
import logging
import os
import re
import sys
import threading
import tomllib
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from aitune.torch._errors import ConfigError

logger = logging.getLogger(__name__)

#: Env var naming the override file (.toml or .py).
CONFIG_FILE_ENV = "AITUNE_JIT_CONFIG"
_SUFFIXES = (".toml", ".py")
_FILE_ACCEPTED = ("a path to an existing .toml file (declarative settings) or .py file (executed at load); "
                  "see the examples in aitune's configs/ folder")


class SettingItemError(ValueError):
    """Raised by a validator for one item of a list setting, so the error points at that item's source."""

    def __init__(self, message: str, *, index: int, key: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.key = key


class _LoadState(threading.local):
    # Per thread, so an assignment from another thread while a load runs still counts as code.
    loading: bool = False
    source: str | None = None


_STATE = _LoadState()
_LOCK = threading.RLock()
_LOADED = False


@contextmanager
def _loading(source: str | None) -> Iterator[None]:
    """Assignments inside are attributed to `source` (None: to the assigning line) instead of to code."""
    previous = (_STATE.loading, _STATE.source)
    _STATE.loading, _STATE.source = True, source
    try:
        yield
    finally:
        _STATE.loading, _STATE.source = previous


def _caller(depth: int) -> str:
    frame = sys._getframe(depth + 1)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class TrackedSettings(BaseSettings):
    """Base of the settings models: validated assignment, errors rewritten, and each field's source tracked."""

    model_config = SettingsConfigDict(validate_assignment=True, arbitrary_types_allowed=True, extra="forbid")
    #: Shown in error messages ("JIT setting 'mode'").
    scope_label: ClassVar[str] = "aitune"

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings() reads env and files with provenance; constructing a model takes only its arguments.
        return (init_settings,)

    @classmethod
    def env_name(cls, field_name: str) -> str:
        return (str(cls.model_config.get("env_prefix", "")) + field_name).upper()

    @classmethod
    def accepted_values(cls, field_name: str) -> str:
        """What a field accepts, for error messages: the field's `accepted` extra, else from its type."""
        info = cls.model_fields[field_name]
        extra = info.json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("accepted"), str):
            return str(extra["accepted"])
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, enum.Enum):
            return "one of " + ", ".join(str(m.value) for m in ann) + " (case-insensitive)"
        if ann is bool:
            return "true or false (also 1/0, yes/no, on/off)"
        kind = {int: "an integer", float: "a number"}.get(ann, str(ann))  # type: ignore[call-overload]
        bounds = [f"{sym} {getattr(m, attr)}" for m in info.metadata
                  for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(m, attr)]
        return " ".join([kind, " and ".join(bounds)]).strip()

    def setting_sources(self) -> dict[str, str]:
        """Where each field's current value came from ("default", an env var, file:line, "code at ...")."""
        scope = _scope_of(self)
        known = scope.sources if scope is not None else {}
        return {name: known.get(name, "default" if scope else "unknown (a copy)") for name in type(self).model_fields}

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):  # pydantic private attributes
            super().__setattr__(name, value)
            return
        cls = type(self)
        loading = _STATE.loading
        source = _STATE.source if loading and _STATE.source else ("" if loading else "code at ") + _caller(1)
        if name not in cls.model_fields:
            reason = "unknown setting" + _did_you_mean(name, cls.model_fields)
            raise _error([_Problem(cls, name, source, value, reason, "one of " + ", ".join(cls.model_fields))])
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            # The rewritten message names field, source, value and what is accepted; pydantic's frames add nothing.
            raise _error(problems_from(cls, exc, {name: _Raw(value, source)})) from None
        scope = _scope_of(self)
        if scope is not None:
            scope.sources[name] = source
            if not loading:
                scope.code_set.add(name)


# --- error messages -------------------------------------------------------------------------------------------

@dataclass
class _Raw:
    """A value as one source gave it, and where it came from."""

    value: Any
    source: str
    text: str | None = None  # the env var text, shown instead of the parsed value
    items: list[dict[str, str]] | None = None  # per list item: key ("" = the item itself) -> source


@dataclass
class _Problem:
    cls: type[TrackedSettings]
    field: str
    source: str
    value: Any
    reason: str
    accepted: str | None = None

    def render(self) -> str:
        known = self.field in self.cls.model_fields
        env = f" (env {self.cls.env_name(self.field)})" if known else ""
        accepted = self.accepted or (self.cls.accepted_values(self.field) if known else "")
        shown = repr(self.value)
        shown = shown if len(shown) <= 200 else shown[:197] + "..."
        return (f"{self.cls.scope_label} setting {self.field!r}{env}: {self.reason}\n"
                f"    source:   {self.source}\n    value:    {shown}\n    accepted: {accepted}")


def _error(problems: list[_Problem]) -> ConfigError:
    if len(problems) == 1:
        message = "invalid " + problems[0].render()
    else:
        message = f"{len(problems)} invalid aitune settings:\n" + "\n".join("  - " + p.render() for p in problems)
    return ConfigError(message, field=problems[0].field, source=problems[0].source)


def _strip(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def problems_from(cls: type[TrackedSettings], exc: ValidationError, raws: Mapping[str, _Raw]) -> list[_Problem]:
    """Turn pydantic's errors into problems that name each value's source."""
    problems = []
    for err in exc.errors():
        loc = err.get("loc", ())
        name = str(loc[0]) if loc else next(iter(raws), "?")
        raw = raws.get(name)
        source = raw.source if raw is not None else "?"
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, SettingItemError) and raw is not None and raw.items and cause.index < len(raw.items):
            item = raw.items[cause.index]
            source = item.get(cause.key or "", item.get("", source))
        reason = str(cause) if isinstance(cause, ValueError) else _strip(err["msg"])
        if len(loc) > 1:
            reason = f"at {'.'.join(map(str, loc[1:]))}: {reason}"
        shown = (raw.text if raw.text is not None else raw.value) if raw is not None else err.get("input")
        problems.append(_Problem(cls, name, source, shown, reason))
    return problems


def summarize_validation_error(exc: ValidationError, title: str | None = None) -> str:
    """A pydantic ValidationError in one line: `<title>.field: message (got value); ...` (title: model name)."""
    title = exc.title if title is None else title
    parts = []
    for err in exc.errors():
        loc = ".".join(map(str, err.get("loc", ())))
        where = ".".join(p for p in (title, loc) if p) or "value"
        parts.append(f"{where}: {_strip(err['msg'])} (got {err.get('input')!r})")
    return "; ".join(parts)


def _did_you_mean(name: str, options: Any) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- scopes: the singletons this module loads -------------------------------------------------------------------

@dataclass(eq=False)
class _Scope:
    model: TrackedSettings
    toml_table: str | None  # None: the TOML file's top level
    py_name: str  # the model's name in a .py override file
    namespace: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    code_set: set[str] = field(default_factory=set)
    applied: dict[str, Any] = field(default_factory=dict)  # copies of what the last load or reset applied

    def fields(self) -> list[str]:
        return list(type(self.model).model_fields)

    def code_fields(self) -> set[str]:
        """Fields set from code: assigned outside a load, or mutated in place since the last load."""
        changed = {f for f in self.fields() if not _same(getattr(self.model, f), self.applied.get(f, _Scope))}
        return self.code_set | changed

    def mark_applied(self) -> None:
        self.applied = {f: _copy(getattr(self.model, f)) for f in self.fields()}

    def save(self) -> tuple[dict[str, Any], dict[str, str], set[str], dict[str, Any]]:
        values = {f: _copy(getattr(self.model, f)) for f in self.fields()}
        return values, dict(self.sources), set(self.code_set), dict(self.applied)

    def restore(self, state: tuple[dict[str, Any], dict[str, str], set[str], dict[str, Any]]) -> None:
        values, sources, code_set, applied = state
        for name, value in values.items():
            with _loading("restore"):
                setattr(self.model, name, value)
        self.sources, self.code_set, self.applied = sources, code_set, applied


_SCOPES: list[_Scope] = []


def _copy(value: Any) -> Any:
    # Shallow is enough: list and dict values hold immutable items or objects compared by identity.
    return copy.copy(value) if isinstance(value, (list, dict, set)) else value


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # an __eq__ that cannot compare: fall back to identity
        return a is b


def _scope_of(model: object) -> _Scope | None:
    # Only the singletons are tracked; copies (model_copy) validate assignments but record nothing.
    return next((s for s in _SCOPES if s.model is model), None)


def register_scope(model: TrackedSettings, *, toml_table: str | None, py_name: str,
                   namespace: Mapping[str, Any] | None = None) -> None:
    """Make `model` a singleton that load_settings() fills; `namespace` adds names to the .py override file."""
    _SCOPES[:] = [s for s in _SCOPES if s.py_name != py_name]  # a reloaded module replaces its scope
    scope = _Scope(model, toml_table, py_name, dict(namespace or {}))
    scope.sources = {f: "default" for f in scope.fields()}
    scope.mark_applied()
    _SCOPES.append(scope)


# --- sources --------------------------------------------------------------------------------------------------

def _aitune_environ() -> dict[str, tuple[str, str]]:
    return {k.upper(): (k, v) for k, v in os.environ.items() if k.upper().startswith("AITUNE_")}


def _container_kind(annotation: Any) -> str | None:
    origin = get_origin(annotation)
    if origin in (list, tuple, set):
        return "list"
    if origin is dict:
        return "dict"
    if origin in (Union, types.UnionType):
        return next((k for k in map(_container_kind, get_args(annotation)) if k), None)
    return None


def _parse_env_text(annotation: Any, text: str) -> Any:
    """Env text to a value: JSON or a comma list for list fields, JSON for dicts, "" as None where allowed."""
    stripped = text.strip()
    kind = _container_kind(annotation)
    if not stripped and type(None) in get_args(annotation):
        return None
    if kind == "list" and not stripped.startswith("["):
        return [part.strip() for part in stripped.split(",") if part.strip()]
    if kind in ("list", "dict") and stripped:
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, list if kind == "list" else dict):
            raise ValueError(f"expected a JSON {'list' if kind == 'list' else 'object'}")
        return value
    if kind == "dict":
        return {}
    return text


def _env_layer(cls: type[TrackedSettings], env: Mapping[str, tuple[str, str]],
               problems: list[_Problem]) -> dict[str, _Raw]:
    layer = {}
    for name, info in cls.model_fields.items():
        entry = env.get(cls.env_name(name))
        if entry is None:
            continue
        var, text = entry
        source = f"environment variable {var}"
        try:
            layer[name] = _Raw(_parse_env_text(info.annotation, text), source, text=text)
        except ValueError as exc:
            problems.append(_Problem(cls, name, source, text, str(exc)))
    return layer


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\- ]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=""")
_TomlLines = dict[tuple[str, int | None, str], int]


def _toml_lines(text: str) -> _TomlLines:
    """(table, array index, key) -> line number; key "" is the table header itself."""
    lines: _TomlLines = {}
    counts: dict[str, int] = {}
    table, index = "", None
    for number, line in enumerate(text.splitlines(), 1):
        if header := _HEADER.match(line):
            table, index = header.group(2).replace(" ", ""), None
            if header.group(1) == "[[":
                index = counts[table] = counts.get(table, -1) + 1
            lines.setdefault((table, index, ""), number)
        elif key := _KEY.match(line):
            lines.setdefault((table, index, next(g for g in key.groups() if g)), number)
    return lines


def _toml_layer(scope: _Scope, doc: Mapping[str, Any], lines: _TomlLines, path: Path | None,
                problems: list[_Problem]) -> dict[str, _Raw]:
    cls = type(scope.model)
    tables = sorted(s.toml_table for s in _SCOPES if s.toml_table)

    def label(table: str, index: int | None, key: str) -> str:
        line = lines.get((table, index, key)) or lines.get((f"{table}.{key}" if table else key, index, ""))
        return f"{path}:{line}" if line else str(path)

    if scope.toml_table is None:
        table_name, table = "", {k: v for k, v in doc.items() if k not in tables}
    else:
        table_name, table = scope.toml_table, doc.get(scope.toml_table, {})
        if not isinstance(table, dict):
            problems.append(_Problem(cls, scope.toml_table, label("", None, scope.toml_table), table,
                                     "must be a table", f"a [{scope.toml_table}] table of {cls.scope_label} settings"))
            return {}
    layer = {}
    for key, value in table.items():
        source = label(table_name, None, key)
        if key not in cls.model_fields:
            more = "" if scope.toml_table else "".join(f", or a [{t}] table" for t in tables)
            problems.append(_Problem(cls, key, source, value, "unknown setting" + _did_you_mean(key, cls.model_fields),
                                     f"{cls.scope_label} settings: {', '.join(cls.model_fields)}{more}"))
            continue
        items = None
        if isinstance(value, list):
            array = f"{table_name}.{key}" if table_name else key
            if (array, 0, "") in lines:  # [[array]] tables: each item and option has its own line
                source = label(array, 0, "")
                items = [{k: label(array, i, k) for k in ["", *(v if isinstance(v, dict) else ())]}
                         for i, v in enumerate(value)]
            else:
                items = [{"": source} for _ in value]
        layer[key] = _Raw(value, source, items=items)
    return layer


def _toml_hint() -> str:
    tables = ", ".join(f"a [{s.toml_table}] table of {type(s.model).scope_label} settings"
                       for s in _SCOPES if s.toml_table)
    return ("A .toml override file holds JIT settings as top-level keys (e.g. mode = \"inspect\"), [[backends]] "
            f"tables with name = \"<backend>\" and that backend's options, and optionally {tables}; "
            "see configs/inductor.toml.")


def _py_hint() -> str:
    names = [f"`{s.py_name}` ({type(s.model).scope_label} settings)" for s in _SCOPES]
    names += [f"`{n}`" for s in _SCOPES for n in s.namespace]
    return (f"A .py override file is executed once per load with {', '.join(names)} defined and sets their fields, "
            "e.g. config.backends = [TorchInductorJitBackend(mode=\"max-autotune\")]; "
            "see configs/inductor_max_autotune.py.")


def override_file_path(env: Mapping[str, tuple[str, str]] | None = None) -> Path | None:
    """The override file named by AITUNE_JIT_CONFIG, checked; None when the variable is unset or empty."""
    entry = (_aitune_environ() if env is None else env).get(CONFIG_FILE_ENV)
    if entry is None or not entry[1].strip():
        return None
    var, text = entry
    path = Path(text.strip()).expanduser()
    where = f"environment variable {var}"
    if path.suffix.lower() not in _SUFFIXES:
        raise ConfigError(f"{var}={text!r}: unsupported override file type {path.suffix or '(no suffix)'!r}. "
                          f"Accepted: {_FILE_ACCEPTED}.", field=CONFIG_FILE_ENV, source=where)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"{var}={text!r}: override file {path.absolute()} {state}. Accepted: {_FILE_ACCEPTED}.",
                          field=CONFIG_FILE_ENV, source=where)
    return path.resolve()


def _read_toml(path: Path) -> tuple[dict[str, Any], _TomlLines]:
    try:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text), _toml_lines(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        where = f"{path}:{found.group(1)}" if found else str(path)
        raise ConfigError(f"{where}: not valid TOML: {exc}. {_toml_hint()}", field=CONFIG_FILE_ENV,
                          source=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the override file: {exc}", field=CONFIG_FILE_ENV,
                          source=str(path)) from None


def _line_in(exc: BaseException, path: Path) -> str:
    line = None
    tb = exc.__traceback__
    while tb is not None:  # the deepest frame of the override file is the line that failed
        if tb.tb_frame.f_code.co_filename == str(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{path}:{line}" if line else str(path)


def _run_py(path: Path) -> None:
    try:
        code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
    except SyntaxError as exc:
        where = f"{path}:{exc.lineno}"
        raise ConfigError(f"{where}: invalid Python in the override file: {exc.msg}. {_py_hint()}",
                          field=CONFIG_FILE_ENV, source=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the override file: {exc}", field=CONFIG_FILE_ENV,
                          source=str(path)) from None
    namespace: dict[str, Any] = {"__name__": "__aitune_config__", "__file__": str(path)}
    for scope in _SCOPES:
        namespace.update(scope.namespace)
        namespace[scope.py_name] = scope.model
    try:
        with _loading(None):
            exec(code, namespace)  # noqa: S102 - running the user's override file is the feature
    except ConfigError as exc:
        if exc.source and exc.source.startswith(str(path)):
            raise  # a setting assigned in the file: the message already names file and line
        where = _line_in(exc, path)
        raise ConfigError(f"{where}: {exc}", field=exc.field, source=where) from None
    except ValidationError as exc:
        where = _line_in(exc, path)
        raise ConfigError(f"{where}: {summarize_validation_error(exc)}. {_py_hint()}", field=CONFIG_FILE_ENV,
                          source=where) from None
    except Exception as exc:
        where = _line_in(exc, path)
        raise ConfigError(f"{where}: the override file raised {type(exc).__name__}: {exc}. {_py_hint()}",
                          field=CONFIG_FILE_ENV, source=where) from exc


# --- loading ----------------------------------------------------------------------------------------------------

def _plan(scope: _Scope, doc: Mapping[str, Any], lines: _TomlLines, path: Path | None,
          env: Mapping[str, tuple[str, str]],
          problems: list[_Problem]) -> tuple[TrackedSettings | None, dict[str, _Raw]]:
    """Validate each source alone (so every bad value is reported against its source), then all merged."""
    cls = type(scope.model)
    merged: dict[str, _Raw] = {}
    ok = True
    for layer in (_toml_layer(scope, doc, lines, path, problems), _env_layer(cls, env, problems)):
        if not layer:
            continue
        try:
            cls.model_validate({k: r.value for k, r in layer.items()})
        except ValidationError as exc:
            problems.extend(problems_from(cls, exc, layer))
            ok = False
        for key, raw in layer.items():
            below = merged.get(key)
            if below is not None and isinstance(below.value, dict) and isinstance(raw.value, dict):
                raw = _Raw({**below.value, **raw.value}, raw.source, None, raw.items)  # dicts merge key-wise
            merged[key] = raw
    if not ok:
        return None, merged
    try:
        return cls.model_validate({k: r.value for k, r in merged.items()}), merged
    except ValidationError as exc:
        problems.extend(problems_from(cls, exc, merged))
        return None, merged


def _apply(scope: _Scope, fresh: TrackedSettings, merged: Mapping[str, _Raw]) -> dict[str, tuple[Any, str]]:
    """Write the loaded values into the singleton, skipping fields set from code; return those to restore."""
    code = scope.code_fields()
    kept = {f: (_copy(getattr(scope.model, f)), scope.sources.get(f, "code")) for f in code}
    for name in scope.fields():
        if name not in code:
            with _loading(merged[name].source if name in merged else "default"):
                setattr(scope.model, name, getattr(fresh, name))
    return kept


def load_settings() -> None:
    """Re-read every source into the global and JIT settings singletons, in place.

    Fields set from code before the call keep their values. Raises ConfigError (naming field, source, value
    and what is accepted) and then leaves the settings as they were.
    """
    global _LOADED
    for module in ("aitune.torch.config", "aitune.torch.jit.config"):
        importlib.import_module(module)  # registers its scope; not at top: those modules import this one

    with _LOCK:
        if _STATE.loading:
            raise ConfigError("settings are being loaded already (is the override file loading them again?)",
                              field=CONFIG_FILE_ENV)
        env = _aitune_environ()
        path = override_file_path(env)
        is_toml = path is not None and path.suffix.lower() == ".toml"
        doc, lines = _read_toml(path) if is_toml and path is not None else ({}, {})
        problems: list[_Problem] = []
        plans = [(scope, *_plan(scope, doc, lines, path if is_toml else None, env, problems)) for scope in _SCOPES]
        if problems:
            raise _error(problems)
        known = {type(s.model).env_name(f) for s in _SCOPES for f in s.fields()} | {CONFIG_FILE_ENV}
        for key, (var, _) in env.items():
            if key not in known:
                logger.warning("ignoring unknown environment variable %s%s", var, _did_you_mean(key, known))
        saved = [scope.save() for scope in _SCOPES]
        try:
            kept = []
            for scope, fresh, merged in plans:
                assert fresh is not None  # no problems means every scope validated
                kept.append(_apply(scope, fresh, merged))
            if path is not None and not is_toml:
                _run_py(path)
            for scope, keep in zip(_SCOPES, kept, strict=True):
                for name, (value, source) in keep.items():  # code beats every source, the .py file included
                    with _loading(source):
                        setattr(scope.model, name, value)
                    scope.code_set.add(name)
        except BaseException:
            for scope, state in zip(_SCOPES, saved, strict=True):
                scope.restore(state)
            raise
        for scope in _SCOPES:
            scope.mark_applied()
        _LOADED = True
    if path is not None:
        logger.info("aitune settings: override file %s", path)
    for scope in _SCOPES:
        for name, source in scope.sources.items():
            if source != "default":
                logger.debug("%s setting %s=%r from %s", type(scope.model).scope_label, name,
                             getattr(scope.model, name), source)


def ensure_settings_loaded() -> None:
    """Load the settings once per process (for entry points other than the hook, e.g. ahead-of-time tuning)."""
    if not _LOADED:
        load_settings()


def reset_settings() -> None:
    """Put every singleton back to its defaults and forget what code set (for tests)."""
    global _LOADED
    with _LOCK:
        for scope in _SCOPES:
            fresh = type(scope.model)()
            with _loading("default"):
                for name in scope.fields():
                    setattr(scope.model, name, getattr(fresh, name))
            scope.code_set.clear()
            scope.sources = {f: "default" for f in scope.fields()}
            scope.mark_applied()
        _LOADED = False
