"""Error messages for the settings: each bad value reported with its field, source, value and what is accepted.

pydantic's ValidationError is rewritten into `Problem`s that name where each value came from (env var, file
and line, or the assigning line of code), and several problems from one load are reported together in one
ConfigError.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from aitune.torch._errors import ConfigError


class SettingItemError(ValueError):
    """Raised by a validator for one item of a list setting, so the error points at that item's source."""

    def __init__(self, message: str, *, index: int, key: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.key = key


@dataclass
class Raw:
    """A value as one source gave it, and where it came from."""

    value: Any
    source: str
    text: str | None = None  # the env var text, shown instead of the parsed value
    items: list[dict[str, str]] | None = None  # per list item: key ("" = the item itself) -> source


@dataclass
class Problem:
    #: The settings class (a `_model.TrackedSettings` subclass; that module imports this one, not the reverse).
    cls: Any
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


def config_error(problems: list[Problem]) -> ConfigError:
    if len(problems) == 1:
        message = "invalid " + problems[0].render()
    else:
        message = f"{len(problems)} invalid aitune settings:\n" + "\n".join("  - " + p.render() for p in problems)
    return ConfigError(message, field=problems[0].field, source=problems[0].source)


def _strip(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def problems_from(cls: Any, exc: ValidationError, raws: Mapping[str, Raw]) -> list[Problem]:
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
        problems.append(Problem(cls, name, source, shown, reason))
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


def did_you_mean(name: str, options: Any) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
