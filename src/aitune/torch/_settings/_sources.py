"""Settings sources shared by the global and the JIT settings: env, the TOML or .py override file, loading.

Sources, lowest to highest priority: field defaults < TOML override file < environment < .py override file
< code. `load_settings()` reads them in that order into the existing singletons in place (users hold
references to them) and keeps every field that code set or mutated before the load.

Why not pydantic-settings' own source chain: every value must carry where it came from (env var name, file
and line) so that a bad value is reported against its source, env must accept comma lists, and reading must
happen when the hook chooses, not at import. So a model reads nothing at construction
(`settings_customise_sources` keeps only init arguments) and this module is the explicit source chain.
The settings base class and the registry of scopes live in `_model`, error messages in `_problems`;
scopes are known by registration only (a settings module registers its singleton when it is imported).

Known limits:
- TOML line numbers come from scanning the text for `key =` under the right table header; a key inside a
  multi-line value, or a dotted key, is reported with the file but without a line.
- Env var names match case-insensitively. Unknown `AITUNE_*` names are only logged, since launchers and test
  suites may use the prefix for their own variables.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import ValidationError

from aitune.torch._errors import ConfigError
from aitune.torch._settings._model import (
    LOAD_STATE,
    SCOPES,
    Scope,
    TrackedSettings,
    copy_value,
    loading,
    register_scope,
)
from aitune.torch._settings._problems import (
    Problem,
    Raw,
    SettingItemError,
    config_error,
    did_you_mean,
    problems_from,
    summarize_validation_error,
)

__all__ = ["CONFIG_FILE_ENV", "SettingItemError", "TrackedSettings", "ensure_settings_loaded", "load_settings",
           "override_file_path", "problems_from", "register_scope", "reset_settings", "summarize_validation_error"]

logger = logging.getLogger(__name__)

#: Env var naming the override file (.toml or .py).
CONFIG_FILE_ENV = "AITUNE_JIT_CONFIG"
_SUFFIXES = (".toml", ".py")
_FILE_ACCEPTED = ("a path to an existing .toml file (declarative settings) or .py file (executed at load); "
                  "see the examples in aitune's configs/ folder")




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
               problems: list[Problem]) -> dict[str, Raw]:
    layer = {}
    for name, info in cls.model_fields.items():
        entry = env.get(cls.env_name(name))
        if entry is None:
            continue
        var, text = entry
        source = f"environment variable {var}"
        try:
            layer[name] = Raw(_parse_env_text(info.annotation, text), source, text=text)
        except ValueError as exc:
            problems.append(Problem(cls, name, source, text, str(exc)))
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


def _toml_layer(scope: Scope, doc: Mapping[str, Any], lines: _TomlLines, path: Path | None,
                problems: list[Problem]) -> dict[str, Raw]:
    cls = type(scope.model)
    tables = sorted(s.toml_table for s in SCOPES if s.toml_table)

    def label(table: str, index: int | None, key: str) -> str:
        line = lines.get((table, index, key)) or lines.get((f"{table}.{key}" if table else key, index, ""))
        return f"{path}:{line}" if line else str(path)

    if scope.toml_table is None:
        table_name, table = "", {k: v for k, v in doc.items() if k not in tables}
    else:
        table_name, table = scope.toml_table, doc.get(scope.toml_table, {})
        if not isinstance(table, dict):
            problems.append(Problem(cls, scope.toml_table, label("", None, scope.toml_table), table,
                                     "must be a table", f"a [{scope.toml_table}] table of {cls.scope_label} settings"))
            return {}
    layer = {}
    for key, value in table.items():
        source = label(table_name, None, key)
        if key not in cls.model_fields:
            more = "" if scope.toml_table else "".join(f", or a [{t}] table" for t in tables)
            problems.append(Problem(cls, key, source, value, "unknown setting" + did_you_mean(key, cls.model_fields),
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
        layer[key] = Raw(value, source, items=items)
    return layer


def _toml_hint() -> str:
    tables = ", ".join(f"a [{s.toml_table}] table of {type(s.model).scope_label} settings"
                       for s in SCOPES if s.toml_table)
    return ("A .toml override file holds JIT settings as top-level keys (e.g. mode = \"inspect\"), [[backends]] "
            f"tables with name = \"<backend>\" and that backend's options, and optionally {tables}; "
            "see configs/inductor.toml.")


def _py_hint() -> str:
    names = [f"`{s.py_name}` ({type(s.model).scope_label} settings)" for s in SCOPES]
    names += [f"`{n}`" for s in SCOPES for n in s.namespace]
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
    for scope in SCOPES:
        namespace.update(scope.namespace)
        namespace[scope.py_name] = scope.model
    try:
        with loading(None):
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
    except SystemExit as exc:  # sys.exit() in an override file would end the script with no word of why
        where = _line_in(exc, path)
        raise ConfigError(f"{where}: the override file called sys.exit({exc.code!r}); an override file only sets "
                          f"fields, it cannot end the script. {_py_hint()}", field=CONFIG_FILE_ENV,
                          source=where) from None
    except Exception as exc:  # anything the user's override file raises becomes one message naming its line
        where = _line_in(exc, path)
        raise ConfigError(f"{where}: the override file raised {type(exc).__name__}: {exc}. {_py_hint()}",
                          field=CONFIG_FILE_ENV, source=where) from exc


# --- loading ----------------------------------------------------------------------------------------------------

def _plan(scope: Scope, doc: Mapping[str, Any], lines: _TomlLines, path: Path | None,
          env: Mapping[str, tuple[str, str]],
          problems: list[Problem]) -> tuple[TrackedSettings | None, dict[str, Raw]]:
    """Validate each source alone (so every bad value is reported against its source), then all merged."""
    cls = type(scope.model)
    merged: dict[str, Raw] = {}
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
                raw = Raw({**below.value, **raw.value}, raw.source, None, raw.items)  # dicts merge key-wise
            merged[key] = raw
    if not ok:
        return None, merged
    try:
        return cls.model_validate({k: r.value for k, r in merged.items()}), merged
    except ValidationError as exc:
        problems.extend(problems_from(cls, exc, merged))
        return None, merged


def _apply(scope: Scope, fresh: TrackedSettings, merged: Mapping[str, Raw]) -> dict[str, tuple[Any, str]]:
    """Write the loaded values into the singleton, skipping fields set from code; return those to restore."""
    code = scope.code_fields()
    kept = {f: (copy_value(getattr(scope.model, f)), scope.sources.get(f, "code")) for f in code}
    for name in scope.fields():
        if name not in code:
            with loading(merged[name].source if name in merged else "default"):
                setattr(scope.model, name, getattr(fresh, name))
    return kept


def load_settings() -> None:
    """Re-read every source into the global and JIT settings singletons, in place.

    Fields set from code before the call keep their values. Raises ConfigError (naming field, source, value
    and what is accepted) and then leaves the settings as they were.
    """
    with SCOPES.lock:
        if LOAD_STATE.loading:
            raise ConfigError("settings are being loaded already (is the override file loading them again?)",
                              field=CONFIG_FILE_ENV)
        env = _aitune_environ()
        path = override_file_path(env)
        is_toml = path is not None and path.suffix.lower() == ".toml"
        doc, lines = _read_toml(path) if is_toml and path is not None else ({}, {})
        problems: list[Problem] = []
        plans = [(scope, *_plan(scope, doc, lines, path if is_toml else None, env, problems)) for scope in SCOPES]
        if problems:
            raise config_error(problems)
        known = {type(s.model).env_name(f) for s in SCOPES for f in s.fields()} | {CONFIG_FILE_ENV}
        for key, (var, _) in env.items():
            if key not in known:
                logger.warning("ignoring unknown environment variable %s%s", var, did_you_mean(key, known))
        saved = [scope.save() for scope in SCOPES]
        try:
            kept = []
            for scope, fresh, merged in plans:
                assert fresh is not None  # no problems means every scope validated
                kept.append(_apply(scope, fresh, merged))
            if path is not None and not is_toml:
                _run_py(path)
            for scope, keep in zip(SCOPES, kept, strict=True):
                for name, (value, source) in keep.items():  # code beats every source, the .py file included
                    with loading(source):
                        setattr(scope.model, name, value)
                    scope.code_set.add(name)
        except BaseException:
            for scope, state in zip(SCOPES, saved, strict=True):
                scope.restore(state)
            raise
        for scope in SCOPES:
            scope.mark_applied()
        SCOPES.loaded = True
    if path is not None:
        logger.info("aitune settings: override file %s", path)
    for scope in SCOPES:
        for name, source in scope.sources.items():
            if source != "default":
                logger.debug("%s setting %s=%r from %s", type(scope.model).scope_label, name,
                             getattr(scope.model, name), source)


def ensure_settings_loaded() -> None:
    """Load the settings once per process (for entry points other than the hook, e.g. ahead-of-time tuning)."""
    if not SCOPES.loaded:
        load_settings()


def reset_settings() -> None:
    """Put every singleton back to its defaults and forget what code set (for tests)."""
    with SCOPES.lock:
        for scope in SCOPES:
            fresh = type(scope.model)()
            with loading("default"):
                for name in scope.fields():
                    setattr(scope.model, name, getattr(fresh, name))
            scope.code_set.clear()
            scope.sources = {f: "default" for f in scope.fields()}
            scope.mark_applied()
        SCOPES.loaded = False
