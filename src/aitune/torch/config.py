"""Global aitune settings: `aitune.torch.config.config`, env prefix `AITUNE_`.

These apply to every tuning entry point (the JIT hook and the ahead-of-time API): how many samples are kept,
how candidates are checked and timed, and whether failures raise. Assign fields from code
(`config.strict = True`); every assignment is validated.

Sources, lowest to highest priority: defaults < the `[global]` table of the TOML override file < `AITUNE_*`
env vars < the .py override file (`global_config.<field> = ...`) < code. See `aitune.torch._settings._sources`.

Known limits: importing this module reads nothing (so a bad env value never breaks an import);
`load_global_config()` reads the sources, and the JIT hook calls it at enable time. Tuning code should take
`config.model_copy()` at its start so that a change mid-tuning does not mix settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from aitune.torch._settings._model import TrackedSettings, register_scope, settings_module
from aitune.torch._settings._sources import load_settings
from aitune.torch._units import parse_byte_size

#: Default (rtol, atol) per floating dtype; a user's partial mapping is merged over these.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-6, 1e-6),
    "float32": (1e-3, 1e-3),
    "float16": (1e-2, 1e-2),
    "bfloat16": (5e-2, 5e-2),
}



def _float_dtype_names() -> list[str]:
    names = {str(v).removeprefix("torch.") for v in vars(torch).values()
             if isinstance(v, torch.dtype) and v.is_floating_point}
    return sorted(names)


def _float_dtype_name(key: Any) -> str:
    """Canonical name of a floating dtype given as "float32", "torch.half", or a torch.dtype."""
    text = str(key).strip().removeprefix("torch.")
    dtype = getattr(torch, text, None) if isinstance(key, (str, torch.dtype)) else None
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return str(dtype).removeprefix("torch.")
    raise ValueError(f"{key!r} is not a floating-point dtype name (known: {', '.join(_float_dtype_names())})")


class GlobalConfig(TrackedSettings):
    """Settings for every tuning entry point."""

    model_config = SettingsConfigDict(env_prefix="AITUNE_")
    scope_label: ClassVar[str] = "global"

    max_num_samples_stored: int = Field(
        default=3, ge=1, description="Samples (input and eager output copies) kept per input signature.")
    max_samples_bytes: int = Field(
        default=1 << 30, ge=0,
        description="Cap on the bytes of all recorded samples in the process (inputs and outputs copies).",
        json_schema_extra={"accepted": "a byte count >= 0: an integer or a size such as 512MiB or 2GB"})
    strict: bool = Field(
        default=False, description="Re-raise failures from tuning instead of logging them and running eagerly.")
    max_value_signatures: int = Field(
        default=4, ge=1,
        description="Input signatures of one module that differ only in plain Python values (a step counter, a "
                    "flag) tuned at most; later values run eagerly, with one log line.")
    max_signatures: int = Field(
        default=64, ge=1,
        description="Input signatures kept per module (a list argument that grows on every call makes a new one "
                    "each time); past it, calls with a new signature run eagerly and are counted together, with "
                    "one log line, so memory and the report stay bounded.")
    tolerances: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_TOLERANCES),
        description="Per floating dtype name, the (rtol, atol) a candidate's outputs must meet against eager. "
                    "A partial mapping is merged over the defaults.",
        json_schema_extra={"accepted": "a mapping of floating dtype name (float32, float16, bfloat16, ...) to "
                                       "[rtol, atol] with both >= 0; from env a JSON object such as "
                                       "'{\"float16\": [0.01, 0.01]}'"})
    timing_warmup: int = Field(default=3, ge=0, description="Untimed calls before measuring a candidate.")
    timing_iterations: int = Field(default=20, ge=1, description="Timed calls per candidate (the median is used).")
    timing_max_seconds: float = Field(
        default=2.0, gt=0, description="Cap on the time spent measuring one candidate; fewer iterations run past it.")
    min_speedup: float = Field(
        default=1.05, gt=0.0,
        description="A candidate must be at least this many times faster than eager to be used "
                    "(below 1 accepts a slower engine, e.g. to force a backend).")

    confirm_calls: int = Field(
        default=3, ge=0,
        description="An engine that came from a file (the persistent cache or a checkpoint) serves calls only "
                    "after its outputs matched eager on this many live calls of the process (each such call runs "
                    "eagerly and the engine on copies of its inputs, and returns eager's result); 0 trusts the "
                    "check on stored samples alone. The same number of calls at new sizes is confirmed so before an "
                    "engine that compiles sizes symbolically serves sizes it was not tuned on.")
    reuse_max_slowdown: float = Field(
        default=1.05, ge=1.0,
        description="An engine reused from the persistent cache is timed here against eager: it is tuned again "
                    "(logged) when it is more than this many times slower than when it was tuned, both in "
                    "milliseconds and relative to eager; inf never re-tunes on latency (a shipped cache).",
        json_schema_extra={"accepted": "a number >= 1, or inf"})
    inplace_check_calls: int = Field(
        default=16, ge=0,
        description="After an engine starts serving, its next calls take turns with eager in four blocks, and the "
                    "time from one call to the next is compared in place: an engine that is not faster there (it "
                    "slows the code around it, or is slower inside the script than on its own) is dropped, logged "
                    "and reported. This many calls per check; 0 turns the check off.")
    archive_max_members: int = Field(
        default=10_000, ge=1, description="A checkpoint or engine archive with more members is refused unopened.")
    archive_max_member_bytes: int = Field(
        default=32 << 30, ge=0,
        description="A checkpoint or engine archive member that expands past this size is refused unopened.",
        json_schema_extra={"accepted": "a byte count >= 0: an integer or a size such as 512MiB or 2GB"})
    archive_max_bytes: int = Field(
        default=64 << 30, ge=0,
        description="A checkpoint or engine archive that expands past this size in all is refused unopened.",
        json_schema_extra={"accepted": "a byte count >= 0: an integer or a size such as 512MiB or 2GB"})
    archive_max_ratio: float = Field(
        default=100.0, ge=1.0,
        description="A checkpoint or engine archive member (over 1 MiB) or archive that expands more than this "
                    "many times its compressed size is refused unopened (a zip bomb).")

    @field_validator("max_samples_bytes", "archive_max_member_bytes", "archive_max_bytes", mode="before")
    @classmethod
    def _parse_bytes(cls, value: Any) -> Any:
        return parse_byte_size(value) if isinstance(value, str) else value

    @field_validator("tolerances", mode="before")
    @classmethod
    def _merge_tolerances(cls, value: Any) -> dict[str, tuple[float, float]]:
        if not isinstance(value, Mapping):
            raise ValueError("expected a mapping of dtype name to [rtol, atol]")
        merged = dict(DEFAULT_TOLERANCES)
        for key, pair in value.items():
            name = _float_dtype_name(key)
            if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
                raise ValueError(f"{name}: expected [rtol, atol], got {pair!r}")
            try:
                rtol, atol = float(pair[0]), float(pair[1])
            except (TypeError, ValueError):
                raise ValueError(f"{name}: rtol and atol must be numbers, got {pair!r}") from None
            if not (math.isfinite(rtol) and math.isfinite(atol) and rtol >= 0 and atol >= 0):
                raise ValueError(f"{name}: rtol and atol must be finite and >= 0, got {pair!r}")
            merged[name] = (rtol, atol)
        return merged


#: The global settings singleton. Keep a reference freely: loads update it in place.
config = GlobalConfig()
register_scope(config, toml_table="global", py_name="global_config")
# `ait.config.strict = True` (this module used as the object, as documented) sets the setting.
settings_module(__name__)


def load_global_config() -> None:
    """Re-read all sources into `config` (and the JIT settings) in place; fields set from code are kept.

    Raises `aitune.torch._errors.ConfigError` naming the field, its source and what is accepted.
    """
    load_settings()


__all__ = ["DEFAULT_TOLERANCES", "GlobalConfig", "config", "load_global_config"]
