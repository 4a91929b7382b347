"""The settings base class and the scopes (singletons) whose fields' sources are tracked.

Each assignment to a registered singleton is validated, its error rewritten to name the source, and the
value's source recorded: the assigning line for code, or the source a load is applying.

Known limits:
- A field mutated in place from code (`config.skip_modules.append(...)`) is detected by comparing it with
  what the last load applied; mutating it back to that exact value counts as not set from code.
"""

from __future__ import annotations

import copy
import enum
import sys
import threading
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from aitune.torch._settings._problems import Problem, Raw, config_error, did_you_mean, problems_from


class LoadState(threading.local):
    # Per thread, so an assignment from another thread while a load runs still counts as code.
    loading: bool = False
    source: str | None = None


LOAD_STATE = LoadState()


@contextmanager
def loading(source: str | None) -> Iterator[None]:
    """Assignments inside are attributed to `source` (None: to the assigning line) instead of to code."""
    previous = (LOAD_STATE.loading, LOAD_STATE.source)
    LOAD_STATE.loading, LOAD_STATE.source = True, source
    try:
        yield
    finally:
        LOAD_STATE.loading, LOAD_STATE.source = previous


def _caller(depth: int) -> str:
    """file:line of the code that made the assignment (past this module's own frames, e.g. `SettingsModule`)."""
    frame = sys._getframe(depth + 1)
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
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
        # The annotation's static type differs between pydantic releases; compare identities instead of indexing.
        kind = "an integer" if ann is int else "a number" if ann is float else str(ann)
        bounds = [f"{sym} {getattr(m, attr)}" for m in info.metadata
                  for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(m, attr)]
        return " ".join([kind, " and ".join(bounds)]).strip()

    def setting_sources(self) -> dict[str, str]:
        """Where each field's current value came from ("default", an env var, file:line, "code at ...")."""
        scope = scope_of(self)
        known = scope.sources if scope is not None else {}
        return {name: known.get(name, "default" if scope else "unknown (a copy)") for name in type(self).model_fields}

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):  # pydantic private attributes
            super().__setattr__(name, value)
            return
        cls = type(self)
        loading = LOAD_STATE.loading
        source = LOAD_STATE.source if loading and LOAD_STATE.source else ("" if loading else "code at ") + _caller(1)
        if name not in cls.model_fields:
            reason = "unknown setting" + did_you_mean(name, cls.model_fields)
            raise config_error([Problem(cls, name, source, value, reason, "one of " + ", ".join(cls.model_fields))])
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            # The rewritten message names field, source, value and what is accepted; pydantic's frames add nothing.
            raise config_error(problems_from(cls, exc, {name: Raw(value, source)})) from None
        scope = scope_of(self)
        if scope is not None:
            scope.sources[name] = source
            if not loading:
                scope.code_set.add(name)


# --- scopes: the singletons load_settings() fills --------------------------------------------------------------

@dataclass(eq=False)
class Scope:
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
        changed = {f for f in self.fields() if not same_value(getattr(self.model, f), self.applied.get(f, Scope))}
        return self.code_set | changed

    def mark_applied(self) -> None:
        self.applied = {f: copy_value(getattr(self.model, f)) for f in self.fields()}

    def save(self) -> tuple[dict[str, Any], dict[str, str], set[str], dict[str, Any]]:
        values = {f: copy_value(getattr(self.model, f)) for f in self.fields()}
        return values, dict(self.sources), set(self.code_set), dict(self.applied)

    def restore(self, state: tuple[dict[str, Any], dict[str, str], set[str], dict[str, Any]]) -> None:
        values, sources, code_set, applied = state
        for name, value in values.items():
            with loading("restore"):
                setattr(self.model, name, value)
        self.sources, self.code_set, self.applied = sources, code_set, applied


class ScopeRegistry:
    """The settings singletons that loads fill, in registration order, and whether a load has run.

    Each settings module registers its singleton when it is imported (`register_scope`); the loader knows the
    scopes only through this registry.
    """

    def __init__(self) -> None:
        self._scopes: list[Scope] = []
        #: True once `load_settings()` has run (`ensure_settings_loaded` loads only once per process).
        self.loaded = False
        self.lock = threading.RLock()

    def __iter__(self) -> Iterator[Scope]:
        return iter(list(self._scopes))

    def add(self, scope: Scope) -> None:
        # A reloaded settings module replaces its scope.
        self._scopes = [s for s in self._scopes if s.py_name != scope.py_name] + [scope]

    def find(self, model: object) -> Scope | None:
        return next((s for s in self._scopes if s.model is model), None)

    def named(self, py_name: str) -> Scope | None:
        """The scope whose singleton is called `py_name` in override files ("config", "global_config")."""
        return next((s for s in self._scopes if s.py_name == py_name), None)


SCOPES = ScopeRegistry()


def copy_value(value: Any) -> Any:
    # Shallow is enough: list and dict values hold immutable items or objects compared by identity.
    return copy.copy(value) if isinstance(value, (list, dict, set)) else value


def same_value(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # an __eq__ that cannot compare: fall back to identity
        return a is b


def scope_of(model: object) -> Scope | None:
    # Only the singletons are tracked; copies (model_copy) validate assignments but record nothing.
    return SCOPES.find(model)


def register_scope(model: TrackedSettings, *, toml_table: str | None, py_name: str,
                   namespace: Mapping[str, Any] | None = None) -> None:
    """Make `model` a singleton that load_settings() fills; `namespace` adds names to the .py override file."""
    scope = Scope(model, toml_table, py_name, dict(namespace or {}))
    scope.sources = {f: "default" for f in scope.fields()}
    scope.mark_applied()
    SCOPES.add(scope)


# --- a settings module that is also its settings object -----------------------------------------------------

class SettingsModule(types.ModuleType):
    """A settings module that reads and writes as its settings object.

    `aitune.torch.config` is both a module (`from aitune.torch.config import config`) and, as documented for
    `ait.config`, the global settings object. With this class, `ait.config.max_num_samples_stored = 7` sets the
    setting (validated, its source noted) instead of adding an attribute to the module. A name the module does not
    define is the object's: reading it reads the setting (or method), assigning it assigns the setting, so an
    unknown name is an error naming the field rather than silently ignored.
    """

    _settings_attr = "config"

    def _settings(self) -> TrackedSettings:
        obj: TrackedSettings = self.__dict__[self._settings_attr]
        return obj

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or self._settings_attr not in self.__dict__:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        return getattr(self._settings(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__ or name.startswith("_") or self._settings_attr not in self.__dict__:
            super().__setattr__(name, value)
            return
        setattr(self._settings(), name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(type(self._settings()).model_fields))


def settings_module(module_name: str) -> None:
    """Make the (already imported) module `module_name` a `SettingsModule` of its `config` object."""
    sys.modules[module_name].__class__ = SettingsModule
