"""TensorRT optimization profiles: how the shapes a TensorRT engine accepts are chosen.

A TensorRT engine built from a graph with dynamic dimensions serves, per optimization profile, every shape
between the profile's min and max, and is tuned for its opt shape. `ProfileMode` derives profiles from the
recorded samples of a module; a list of `TensorRTProfile` states them explicitly:

    from aitune.torch.backend import TensorRTBackend, TensorRTBackendConfig
    from aitune.torch.backend.tensorrt import ProfileMode, TensorRTProfile

    TensorRTBackend(TensorRTBackendConfig(profiles=ProfileMode.SAMPLES_USED))
    TensorRTBackend(TensorRTBackendConfig(profiles=[
        TensorRTProfile().add_input_shape("args_0", (1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))]))

Inputs are named as the ONNX export names them (`FlatIO.input_names`): `args_0` for the first positional tensor,
`args_1_0` for the first tensor inside the second positional argument, the keyword for a keyword tensor.

The public names are re-exported by `aitune.torch.backend.tensorrt`. This module imports neither TensorRT nor
ONNX. Known limit: a call whose shapes fall outside every profile runs
the module eagerly (the engine logs it once), so profiles narrower than the traffic cost speed, not results.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RecordedCall(Protocol):
    """A recorded call (`_samples.Sample`), as far as deriving profiles reads it."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class FlatInputs(Protocol):
    """The tensor inputs of an engine (`_flat.FlatIO`), as far as deriving profiles reads them."""

    @property
    def input_names(self) -> list[str]: ...

    @property
    def shape_ranges(self) -> list[tuple[list[int], list[int], list[int]]]: ...

    def flatten(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]: ...


Shape = tuple[int, ...]
#: (min, opt, max) of one input.
ShapeRange = tuple[Shape, Shape, Shape]


class ProfileMode(enum.Enum):
    """How the optimization profiles of a TensorRT engine are derived from the recorded samples."""

    #: One profile: min and max over the recorded samples per dimension, opt the most common shape set.
    SINGLE = "single"
    #: One profile per distinct recorded shape set, with min = opt = max (exact shapes only).
    SAMPLES_USED = "samples_used"


def _check_range(name: str, lo: Sequence[int], opt: Sequence[int], hi: Sequence[int]) -> ShapeRange:
    shapes = (tuple(int(d) for d in lo), tuple(int(d) for d in opt), tuple(int(d) for d in hi))
    if not len(shapes[0]) == len(shapes[1]) == len(shapes[2]):
        raise ValueError(f"input {name!r}: min {list(shapes[0])}, opt {list(shapes[1])} and max {list(shapes[2])} "
                         "must have the same rank")
    for label, shape in zip(("min", "opt", "max"), shapes):
        if any(d < 0 for d in shape):
            raise ValueError(f"input {name!r}: {label} shape {list(shape)} has a negative dimension")
    for d, (a, b, c) in enumerate(zip(*shapes)):
        if not a <= b <= c:
            raise ValueError(f"input {name!r}, dimension {d}: needs min <= opt <= max, got {a}, {b}, {c} "
                             f"(min {list(shapes[0])}, opt {list(shapes[1])}, max {list(shapes[2])})")
    return shapes


class TensorRTProfile(BaseModel):
    """One TensorRT optimization profile: per input name, the (min, opt, max) shapes it serves.

    Build it by chaining `add_input_shape`; every call checks min <= opt <= max per dimension.
    """

    model_config = ConfigDict(extra="forbid")

    shapes: dict[str, ShapeRange] = Field(
        default_factory=dict, description="Per input name, (min shape, opt shape, max shape).")

    @field_validator("shapes")
    @classmethod
    def _valid_ranges(cls, value: dict[str, ShapeRange]) -> dict[str, ShapeRange]:
        return {name: _check_range(name, *rng) for name, rng in value.items()}

    def add_input_shape(self, name: str, min: Sequence[int], opt: Sequence[int],  # noqa: A002 - TensorRT's names
                        max: Sequence[int]) -> TensorRTProfile:  # noqa: A002
        """Set the shapes of input `name` and return the profile, for chaining."""
        if not name:
            raise ValueError("an input name is required")
        self.shapes[name] = _check_range(name, min, opt, max)
        return self

    def contains(self, shapes: Mapping[str, Sequence[int]]) -> bool:
        """True when every input of the profile is given in `shapes` and lies within its min..max."""
        for name, (lo, _, hi) in self.shapes.items():
            shape = shapes.get(name)
            if shape is None or len(shape) != len(lo):
                return False
            if any(size < a or size > b for a, size, b in zip(lo, shape, hi)):
                return False
        return True

    def describe(self) -> str:
        """`args_0 min [1, 16] opt [4, 16] max [8, 16]; ...` for logs."""
        return "; ".join(f"{name} min {list(lo)} opt {list(opt)} max {list(hi)}"
                         for name, (lo, opt, hi) in self.shapes.items()) or "(no inputs)"

    def __str__(self) -> str:
        return f"TensorRTProfile({self.describe()})"


def _shape_sets(io: FlatInputs, samples: Sequence[RecordedCall]) -> list[tuple[Shape, ...]]:
    """The distinct shape sets of `samples`, one shape per input, in a stable (sorted) order."""
    seen: set[tuple[Shape, ...]] = set()
    for sample in samples:
        flat = io.flatten(sample.args, sample.kwargs)
        seen.add(tuple(tuple(int(d) for d in t.shape) for t in flat))
    return sorted(seen)


def _complete(profile: TensorRTProfile, index: int, io: FlatInputs) -> TensorRTProfile:
    """A copy of a user's profile checked against the recorded inputs, with shapes filled in for inputs whose
    shape never varied."""
    known = dict(zip(io.input_names, io.shape_ranges))
    unknown = [name for name in profile.shapes if name not in known]
    if unknown:
        raise ValueError(f"profile {index} names input(s) {', '.join(map(repr, unknown))} that the module does not "
                         f"take; its tensor inputs are {', '.join(io.input_names)}")
    shapes: dict[str, ShapeRange] = {}
    for name, (lo, common, hi) in known.items():
        given = profile.shapes.get(name)
        if given is None:
            if lo != hi:
                raise ValueError(f"profile {index} has no shape for input {name!r}, whose recorded shape varied "
                                 f"({lo}..{hi}); add it with add_input_shape({name!r}, min, opt, max)")
            shapes[name] = (tuple(lo), tuple(common), tuple(hi))
            continue
        if len(given[0]) != len(lo):
            raise ValueError(f"profile {index}, input {name!r}: rank {len(given[0])} but the recorded input has "
                             f"rank {len(lo)} (shape {common})")
        shapes[name] = given
    return TensorRTProfile(shapes=shapes)


def derive_profiles(profiles: ProfileMode | Sequence[TensorRTProfile], io: FlatInputs,
                    samples: Sequence[RecordedCall] = ()) -> list[TensorRTProfile]:
    """The optimization profiles for an engine of inputs `io`, recorded as `samples`.

    SINGLE needs only `io` (its shape ranges); SAMPLES_USED needs the samples. Explicit profiles are checked
    against `io` (names, ranks) and completed with the recorded shape of inputs whose shape never varied.
    """
    if isinstance(profiles, ProfileMode):
        if profiles is ProfileMode.SINGLE:
            return [TensorRTProfile(shapes={name: (tuple(lo), tuple(opt), tuple(hi))
                                            for name, (lo, opt, hi) in zip(io.input_names, io.shape_ranges)})]
        if not samples:
            raise ValueError("ProfileMode.SAMPLES_USED needs the recorded samples")
        return [TensorRTProfile(shapes={name: (shape, shape, shape) for name, shape in zip(io.input_names, shapes)})
                for shapes in _shape_sets(io, samples)]
    if not profiles:
        raise ValueError("an empty profile list serves no shape; use ProfileMode.SINGLE for the recorded range")
    return [_complete(profile, i, io) for i, profile in enumerate(profiles)]


def uncovered_shape_sets(profiles: Sequence[TensorRTProfile], io: FlatInputs,
                         samples: Sequence[RecordedCall]) -> list[tuple[Shape, ...]]:
    """The recorded shape sets that no profile contains (calls with them would run eagerly)."""
    missing = []
    for shapes in _shape_sets(io, samples):
        named = dict(zip(io.input_names, shapes))
        if not any(p.contains(named) for p in profiles):
            missing.append(shapes)
    return missing


__all__ = [
    "ProfileMode",
    "TensorRTProfile",
    "derive_profiles",
    "uncovered_shape_sets",
]
